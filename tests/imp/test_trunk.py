import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from imp.base import store
from imp.base.config import load_config, run_id
from imp.base.errors import UserError
from imp.level import state_from_arrays
from imp.pruning import round_half_up
from imp.base.names import level_stage
from imp.base.results import level_rows
from imp.trunk import LevelDone, run_imp

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
TINY = ["model.widths=[32, 16]", "train.epochs='40it'", "train.eval_every='20it'", "data.batch_size=64",
        "train.momentum=0.9", "train.weight_decay=1e-3"]


def tiny(*extra):
    return load_config(None, TINY + list(extra))


def read(run, stage, replicate=0):
    return store.read_h5(run.stage_file(replicate, stage))


def test_levels_prune_nested_masks_to_the_expected_density(tmp_path):
    config = tiny("prune.levels=3", "prune.rewind='10it'")
    run = run_imp(config, tmp_path, tmp_path, CPU)
    kept, previous_mask = None, None
    for level in range(4):
        result = read(run, level_stage(level))
        if level == 0:
            kept = result["prunable"]
            assert result["density"] == 1.0
        else:
            kept -= round_half_up(0.2 * kept)
        assert result["kept"] == kept
        assert abs(result["density"] - 0.8 ** level) <= 2.5 / result["prunable"]
        for name, keep in result["mask"].items():
            assert np.all(result["weights"][name][~keep] == 0)  # exactly zero after training
            if previous_mask is not None:
                assert not np.any(keep & ~previous_mask[name])  # nested
        assert result["start_step"] == (0 if level == 0 else 10)
        previous_mask = result["mask"]
    assert read(run, "rewind")["step"] == 10


def test_weight_rewinding_starts_each_level_from_mask_times_w_k(tmp_path, monkeypatch):
    import imp.trunk

    started = []
    real = imp.trunk.train_level

    def spy(config, data, seeds, start, mask, **kwargs):
        started.append((start, mask))
        return real(config, data, seeds, start, mask, **kwargs)

    monkeypatch.setattr(imp.trunk, "train_level", spy)
    config = tiny("model.name=resnet20", "model.widths=[]", "model.width=4", "prune.levels=2", "prune.rewind='15it'",
                  "prune.exclude=['fc.weight']")
    run = run_imp(config, tmp_path, tmp_path, CPU)
    rewind = state_from_arrays(read(run, "rewind")["weights"])
    assert any("running_var" in key for key in rewind)
    for level in (1, 2):
        start, mask = started[level]
        assert start.step == 15
        for key, value in rewind.items():
            assert torch.equal(start.state[key], value), key  # BatchNorm buffers included
        assert "fc.weight" not in mask and "conv1.weight" in mask
        assert np.array_equal(read(run, level_stage(level))["mask"]["conv1.weight"],
                              mask["conv1.weight"].numpy())


@pytest.mark.parametrize("retrain", ["lr_rewind", "finetune"])
def test_lr_rewinding_and_finetuning_start_from_the_previous_final_weights(tmp_path, monkeypatch, retrain):
    import imp.trunk

    calls = []
    real = imp.trunk.train_level

    def spy(config, data, seeds, start, mask, **kwargs):
        calls.append((start, kwargs.get("train_config")))
        return real(config, data, seeds, start, mask, **kwargs)

    monkeypatch.setattr(imp.trunk, "train_level", spy)
    config = tiny("prune.levels=1", "prune.rewind='10it'", f"prune.retrain={retrain}",
                  "train.schedule=step", "train.milestones=['30it']")
    run = run_imp(config, tmp_path, tmp_path, CPU)
    dense = state_from_arrays(read(run, level_stage(0))["weights"])
    start, train_config = calls[1]
    assert start.step == 10
    assert all(torch.equal(start.state[k], dense[k]) for k in dense)
    if retrain == "finetune":
        assert train_config.schedule == "constant" and train_config.lr == pytest.approx(0.01)
    else:
        assert train_config == config.train


def test_baselines_share_the_trunk_density(tmp_path):
    config = tiny("prune.levels=2", "prune.baselines=['reinit', 'random', 'oneshot']")
    run = run_imp(config, tmp_path, tmp_path, CPU)
    dense = read(run, level_stage(0))
    for level in (1, 2):
        trunk = read(run, level_stage(level))
        reinit, random, oneshot = (read(run, level_stage(level, b)) for b in ("reinit", "random", "oneshot"))
        for name, keep in trunk["mask"].items():
            assert np.array_equal(reinit["mask"][name], keep)
            assert random["mask"][name].sum() == keep.sum()  # layerwise density kept
            assert not np.array_equal(random["mask"][name], keep)
        assert oneshot["kept"] == trunk["kept"]
        magnitudes = np.concatenate([np.abs(dense["weights"][n][oneshot["mask"][n]]) for n in trunk["mask"]])
        dropped = np.concatenate([np.abs(dense["weights"][n][~oneshot["mask"][n]]) for n in trunk["mask"]])
        assert magnitudes.min() >= dropped.max()  # one-shot keeps the largest dense weights
    rows = level_rows(run)
    assert [(r["level"], r["baseline"]) for r in rows] == [
        (0, None), (1, None), (1, "reinit"), (1, "random"), (1, "oneshot"),
        (2, None), (2, "reinit"), (2, "random"), (2, "oneshot")]


def test_a_run_extends_with_more_levels_and_baselines_without_retraining(tmp_path):
    seen = []
    run = run_imp(tiny("prune.levels=1"), tmp_path, tmp_path, CPU)
    stamps = {p: p.stat().st_mtime_ns for p in run.replicate_dir(0).iterdir()}
    extended = tiny("prune.levels=2", "prune.baselines=['reinit']")
    assert run_id(extended) == run.run_id
    run_imp(extended, tmp_path, tmp_path, CPU, hooks=[seen.append])
    assert all(p.stat().st_mtime_ns == stamp for p, stamp in stamps.items())
    assert set(run.stages(0)) == {"rewind", "level_0", "level_1", "level_2", "level_1_reinit", "level_2_reinit"}
    assert [(event.replicate, event.level) for event in seen] == [(0, 0), (0, 1), (0, 2)]
    assert isinstance(seen[0], LevelDone) and seen[2].path().name == "level_2.h5"
    info = store.read_run(run)
    assert info["planned_levels"] == 2 and info["baselines"] == "reinit"


def test_replicates_differ_and_are_reproducible(tmp_path):
    config = tiny("prune.levels=1")
    a = run_imp(config, tmp_path / "a", tmp_path, CPU, replicates=2)
    b = run_imp(config, tmp_path / "b", tmp_path, CPU, replicates=1)
    first, second = read(a, "level_1", 0), read(a, "level_1", 1)
    assert not np.array_equal(first["mask"]["fc1.weight"], second["mask"]["fc1.weight"])
    assert first["seeds"]["init"] != second["seeds"]["init"]
    again = read(b, "level_1", 0)
    for key in first["weights"]:
        np.testing.assert_array_equal(first["weights"][key], again["weights"][key])


def test_label_noise_is_recorded_at_level_0(tmp_path):
    run = run_imp(tiny("data.label_noise=0.1", "data.validation=100"), tmp_path, tmp_path, CPU)
    result = read(run, level_stage(0))
    noise = result["label_noise"]
    assert len(noise["index"]) == round(0.1 * (1437 - 100))
    assert sorted(noise["clean_labels"]) == sorted(noise["noisy_labels"])
    assert "validation_accuracy" in result["final"]


@pytest.mark.parametrize("extra, message", [
    (["prune.rewind='40it'"], "prune.rewind = 40it (40 iterations) is not before the end of training"),
    (["prune.rewind='1ep'", "train.epochs='20it'"], "(23 iterations) is not before the end of training"),
    (["prune.exclude=['conv*']"], "prune.exclude pattern 'conv*' matches no prunable tensor"),  # an MLP
])
def test_configs_that_do_not_fit_the_data_are_refused_before_training(tmp_path, extra, message):
    with pytest.raises(UserError) as error:
        run_imp(tiny("prune.levels=1", *extra), tmp_path, tmp_path, CPU)
    assert message in str(error.value)
    assert not list(tmp_path.rglob("*.h5"))


def test_a_locked_run_is_refused(tmp_path):
    config = tiny()
    with store.RunLock(store.RunDir(tmp_path, run_id(config))):
        with pytest.raises(store.RunLocked):
            run_imp(config, tmp_path, tmp_path, CPU)


def test_killed_in_level_2_resumes_without_retraining_and_matches_an_uninterrupted_run(tmp_path):
    overrides = ["model.widths=[64, 32]", "train.epochs='15ep'", "train.eval_every='5ep'",
                 "data.batch_size=32", "prune.levels=2", "prune.rewind='20it'", "prune.baselines=['reinit']"]
    args = [sys.executable, "-m", "runs.lth.cli", "run", "--out", str(tmp_path / "killed"), "--quiet"]
    args += [item for o in overrides for item in ("--set", o)]
    config = load_config(None, overrides)
    killed = store.RunDir(tmp_path / "killed", run_id(config))
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not killed.has_stage(0, "level_1_reinit"):
            assert process.poll() is None and time.monotonic() < deadline, "run ended before level 2"
            time.sleep(0.005)
        time.sleep(0.1)  # into level 2 (a level trains for about half a second here)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert not killed.has_stage(0, "level_2"), "the kill came too late to test a resume"
    finished = {stage: killed.stage_file(0, stage).stat().st_mtime_ns
                for stage in ("rewind", "level_0", "level_1", "level_1_reinit")}

    assert subprocess.run(args, cwd=REPO, capture_output=True).returncode == 0
    assert {s: killed.stage_file(0, s).stat().st_mtime_ns for s in finished} == finished
    assert not list(killed.path.rglob("*.tmp"))

    uninterrupted = run_imp(config, tmp_path / "whole", tmp_path, CPU)
    for stage in uninterrupted.stages(0):
        a, b = read(killed, stage), read(uninterrupted, stage)
        for key in a["weights"]:
            np.testing.assert_array_equal(a["weights"][key], b["weights"][key], err_msg=f"{stage} {key}")
        if "eval" in a:
            assert a["final"] == b["final"]
            np.testing.assert_array_equal(a["steps"]["train_loss"], b["steps"]["train_loss"])


def test_run_imp_sets_the_thread_policy_when_entered(tmp_path):
    from imp.base.runtime import DEFAULT_THREADS

    config = load_config(None, ["model.widths=[8]", "train.epochs='4it'", "train.eval_every='4it'"])
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run_imp(config, tmp_path, tmp_path, CPU)
        assert torch.get_num_threads() == DEFAULT_THREADS == 1
        torch.set_num_threads(2)
        run_imp(config, tmp_path, tmp_path, CPU, threads=None)  # left as it is
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_run_with_nothing_to_do_keeps_the_data_root_it_read(tmp_path):
    from imp.base import store

    config = load_config(None, ["model.widths=[8]", "train.epochs='4it'", "train.eval_every='4it'"])
    run = run_imp(config, tmp_path / "out", tmp_path, CPU)
    stored = store.read_run(run)
    assert stored["data_root"] == str(tmp_path) and len(stored["data_fingerprint"]) == 16
    run_imp(config, tmp_path / "out", tmp_path / "never-read", CPU)  # finished: no data is loaded
    assert store.read_run(run)["data_root"] == str(tmp_path)


def test_a_finished_run_is_found_without_its_data(tmp_path):
    """The run id needs the training set's size (equal durations written one way), but a
    finished run stored under the id of its config as written needs no data at all."""
    import shutil

    from imp.datasets import DataNotFound
    from tests.imp.test_datasets import synthetic_idx, write_idx

    write_idx(tmp_path / "data" / "MNIST" / "raw", synthetic_idx(n_train=40, n_test=10, height=28, width=28),
              compressed=True)
    config = load_config(None, ["data.dataset=mnist", "model.widths=[8]", "train.epochs='5it'",
                                "train.eval_every='5it'", "data.batch_size=16"])  # 3 iterations per epoch
    run = run_imp(config, tmp_path / "out", tmp_path / "data", CPU)
    shutil.rmtree(tmp_path / "data")
    assert run_imp(config, tmp_path / "out", tmp_path / "data", CPU).run_id == run.run_id
    with pytest.raises(DataNotFound):  # not finished, or another spelling: the data is needed
        run_imp(load_config(None, ["data.dataset=mnist", "train.epochs='3it'"]), tmp_path / "out",
                tmp_path / "data", CPU)


@pytest.mark.parametrize("setting", ["prune.strategy=global", "prune.strategy=layerwise",
                                     "prune.allocation=erk", "prune.allocation=lamp"])
def test_pruning_at_initialisation_baselines_keep_the_trunks_count_at_the_rewind_point(tmp_path, setting):
    """SNIP, GraSP and SynFlow (imp.pai) at every level, and the random baseline: the
    trunk's kept count in total (global) or per tensor (uniform, ERK, LAMP), scored on the
    network at the rewind point."""
    from imp import pai
    from imp.base.seeds import Seeds, generator
    from imp.data import load_dataset
    from imp.level import Start, start_model

    config = load_config(None, TINY + [setting, "prune.levels=2", "prune.rewind='10it'",
                                       "prune.baselines=['snip', 'grasp', 'synflow', 'random']"])
    strategy = config.prune.rule
    run = run_imp(config, tmp_path, tmp_path, CPU)
    data = load_dataset(config.data, tmp_path)
    rewind = store.read_h5(run.stage_file(0, "rewind"))
    dense = store.read_h5(run.stage_file(0, level_stage(0)))["mask"]
    dense = {k: torch.as_tensor(v) for k, v in dense.items()}
    for level in (1, 2):
        trunk = {k: torch.as_tensor(v) for k, v in store.read_h5(run.stage_file(0, level_stage(level)))["mask"].items()}
        if strategy == "erk":
            from imp.pruning import erk_counts
            previous = store.read_h5(run.stage_file(0, level_stage(level - 1)))["mask"]
            have = [int(previous[n].sum()) for n in trunk]
            assert [int(trunk[n].sum()) for n in trunk] == erk_counts(
                [tuple(trunk[n].shape) for n in trunk], sum(int(m.sum()) for m in trunk.values()), have)
        for method in (*pai.METHODS, "random"):
            mask = {k: torch.as_tensor(v) for k, v in
                    store.read_h5(run.stage_file(0, level_stage(level, method)))["mask"].items()}
            if strategy == "global":
                assert sum(int(m.sum()) for m in mask.values()) == sum(int(m.sum()) for m in trunk.values())
            else:
                assert all(int(mask[n].sum()) == int(trunk[n].sum()) for n in trunk)
            if method == "random":
                continue
            seeds = Seeds.from_config(config.train, 0)
            model = start_model(config, data, seeds, Start(state_from_arrays(rewind["weights"]), 10), dense)
            ordered = {n: dense[n] for n in model.state_dict() if n in dense}  # ties go by model order
            again = pai.pai_mask(method, model, data, ordered, trunk, strategy, {},
                                 generator(seeds.init, "pai", method, level))
            assert all(torch.equal(again[n], mask[n]) for n in mask), (method, level)


def test_the_data_root_is_stored_absolute_and_found_again_from_elsewhere(tmp_path, monkeypatch):
    """A relative data root (e.g. LTH_DATA=../shared/data) is stored as the folder it named,
    so a later command from another folder reads the same data; a stored root that no
    longer exists (a run copied elsewhere) falls back to LTH_DATA."""
    from imp.base import store
    from imp.datasets import stored_root

    (tmp_path / "data").mkdir()
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    config = load_config(None, ["model.widths=[8]", "train.epochs='4it'", "train.eval_every='4it'"])
    run = run_imp(config, tmp_path / "out", Path("../data"), CPU)
    stored = store.read_run(run)["data_root"]
    assert stored == str(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert stored_root(stored, {}) == tmp_path / "data"
    assert stored_root(str(tmp_path / "moved"), {"LTH_DATA": "/elsewhere"}) == Path("/elsewhere")
    assert stored_root("", {}) == Path("data")
