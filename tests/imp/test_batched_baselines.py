"""Baselines trained together under ``train.batch_replicates``, against a sequential run.

Runs are in float64 (models and data), as in tests/imp/test_batched.py: stacking then
only reorders floating-point operations, so the weights agree to 1e-6 relative, and the
masks, computed as in sequential training, agree bit for bit.
"""

import numpy as np
import pytest
import torch

import imp.trunk
from imp.base import store
from imp.base.config import load_config
from imp.base.names import level_stage
from imp.base.seeds import Seeds
from imp.trunk import run_imp
from tests.imp.test_batched import float64_with_spy

CPU = torch.device("cpu")
RUN = ["model.widths=[32, 16]", "train.epochs='40it'", "train.eval_every='20it'", "data.batch_size=64",
       "train.momentum=0.9", "train.weight_decay=1e-3", "prune.levels=2", "prune.rewind='10it'"]


@pytest.fixture
def calls(monkeypatch):
    """Run in float64; returns the list of (networks, label) of each batched training call."""
    return float64_with_spy(monkeypatch, imp.trunk)


def config(baselines, batched):
    return load_config(None, RUN + [f"prune.baselines={baselines}", f"train.batch_replicates={str(batched).lower()}"])


def files(run) -> list[str]:
    return sorted(str(p.relative_to(run.path)) for p in run.path.rglob("*.h5") if p.name != "run.h5")


def assert_same_networks(mine, theirs, replicates) -> None:
    """Every stage file of ``theirs`` is in ``mine``: same masks, weights to 1e-6 relative."""
    assert files(mine) == files(theirs)
    for replicate in range(replicates):
        for stage in theirs.stages(replicate):
            a = store.read_h5(mine.stage_file(replicate, stage))
            b = store.read_h5(theirs.stage_file(replicate, stage))
            assert a.get("mask", {}).keys() == b.get("mask", {}).keys()
            for name, keep in b.get("mask", {}).items():
                assert np.array_equal(a["mask"][name], keep), (replicate, stage, name)
            for name, value in b["weights"].items():
                assert a["weights"][name].dtype == value.dtype == np.float64
                scale = np.abs(value).max() or 1
                assert np.abs(a["weights"][name] - value).max() <= 1e-6 * scale, (replicate, stage, name)
            for key in ("start_step", "seeds", "density"):
                assert a.get(key) == b.get(key), (replicate, stage, key)


BASELINES = ["reinit", "random", "snip"]


def test_two_replicates_train_all_baselines_of_a_level_in_one_call_and_match_a_sequential_run(tmp_path, calls):
    sequential = run_imp(config(BASELINES, False), tmp_path / "sequential", tmp_path, CPU, replicates=2)
    assert calls == []
    done = []
    batched = run_imp(config(BASELINES, True), tmp_path / "batched", tmp_path, CPU, replicates=2,
                      hooks=[lambda d: done.append((d.replicate, d.level, sorted(d.run.stages(d.replicate))))])
    assert calls == [(2, "replicates 0, 1 level_0"),
                     (2, "replicates 0, 1 level_1"),
                     (6, "replicates 0, 1 level_1_reinit, level_1_random, level_1_snip"),
                     (2, "replicates 0, 1 level_2"),
                     (6, "replicates 0, 1 level_2_reinit, level_2_random, level_2_snip")]
    assert len(files(sequential)) == 2 * (2 + 2 * 4)
    assert_same_networks(batched, sequential, 2)
    # hooks run after the level and its baselines are stored, level by level
    assert [(r, level) for r, level, _ in done] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    for replicate, level, stages in done:
        assert {level_stage(level, b) for b in BASELINES if level} <= set(stages)
        assert level_stage(level + 1) not in stages
    # the baselines are different networks, so equality is not by accident
    first = store.read_h5(batched.stage_file(0, level_stage(1, "random")))["weights"]["fc1.weight"]
    other = store.read_h5(batched.stage_file(1, level_stage(1, "random")))["weights"]["fc1.weight"]
    assert not np.array_equal(first, other)


def test_one_replicate_trains_its_baselines_of_a_level_together(tmp_path, calls):
    sequential = run_imp(config(["reinit", "random"], False), tmp_path / "sequential", tmp_path, CPU)
    batched = run_imp(config(["reinit", "random"], True), tmp_path / "batched", tmp_path, CPU)
    # the trunk level trains alone, as in a sequential run; its two baselines together
    assert calls == [(2, "replicate 0 level_1_reinit, level_1_random"),
                     (2, "replicate 0 level_2_reinit, level_2_random")]
    assert_same_networks(batched, sequential, 1)


def test_a_resumed_run_trains_only_the_missing_baselines(tmp_path, calls, monkeypatch):
    run = run_imp(config(BASELINES, True), tmp_path / "batched", tmp_path, CPU, replicates=2)
    reference = tmp_path / "reference"
    reference.mkdir()
    removed = [(0, level_stage(1, "random")), (1, level_stage(1, "random")), (0, level_stage(2, "snip"))]
    for replicate, stage in removed:
        path = run.stage_file(replicate, stage)
        path.rename(reference / f"{replicate}_{stage}.h5")
    stamps = {path: path.stat().st_mtime_ns for path in run.path.rglob("*.h5") if path.name != "run.h5"}
    calls.clear()
    alone = []
    real = imp.trunk.train_level

    def spy(config, data, seeds, *args, label="", **kwargs):
        alone.append((seeds, label))
        return real(config, data, seeds, *args, label=label, **kwargs)

    monkeypatch.setattr(imp.trunk, "train_level", spy)
    run_imp(config(BASELINES, True), tmp_path / "batched", tmp_path, CPU, replicates=2)
    assert calls == [(2, "replicates 0, 1 level_1_random")]
    assert alone == [(Seeds.from_config(config(BASELINES, True).train, 0), "replicate 0 level_2_snip")]
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps  # the others were not rewritten
    for replicate, stage in removed:
        again = store.read_h5(run.stage_file(replicate, stage))
        before = store.read_h5(reference / f"{replicate}_{stage}.h5")
        for name, keep in before["mask"].items():
            assert np.array_equal(again["mask"][name], keep), (replicate, stage, name)
        for name, value in before["weights"].items():
            assert np.abs(again["weights"][name] - value).max() <= 1e-6 * np.abs(value).max(), (stage, name)
