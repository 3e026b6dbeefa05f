"""The replicate-batched trainer against its reference: each replicate trained on its own.

The strict claims are in float64 (models and data converted to double), where stacking
under ``vmap`` only reorders floating-point operations. ``train()`` computes the loss on
``logits.float()`` whatever the model's dtype, so even there the two agree to float32
rounding of the logits (~1e-7), not to 1e-15: hence the 1e-6 tolerance.
"""

import copy
import dataclasses

import numpy as np
import pytest
import torch

import imp.level
import imp.trunk
from imp.base import store
from imp.batched import prune_batched, train_batched, train_levels_batched
from imp.base.config import TrainConfig, load_config, platform_json, run_id
from imp.data import Dataset, Split, load_dataset
from imp.base.duration import Duration
from imp.level import Start, copy_state, train_level
from imp.models import build_initial_model, build_model
from imp.pruning import MaskEnforcer, apply_mask, full_mask, magnitude_prune, prunable_tensors
from imp.base.names import level_stage
from imp.trunk import run_imp
from imp.base.seeds import Seeds
from imp.train import Hook, train

CPU = torch.device("cpu")
REPLICATES = 3


def tiny_data(augment=False, count=40, classes=4, shape=(3, 8, 8)) -> Dataset:
    """Random float64 examples; 40 at batch size 16 makes the last batch of an epoch short."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(count, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (count,), generator=g)
    split = Split(x, y, torch.arange(count))
    fill = torch.full((shape[0],), -0.5, dtype=torch.float64)
    return Dataset("tiny", split, split, None, classes, augment, fill, torch.zeros(count, dtype=torch.bool),
                   y.clone())


def double(data: Dataset) -> Dataset:
    def convert(split):
        return None if split is None else dataclasses.replace(split, x=split.x.double())
    return dataclasses.replace(data, train=convert(data.train), test=convert(data.test),
                               validation=convert(data.validation), fill=data.fill.double())


def float64_with_spy(monkeypatch, spied, modules: tuple = ()) -> list[tuple[int, str]]:
    """Build models (in imp.level, imp.trunk and ``modules``) and load data in float64, and
    record each call of ``spied.train_levels_batched`` as (networks, label)."""
    import imp.level
    import imp.trunk

    model, load = imp.level.build_initial_model, imp.trunk.load_dataset
    for module in (imp.level, imp.trunk, *modules):
        monkeypatch.setattr(module, "build_initial_model", lambda *a: model(*a).double())
    monkeypatch.setattr(imp.trunk, "load_dataset", lambda *a: double(load(*a)))
    made = []
    real = spied.train_levels_batched

    def spy(config, data, seeds_list, *args, **kwargs):
        made.append((len(seeds_list), kwargs["label"]))
        return real(config, data, seeds_list, *args, **kwargs)

    monkeypatch.setattr(spied, "train_levels_batched", spy)
    return made


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    scale = b.double().abs().max().item()
    return (a.double() - b.double()).abs().max().item() / scale if scale else (a != b).any().item()


def assert_states_close(batched: dict, reference: dict, rtol: float) -> None:
    assert batched.keys() == reference.keys()
    for key, value in reference.items():
        if value.is_floating_point():
            assert relative_error(batched[key], value) <= rtol, key
        else:  # num_batches_tracked
            assert torch.equal(batched[key], value), key


def batched_vs_independent(name, config, data, prune=True, start_step=2, **options):
    """Train R models batched and each one with ``train``; return both and the masks."""
    models = [build_model(name, data.input_shape, data.num_classes, generator=torch.Generator().manual_seed(r),
                          **options).double() for r in range(REPLICATES)]
    seeds = [Seeds(init=r, order=10 + r, augment=20 + r) for r in range(REPLICATES)]
    masks = []
    for replicate, model in enumerate(models):
        weights = dict(model.named_parameters())
        mask = full_mask(weights, prunable_tensors(model))
        if prune:  # a different density per replicate
            mask = magnitude_prune(weights, mask, 0.1 + 0.3 * replicate)
        apply_mask(model, mask)
        masks.append(mask)
    references = [copy.deepcopy(model) for model in models]
    losses = train_batched(models, data, config, 16, seeds, start_step=start_step, masks=masks)
    reference_losses = [train(model, data, config, 16, s, start_step=start_step,
                              after_step=MaskEnforcer(model, mask))
                        for model, s, mask in zip(references, seeds, masks)]
    return models, losses, references, torch.stack(reference_losses), masks


def check_equal_to_independent(models, losses, references, reference_losses, rtol=1e-6):
    assert losses.shape == reference_losses.shape
    assert relative_error(losses, reference_losses) <= rtol
    for model, reference in zip(models, references):
        assert_states_close(model.state_dict(), reference.state_dict(), rtol)
    # The replicates really are different networks, so equality is not by accident.
    assert not torch.equal(next(models[0].parameters()), next(models[1].parameters()))


SGD = TrainConfig(epochs=Duration(4), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3,
                  schedule="step", milestones=(Duration(2),))


def test_mlp_with_sgd_momentum_weight_decay_and_masks_equals_independent_training():
    result = batched_vs_independent("mlp", SGD, tiny_data(), widths=(16, 8))
    check_equal_to_independent(*result[:4])
    assert result[1].shape == (REPLICATES, 4 * 3 - 2)


def test_adam_equals_independent_training():
    config = TrainConfig(epochs=Duration(4), optimizer="adam", lr=0.01, weight_decay=1e-3)
    check_equal_to_independent(*batched_vs_independent("mlp", config, tiny_data(), widths=(16, 8))[:4])


def test_flip_crop_augmentation_equals_independent_training():
    config = TrainConfig(epochs=Duration(3), lr=0.05, momentum=0.9)
    check_equal_to_independent(*batched_vs_independent("mlp", config, tiny_data(augment=True),
                                                       widths=(16,))[:4])


def test_resnet_batchnorm_running_statistics_are_tracked_per_replicate():
    config = TrainConfig(epochs=Duration(3), lr=0.1, momentum=0.9, weight_decay=1e-3)
    models, losses, references, reference_losses, _ = batched_vs_independent(
        "resnet20", config, tiny_data(augment=True), start_step=0, width=4)
    check_equal_to_independent(models, losses, references, reference_losses)
    state = models[0].state_dict()
    assert int(state["bn1.num_batches_tracked"]) == 3 * 3
    for key, initial in (("bn1.running_mean", 0.0), ("bn1.running_var", 1.0)):
        assert not torch.equal(state[key], torch.full_like(state[key], initial))  # they moved,
        assert not torch.equal(state[key], models[1].state_dict()[key])  # each replicate its own way


def test_bf16_autocast_runs_and_agrees_with_train_to_bf16_rounding():
    data = tiny_data()
    data = dataclasses.replace(data, train=dataclasses.replace(data.train, x=data.train.x.float()),
                               fill=data.fill.float())
    config = TrainConfig(epochs=Duration(0, 2), lr=0.1, momentum=0.9, precision="bf16")
    models = [build_model("resnet20", data.input_shape, 4, width=4, generator=torch.Generator().manual_seed(r))
              for r in range(2)]
    references = [copy.deepcopy(model) for model in models]
    seeds = [Seeds(r, r, r) for r in range(2)]
    losses = train_batched(models, data, config, 16, seeds)
    first = torch.stack([train(model, data, config, 16, s, end_step=1)[0]
                         for model, s in zip(references, seeds)])
    assert relative_error(losses[:, 0], first) <= 2e-2  # bf16 has 8 bits of mantissa
    assert bool(torch.isfinite(losses).all())
    assert all(p.dtype == torch.float32 for model in models for p in model.parameters())
    assert models[0].bn1.running_mean.dtype == torch.float32


def test_pruned_weights_stay_exactly_zero_at_every_step():
    data = tiny_data()
    models = [build_model("mlp", data.input_shape, 4, widths=(16,),
                          generator=torch.Generator().manual_seed(r)).double() for r in range(2)]
    masks = []
    for model, fraction in zip(models, (0.5, 0.8)):
        weights = dict(model.named_parameters())
        masks.append(magnitude_prune(weights, full_mask(weights, prunable_tensors(model)), fraction))
        apply_mask(model, masks[-1])
    checked = []

    def pruned_are_zero(step, model):
        mask = masks[models.index(model)]
        parameters = dict(model.named_parameters())
        assert all(bool((parameters[n][~keep] == 0).all()) for n, keep in mask.items())
        checked.append(step)

    config = TrainConfig(epochs=Duration(2), lr=0.5, momentum=0.9, weight_decay=0.1)  # pushes every weight
    hooks = [[Hook(pruned_are_zero, every=1)] for _ in models]
    train_batched(models, data, config, 16, [Seeds(r, r, r) for r in range(2)], masks=masks, hooks_list=hooks)
    assert sorted(checked) == sorted(list(range(7)) * 2)
    for model, mask in zip(models, masks):
        parameters = dict(model.named_parameters())
        for name, keep in mask.items():
            assert bool((parameters[name][~keep] == 0).all()) and bool((parameters[name][keep] != 0).all())


# ---------------------------------------------------------------- pruning


def tied_weights(replicate: int) -> dict:
    """Small integers (many ties) and, in float64, values equal only in float32."""
    g = torch.Generator().manual_seed(replicate)
    nudge = 1e-12 * torch.randint(-1, 2, (4, 6), generator=g)  # invisible in float32
    return {"a.weight": torch.randint(-3, 4, (6, 5), generator=g).float(),
            "b.weight": torch.randint(-3, 4, (4, 6), generator=g).double() + nudge,
            "c.weight": torch.randint(-2, 3, (3, 4), generator=g).double(),
            "d.weight": torch.randint(-2, 3, (10,), generator=g).float()}


def prior_masks(weights: list[dict]) -> list[dict]:
    """Different start masks per replicate (the first keeps everything)."""
    masks = []
    for replicate, w in enumerate(weights):
        g = torch.Generator().manual_seed(100 + replicate)
        masks.append({n: torch.rand(t.shape, generator=g) >= 0.15 * replicate for n, t in w.items()})
    return masks


@pytest.mark.parametrize("strategy", ["global", "layerwise"])
@pytest.mark.parametrize("layer_fractions", [None, {"c.*": 0.5, "d.weight": 0.25}])
def test_prune_batched_equals_magnitude_prune_per_replicate(strategy, layer_fractions):
    weights = [tied_weights(r) for r in range(4)]
    masks = prior_masks(weights)
    for fraction in (0.2, 0.55):
        expected = [magnitude_prune(w, m, fraction, strategy, layer_fractions) for w, m in zip(weights, masks)]
        stacked = {n: torch.stack([w[n].double() for w in weights]) for n in weights[0]}
        for given in (weights, stacked):
            got = prune_batched(given, masks, fraction, strategy, layer_fractions)
            for mine, theirs in zip(got, expected):
                assert list(mine) == list(theirs)
                for name in theirs:
                    assert mine[name].dtype == torch.bool and torch.equal(mine[name], theirs[name]), name
    # the ties are real: equal magnitudes on both sides of the cut
    flat = torch.cat([w.abs().reshape(-1).float() for w in weights[0].values()])
    assert len(flat.unique()) < len(flat) // 3


def test_prune_batched_nests_over_levels_like_the_trunk():
    weights = [tied_weights(r) for r in range(3)]
    masks = [full_mask(w, w) for w in weights]
    singles = [dict(m) for m in masks]
    for _ in range(4):
        masks = prune_batched(weights, masks, 0.2)
        singles = [magnitude_prune(w, m, 0.2) for w, m in zip(weights, singles)]
        assert all(torch.equal(a[n], b[n]) for a, b in zip(masks, singles) for n in a)


# ---------------------------------------------------------------- levels and the trunk


LEVEL = ["model.name=resnet20", "model.width=4", "train.epochs='12it'", "train.eval_every='5it'",
         "data.batch_size=64", "train.momentum=0.9", "train.weight_decay=1e-3", "train.eval_examples=200"]


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}/"))
        else:
            out[f"{prefix}{key}"] = torch.from_numpy(value) if isinstance(value, np.ndarray) else value
    return out


def test_train_levels_batched_trees_equal_train_level_trees(tmp_path, monkeypatch):
    real = imp.level.build_initial_model
    monkeypatch.setattr(imp.level, "build_initial_model", lambda *a: real(*a).double())
    config = load_config(None, LEVEL)
    data = double(load_dataset(config.data, tmp_path))
    seeds = [Seeds.from_config(config.train, r) for r in range(2)]
    starts, masks = [], []
    for replicate, s in enumerate(seeds):
        model = build_initial_model(config, data, s.init)
        state = copy_state(model)
        starts.append(Start(state, 3))
        masks.append(magnitude_prune(state, full_mask(state, prunable_tensors(model)), 0.3 + 0.3 * replicate))
    batched = train_levels_batched(config, data, seeds, starts, masks, snapshot_at=7)
    for (trained, snapshot), s, start, mask in zip(batched, seeds, starts, masks):
        reference, reference_snapshot = train_level(config, data, s, start, mask, snapshot_at=7)
        assert_states_close(snapshot, reference_snapshot, 1e-6)
        assert any("running_var" in key for key in snapshot)
        mine, theirs = flatten(trained.tree()), flatten(reference.tree())
        assert list(mine) == list(theirs)
        for key, value in theirs.items():
            if key == "train_seconds":
                continue
            if isinstance(value, torch.Tensor):
                assert mine[key].dtype == value.dtype and mine[key].shape == value.shape, key
                if value.is_floating_point():
                    assert relative_error(mine[key], value) <= 1e-6, key
                else:
                    assert torch.equal(mine[key], value), key
            elif isinstance(value, float):
                assert mine[key] == pytest.approx(value, rel=1e-6), key
            else:
                assert mine[key] == value, key
        assert trained.eval["step"].tolist() == [3, 5, 10, 12]
    with pytest.raises(ValueError, match="start step"):
        train_levels_batched(config, data, seeds, [starts[0], Start(starts[1].state, 4)], masks)


TRUNK = ["model.widths=[32, 16]", "train.epochs='40it'", "train.eval_every='20it'", "data.batch_size=64",
         "train.momentum=0.9", "train.weight_decay=1e-3", "prune.levels=2", "prune.rewind='10it'",
         "prune.baselines=['reinit']"]


def test_batch_replicates_is_a_platform_field():
    plain = load_config(None, TRUNK)
    batched = load_config(None, TRUNK + ["train.batch_replicates=true"])
    assert run_id(plain) == run_id(batched)
    assert '"batch_replicates":true' in platform_json(batched)


def test_run_imp_with_batched_replicates_matches_a_sequential_run(tmp_path, monkeypatch):
    calls = []
    real = imp.trunk.train_levels_batched

    def spy(config, data, seeds_list, *args, **kwargs):
        calls.append(len(seeds_list))
        return real(config, data, seeds_list, *args, **kwargs)

    monkeypatch.setattr(imp.trunk, "train_levels_batched", spy)
    done = []
    sequential = run_imp(load_config(None, TRUNK), tmp_path / "sequential", tmp_path, CPU, replicates=2)
    assert calls == []
    batched = run_imp(load_config(None, TRUNK + ["train.batch_replicates=true"]), tmp_path / "batched",
                      tmp_path, CPU, replicates=2, hooks=[lambda d: done.append((d.replicate, d.level))])
    assert calls == [2, 2, 2, 2, 2]  # levels 0, 1, reinit of level 1, level 2, reinit of level 2: both replicates together
    for replicate in range(2):  # each replicate's hooks ran after each of its levels, in order
        assert [level for r, level in done if r == replicate] == [0, 1, 2]

    def files(run):
        return sorted(str(p.relative_to(run.path)) for p in run.path.rglob("*.h5") if p.name != "run.h5")

    assert files(batched) == files(sequential) and len(files(sequential)) == 2 * 6
    for replicate in range(2):
        for stage in ("rewind", level_stage(0), level_stage(1), level_stage(2), level_stage(2, "reinit")):
            mine = store.read_h5(batched.stage_file(replicate, stage))
            theirs = store.read_h5(sequential.stage_file(replicate, stage))
            for name, keep in theirs.get("mask", {}).items():
                assert np.array_equal(mine["mask"][name], keep), (replicate, stage, name)
            for key, value in theirs["weights"].items():
                scale = np.abs(value).max() or 1
                assert np.abs(mine["weights"][key] - value).max() <= 1e-4 * scale, (replicate, stage, key)
    assert not np.array_equal(store.read_h5(batched.stage_file(0, level_stage(2)))["mask"]["fc1.weight"],
                              store.read_h5(batched.stage_file(1, level_stage(2)))["mask"]["fc1.weight"])


def test_a_diverging_replicate_stops_batched_training():
    from imp.base.errors import Diverged

    data = tiny_data()
    models = [build_model("mlp", data.input_shape, 4, widths=(16,),
                          generator=torch.Generator().manual_seed(r)).double() for r in range(2)]
    config = TrainConfig(epochs=Duration(iterations=30), lr=1e6, momentum=0.9)
    with pytest.raises(Diverged, match=r"^level_1 \(replicate \d of the batch\): the training loss became "
                                       r"(nan|inf) at step \d+; lower train.lr"):
        train_batched(models, data, config, 16, [Seeds(r, r, r) for r in range(2)], label="level_1")
