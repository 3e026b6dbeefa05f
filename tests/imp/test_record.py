import numpy as np
import pytest
import torch

from imp.base import store
from imp.base.config import load_config
from imp.base.record import TrainedLevel
from imp.base.seeds import Seeds
from imp.trunk import run_imp

CPU = torch.device("cpu")
TINY = ["model.widths=[16]", "train.epochs='20it'", "train.eval_every='10it'", "data.batch_size=64", "prune.levels=2"]


def record() -> TrainedLevel:
    g = torch.Generator().manual_seed(0)
    return TrainedLevel(
        weights={"fc1.weight": torch.randn(4, 3, generator=g), "fc1.bias": torch.zeros(4)},
        mask={"fc1.weight": torch.rand(4, 3, generator=g) > 0.5}, final={"test_accuracy": 0.5, "test_loss": 1.5},
        eval={"step": np.array([0, 10]), "test_accuracy": np.array([0.1, 0.5], dtype=np.float32)},
        train_loss=np.arange(10, dtype=np.float32), seeds=Seeds(1, 2, 3), iterations=10, start_step=0,
        iterations_per_epoch=5, train_seconds=0.25, density=0.5, kept=6, prunable=12, extra={"copy": 1})


def test_a_record_round_trips_through_its_file(tmp_path):
    written = record()
    store.write_h5(tmp_path / "level.h5", written.tree(), {"config": "{}"})
    read = TrainedLevel.read(tmp_path / "level.h5")
    for name in ("final", "seeds", "iterations", "start_step", "iterations_per_epoch", "train_seconds", "density",
                 "kept", "prunable", "extra"):
        assert getattr(read, name) == getattr(written, name), name
    assert read.provenance["config"] == "{}"
    for key in written.weights:
        assert torch.equal(read.weights[key], written.weights[key])
    assert torch.equal(read.mask["fc1.weight"], written.mask["fc1.weight"]) and read.mask["fc1.weight"].dtype == torch.bool
    np.testing.assert_array_equal(read.train_loss, written.train_loss)
    assert read.eval["test_accuracy"].dtype == np.float32 and read.eval["step"].tolist() == [0, 10]

    summary = TrainedLevel.read(tmp_path / "level.h5", arrays=False)
    assert summary.weights == {} and summary.mask == {} and summary.eval == {} and len(summary.train_loss) == 0
    assert summary.final == written.final and summary.kept == 6
    only_eval = TrainedLevel.read(tmp_path / "level.h5", arrays=("eval",))
    assert set(only_eval.eval) == {"step", "test_accuracy"} and only_eval.weights == {}
    with pytest.raises(ValueError, match="unknown parts"):
        TrainedLevel.read(tmp_path / "level.h5", arrays=("weight",))


def test_the_trunk_passes_on_what_it_trained_without_reading_it_back(tmp_path, monkeypatch):
    reads = []
    real = TrainedLevel.read.__func__
    monkeypatch.setattr(TrainedLevel, "read", classmethod(lambda cls, path, arrays=True: reads.append(path)
                                                          or real(cls, path, arrays)))
    seen = []
    config = load_config(None, TINY + ["prune.baselines=['oneshot']"])
    run = run_imp(config, tmp_path, tmp_path, CPU, hooks=[seen.append])
    assert reads == []  # every level and the dense network for the baseline came from memory
    assert [done.level for done in seen] == [0, 1, 2]
    for done in seen:
        stored = real(TrainedLevel, run.stage_file(0, f"level_{done.level}"))
        assert stored.final == done.trained.final and stored.kept == done.trained.kept
        for key, value in stored.weights.items():
            assert torch.equal(done.trained.weights[key], value), key
    # resuming reads the finished levels instead of training them
    seen.clear()
    run_imp(config, tmp_path, tmp_path, CPU, hooks=[seen.append])
    assert [done.level for done in seen] == [0, 1, 2] and len(reads) == 3


def test_a_resumed_run_sees_masks_in_the_order_an_uninterrupted_one_does(tmp_path):
    """HDF5 returns names sorted (fc, fc1, fc2) while a level just trained has them in the
    model's order (fc1, fc2, fc); the random baseline draws tensor by tensor, so a run
    extended level by level must draw exactly what a run in one go draws."""
    base = TINY[1:-1] + ["model.widths=[16, 8]", "prune.baselines=['random']", "prune.random_strategy=layerwise"]
    whole = run_imp(load_config(None, base + ["prune.levels=2"]), tmp_path / "whole", tmp_path, CPU)
    steps = tmp_path / "steps"
    run_imp(load_config(None, base + ["prune.levels=1"]), steps, tmp_path, CPU)
    extended = run_imp(load_config(None, base + ["prune.levels=2"]), steps, tmp_path, CPU)
    first = TrainedLevel.read(whole.stage_file(0, "level_2_random"))
    second = TrainedLevel.read(extended.stage_file(0, "level_2_random"))
    assert sorted(first.mask) == ["fc.weight", "fc1.weight", "fc2.weight"]
    for name in first.mask:
        assert torch.equal(first.mask[name], second.mask[name]), name
