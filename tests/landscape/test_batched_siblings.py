"""Sibling copies trained together under ``train.batch_replicates``, against one at a time.

In float64 (models and data), as in tests/imp/test_batched.py: the copies agree to 1e-6
relative and the stored copies carry the same masks, seeds and ``copy``.
"""

import shutil

import numpy as np
import pytest
import torch

import landscape.measure
from imp.base import store
from imp.base.config import load_config
from imp.data import load_dataset
from imp.base.names import sibling_stage
from imp.trunk import run_imp
from landscape.hooks import measure_run
from tests.imp.test_batched import double, float64_with_spy
from tests.landscape.conftest import measured, only

CPU = torch.device("cpu")
RUN = ["model.widths=[32, 16]", "train.epochs='40it'", "train.eval_every='20it'", "data.batch_size=64",
       "train.momentum=0.9", "prune.levels=1", "prune.rewind='10it'",
       "landscape.points=3", "landscape.examples=200", "landscape.bn_examples=128"]


@pytest.fixture
def calls(monkeypatch):
    """Train in float64; returns the list of (networks, label) of each batched training call."""
    return float64_with_spy(monkeypatch, landscape.measure, (landscape.measure,))


def config(copies, batched):
    return load_config(None, RUN + [f"landscape.siblings={copies}", f"train.batch_replicates={str(batched).lower()}"])


def siblings(run, replicate=0) -> set[str]:
    return {stage for stage in run.stages(replicate) if stage.startswith("sibling")}


def assert_same_copies(mine, theirs) -> None:
    assert siblings(mine) == siblings(theirs)
    for stage in siblings(theirs):
        a, b = store.read_h5(mine.stage_file(0, stage)), store.read_h5(theirs.stage_file(0, stage))
        for key in ("copy", "start_step", "seeds"):
            assert a[key] == b[key], (stage, key)
        for name, keep in b["mask"].items():
            assert np.array_equal(a["mask"][name], keep), (stage, name)
        for name, value in b["weights"].items():
            assert a["weights"][name].dtype == value.dtype == np.float64
            assert np.abs(a["weights"][name] - value).max() <= 1e-6 * np.abs(value).max(), (stage, name)


def test_missing_copies_train_in_one_call_and_match_copies_trained_one_at_a_time(tmp_path, calls):
    sequential = run_imp(config(3, False), tmp_path / "sequential", tmp_path, CPU)
    shutil.copytree(tmp_path / "sequential", tmp_path / "batched")
    batched = store.RunDir(tmp_path / "batched", sequential.run_id)
    data = double(load_dataset(config(3, False).data, tmp_path))
    with store.RunLock(sequential):
        measure_run(config(3, False), data, sequential, CPU, levels=[0, 1])
    assert calls == []
    with store.RunLock(batched):
        measure_run(config(3, True), data, batched, CPU, levels=[0, 1])
    # level 0 from the rewind point at step 10: copy 0 trains too; level 1's copy 0 is the trunk's
    assert calls == [(3, "replicate 0 sibling_0_0, sibling_0_1, sibling_0_2"),
                     (2, "replicate 0 sibling_1_1, sibling_1_2")]
    assert siblings(sequential) == {sibling_stage(0, c) for c in range(3)} | {sibling_stage(1, c) for c in (1, 2)}
    assert_same_copies(batched, sequential)
    for level in (0, 1):
        a = store.read_h5(batched.stage_file(0, only(batched, "instability", level)))
        b = store.read_h5(sequential.stage_file(0, only(sequential, "instability", level)))
        assert set(a["pairs"]) == set(b["pairs"]) == {"0_1", "0_2", "1_2"}
        for pair in b["pairs"]:
            curve, reference = a["pairs"][pair]["curve"], b["pairs"][pair]["curve"]
            np.testing.assert_allclose(curve["test_loss"], reference["test_loss"], rtol=1e-5)
    # the copies are different networks, so equality is not by accident
    first, second = (store.read_h5(batched.stage_file(0, sibling_stage(1, c)))["weights"]["fc1.weight"] for c in (1, 2))
    assert not np.array_equal(first, second)


def test_stored_copies_are_read_and_only_the_missing_ones_trained(tmp_path, calls):
    run = run_imp(config(2, True), tmp_path, tmp_path, CPU)
    data = double(load_dataset(config(2, True).data, tmp_path))
    with store.RunLock(run):
        measure_run(config(2, True), data, run, CPU, levels=[0])
    assert calls == [(2, "replicate 0 sibling_0_0, sibling_0_1")]
    stamps = {stage: run.stage_file(0, stage).stat().st_mtime_ns for stage in siblings(run)}
    calls.clear()
    with store.RunLock(run):
        measure_run(config(4, True), data, run, CPU, levels=[0])
    assert calls == [(2, "replicate 0 sibling_0_2, sibling_0_3")]
    assert {stage: run.stage_file(0, stage).stat().st_mtime_ns for stage in stamps} == stamps
    assert [store.read_h5(run.stage_file(0, sibling_stage(0, c)))["copy"] for c in range(4)] == [0, 1, 2, 3]
    assert len(measured(run, "instability", 0)) == 2
    calls.clear()
    with store.RunLock(run):  # one missing copy trains alone, as without batching
        measure_run(config(5, True), data, run, CPU, levels=[0])
    assert calls == [] and sibling_stage(0, 4) in siblings(run)
