"""Tests for landscape.align (permutation specs, weight and activation matching) and
landscape.repair (REPAIR), on tiny models: a permuted copy computes the same function and
is recovered exactly; matching lowers the barrier of trained pairs; REPAIR agrees with a
hand-folded reference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imp.base.errors import UserError
from imp.data import Split
from imp.models import build_model
from landscape.align import (activation_matching, identity_perms, matching_objective, permutation_spec,
                             permute_mask, permute_state, weight_matching)
from landscape.lmc import curve_barriers, evaluate_path, interpolate
from landscape.repair import corrected, point_statistics, repair_corrections, repair_points, repaired_path
from tests.landscape.conftest import randomised, seeded, state


def random_perms(spec, seed) -> dict:
    g = seeded(seed)
    return {group: torch.randperm(size, generator=g) for group, size in spec.sizes.items()}


def inputs(shape, count, seed=0) -> torch.Tensor:
    return torch.randn(count, *shape, generator=seeded(seed), dtype=torch.float64)


def split(shape, count, classes=5, seed=0) -> Split:
    return Split(inputs(shape, count, seed), torch.randint(0, classes, (count,), generator=seeded(seed + 1)),
                 torch.arange(count))


def conv_bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, stride=2, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 2 * 2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))


MODELS = {  # name -> (builder, input shape)
    "mlp": (lambda: build_model("mlp", (1, 4, 4), 5, widths=(16, 8)), (1, 4, 4)),
    "conv2": (lambda: build_model("conv2", (3, 4, 4), 5), (3, 4, 4)),
    "conv4": (lambda: build_model("conv4", (3, 4, 4), 5), (3, 4, 4)),
    "vgg11": (lambda: build_model("vgg11", (3, 16, 16), 5, width=4), (3, 16, 16)),
    "resnet20": (lambda: build_model("resnet20", (3, 8, 8), 5, width=4), (3, 8, 8)),
    "resnet18": (lambda: build_model("resnet18", (3, 8, 8), 5, width=2), (3, 8, 8)),
    "sequential": (conv_bn, (3, 5, 5)),
}


def assert_states_equal(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# --- the permutation spec -------------------------------------------------------------


def test_resnet_spec_shares_one_permutation_per_residual_stream():
    spec = permutation_spec(build_model("resnet20", (3, 8, 8), 5, width=4))
    assert spec.sizes["stream1"] == 4 and spec.sizes["stream2"] == 8 and spec.sizes["stream3"] == 16
    assert spec.axes["conv1.weight"] == ("stream1", None, None, None)
    assert spec.axes["layer1.2.bn2.running_var"] == ("stream1",)
    assert spec.axes["layer2.0.conv1.weight"] == ("layer2.0.conv1", "stream1", None, None)
    assert spec.axes["layer2.0.downsample.0.weight"] == ("stream2", "stream1", None, None)
    assert spec.axes["layer2.2.conv2.weight"] == ("stream2", "layer2.2.conv1", None, None)
    assert spec.axes["fc.weight"] == (None, "stream3") and spec.axes["fc.bias"] == (None,)
    assert len(spec.sizes) == 3 + 9  # three streams, one inner group per block
    assert spec.activations["stream1"] == ("bn1", "layer1.0", "layer1.1", "layer1.2")
    assert "layer1.0.bn1.num_batches_tracked" not in spec.axes


def test_conv_to_linear_columns_move_in_blocks_of_spatial_positions():
    model = build_model("conv2", (3, 4, 4), 5)
    spec = permutation_spec(model)
    assert spec.axes["fc1.weight"] == ("fc1", "conv2") and model.fc1.weight.shape[1] == 64 * 2 * 2
    perms = identity_perms(spec)
    perms["conv2"] = torch.roll(torch.arange(64), 1)  # position i takes channel i - 1
    moved = permute_state(spec, state(model), perms)["fc1.weight"]
    original = model.fc1.weight.detach()
    assert torch.equal(moved[:, 4:8], original[:, 0:4]) and torch.equal(moved[:, 0:4], original[:, 252:256])


@pytest.mark.parametrize("name", MODELS)
def test_random_permutation_keeps_the_function_and_weight_matching_undoes_it(name):
    build, shape = MODELS[name]
    model = randomised(build(), seed=1)
    spec = permutation_spec(model)
    a = state(model)
    perms = random_perms(spec, seed=2)
    assert any(not torch.equal(p, torch.arange(len(p))) for p in perms.values())
    b = permute_state(spec, a, perms)
    x = inputs(shape, 16)
    expected = model(x)
    model.load_state_dict(b)
    torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
    assert not all(torch.equal(a[k], b[k]) for k in a)
    assert_states_equal(permute_state(spec, b, weight_matching(spec, a, b)), a)


@pytest.mark.parametrize("name", ["mlp", "resnet20"])
def test_aligned_copy_has_zero_barrier_and_activation_matching_recovers_it(name):
    build, shape = MODELS[name]
    model = randomised(build(), seed=3)
    spec = permutation_spec(model)
    a = state(model)
    b = permute_state(spec, a, random_perms(spec, seed=4))
    splits = {"train": split(shape, 40, seed=5)}
    bn = dict(bn_examples=inputs(shape, 32, seed=6))
    raw = evaluate_path(model, a, b, splits, points=5, **bn)
    assert np.ptp(raw["train_loss"]) > 0.01  # on a straight line to the permuted copy the loss changes
    for perms in (weight_matching(spec, a, b), activation_matching(model, spec, a, b, inputs(shape, 64, 7))):
        aligned = permute_state(spec, b, perms)
        assert_states_equal(aligned, a)
        for value in curve_barriers(evaluate_path(model, a, aligned, splits, points=5, **bn)).values():
            assert value == {"interpolated": 0.0, "mean": 0.0}


def test_permute_mask_keeps_pruned_weights_at_pruned_positions():
    model = randomised(MODELS["mlp"][0](), seed=8)
    spec = permutation_spec(model)
    g = seeded(9)
    mask = {name: torch.rand(model.state_dict()[name].shape, generator=g) < 0.3
            for name in ("fc1.weight", "fc2.weight", "fc.weight")}
    pruned = {name: tensor * mask[name] if name in mask else tensor for name, tensor in state(model).items()}
    perms = random_perms(spec, seed=10)
    moved_mask, moved = permute_mask(spec, mask, perms), permute_state(spec, pruned, perms)
    assert moved_mask.keys() == mask.keys()
    for name in mask:
        assert moved_mask[name].dtype == torch.bool
        assert torch.equal(moved_mask[name], moved[name] != 0), name  # nonzero weights are exactly the kept ones
        assert not torch.equal(moved_mask[name], mask[name]), name


# --- matching trained networks ---------------------------------------------------------


def teacher_data() -> tuple[Split, Split]:
    """Gaussian inputs (1 x 4 x 4) labelled by a random one-hidden-layer teacher (4 classes)."""
    teacher = build_model("mlp", (1, 4, 4), 4, widths=(32,), generator=seeded(99))
    x = torch.randn(1024, 1, 4, 4, generator=seeded(0))
    with torch.no_grad():
        y = teacher(x).argmax(1)
    return Split(x[:512], y[:512], torch.arange(512)), Split(x[512:], y[512:], torch.arange(512))


def trained(seed: int, train: Split, steps: int = 60) -> tuple[nn.Module, dict]:
    """An MLP (32, 32) from init seed ``seed``, SGD with momentum on batches of 64."""
    model = build_model("mlp", (1, 4, 4), 4, widths=(32, 32), generator=seeded(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    order = seeded(seed + 1000)
    for _ in range(steps):
        batch = torch.randint(0, len(train), (64,), generator=order)
        loss = F.cross_entropy(model(train.x[batch]), train.y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, state(model)


@pytest.mark.parametrize("seed", [0, 2, 4, 6])
def test_weight_matching_raises_the_objective_and_lowers_the_barrier_of_trained_pairs(seed):
    train, test = teacher_data()
    model, a = trained(seed, train)
    _, b = trained(seed + 1, train)
    spec = permutation_spec(model)
    perms = weight_matching(spec, a, b)
    assert matching_objective(spec, a, b, perms) > matching_objective(spec, a, b, identity_perms(spec))
    splits = {"train": train, "test": test}
    raw = curve_barriers(evaluate_path(model, a, b, splits, points=11))
    aligned = curve_barriers(evaluate_path(model, a, permute_state(spec, b, perms), splits, points=11))
    for key in ("train_loss", "test_loss"):
        assert aligned[key]["interpolated"] <= raw[key]["interpolated"], key


@pytest.mark.parametrize("seed", range(3))
def test_weight_matching_never_lowers_the_objective_of_unrelated_networks(seed):
    model = MODELS["resnet20"][0]()
    a, b = state(randomised(model, seed)), state(randomised(model, seed + 10))
    spec = permutation_spec(model)
    perms = weight_matching(spec, a, b, seed=seed)
    assert matching_objective(spec, a, b, perms) >= matching_objective(spec, a, b, identity_perms(spec))


# --- REPAIR ------------------------------------------------------------------------------


def folded_reference(model, a, b, alpha, x):
    """REPAIR folded into the hidden Linear layers of an MLP by hand, layer by layer:
    ``W' = diag(g_std / s) W``, ``b' = (b - mu) g_std / s + g_mean``."""
    hidden = [f"fc{i}" for i in range(1, model.hidden_layers + 1)]

    def outputs(weights):  # each hidden layer's pre-ReLU output on x
        h, found = x.flatten(1), {}
        for name in hidden:
            found[name] = h = F.linear(h, weights[f"{name}.weight"], weights[f"{name}.bias"])
            h = torch.relu(h)
        return found

    ends = [outputs(a), outputs(b)]
    folded = interpolate(a, b, alpha)
    for name in hidden:
        out = outputs(folded)[name]
        mu, s = out.mean(0), out.std(0, correction=0)
        goal_mean = (1 - alpha) * ends[0][name].mean(0) + alpha * ends[1][name].mean(0)
        goal_std = (1 - alpha) * ends[0][name].std(0, correction=0) + alpha * ends[1][name].std(0, correction=0)
        folded[f"{name}.weight"] = folded[f"{name}.weight"] * (goal_std / s)[:, None]
        folded[f"{name}.bias"] = (folded[f"{name}.bias"] - mu) * goal_std / s + goal_mean
    return folded


@pytest.mark.parametrize("batch_size", [1000, 16])  # one pass; one pass per point over chunks
def test_repair_matches_a_hand_folded_reference_on_an_mlp(batch_size):
    model = randomised(build_model("mlp", (1, 4, 4), 5, widths=(12, 10, 8)), seed=11)
    a, b = state(model), state(randomised(model, seed=12))
    model.load_state_dict(a)
    splits = {"train": split((1, 4, 4), 50, seed=13), "test": split((1, 4, 4), 30, seed=14)}
    x = inputs((1, 4, 4), 40, seed=15)
    curve = repaired_path(model, a, b, splits, points=5, repair_examples=x, batch_size=batch_size)
    plain = evaluate_path(model, a, b, splits, points=5)
    assert curve.keys() == plain.keys()
    assert not np.allclose(curve["train_loss"][1:-1], plain["train_loss"][1:-1])
    for i, alpha in enumerate(curve["alpha"].tolist()):
        model.load_state_dict(folded_reference(model, a, b, alpha, x))
        for name, data in splits.items():
            logits = model(data.x)
            np.testing.assert_allclose(curve[f"{name}_loss"][i], F.cross_entropy(logits, data.y).item(),
                                       rtol=1e-10, atol=0)
            assert curve[f"{name}_error"][i] == (logits.argmax(1) != data.y).double().mean().item()


@pytest.mark.parametrize("name", ["mlp", "resnet20", "sequential"])
def test_repair_changes_nothing_at_the_endpoints(name):
    build, shape = MODELS[name]
    model = randomised(build(), seed=16)
    a, b = state(model), state(randomised(model, seed=17))
    model.load_state_dict(a)
    splits = {"train": split(shape, 30, seed=18)}
    bn = dict(bn_examples=inputs(shape, 32, seed=19))
    curve = repaired_path(model, a, b, splits, points=3, repair_examples=inputs(shape, 24, seed=20), **bn)
    plain = evaluate_path(model, a, b, splits, points=3, method="plain", **bn)
    for key in ("train_loss", "train_error"):
        assert curve[key][[0, 2]].tolist() == plain[key][[0, 2]].tolist(), key  # exactly: scale 1, shift 0
    assert curve["train_loss"][1] != plain["train_loss"][1]
    assert_states_equal(state(model), a)
    assert not model.training


@pytest.mark.parametrize("batch_size", [100, 7])
def test_repaired_resnet_has_the_goal_statistics_at_every_point(batch_size):
    model = randomised(MODELS["resnet20"][0](), seed=21)
    a, b = state(model), state(randomised(model, seed=22))
    names = repair_points(model)
    assert len(names) == 1 + 2 * 9 + 2 and "fc" not in names  # every BatchNorm, nothing else
    x = inputs((3, 8, 8), 20, seed=23)
    ends = []
    for end in (a, b):
        model.load_state_dict(end)
        ends.append(point_statistics(model, names, x, batch_size))
    model.load_state_dict(interpolate(a, b, 0.3))
    goals = {n: tuple(0.7 * e0 + 0.3 * e1 for e0, e1 in zip(ends[0][n], ends[1][n])) for n in names}
    corrections = repair_corrections(model, names, goals, x, batch_size)
    with corrected(model, corrections):
        measured = point_statistics(model, names, x, batch_size)
    for n in names:
        torch.testing.assert_close(measured[n], goals[n], rtol=1e-9, atol=1e-9)


def test_repair_points_of_plain_networks():
    assert repair_points(MODELS["mlp"][0]()) == ["fc1", "fc2"]
    assert repair_points(MODELS["conv2"][0]()) == ["conv1", "conv2", "fc1", "fc2"]
    assert repair_points(conv_bn()) == ["1", "4", "8"]


# --- errors ------------------------------------------------------------------------------


def test_unsupported_models_and_mismatched_states_are_user_errors():
    with pytest.raises(UserError, match="cannot align .*supported models"):
        permutation_spec(nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)))
    with pytest.raises(UserError, match="cannot align Bilinear"):
        permutation_spec(nn.Bilinear(2, 2, 2))
    with pytest.raises(UserError, match="cannot align"):
        repair_points(nn.Bilinear(2, 2, 2))
    model = MODELS["mlp"][0]()
    spec = permutation_spec(model)
    wider = state(build_model("mlp", (1, 4, 4), 5, widths=(16, 9)))
    with pytest.raises(UserError, match="fc2.weight has shape"):
        weight_matching(spec, state(model), wider)
    with pytest.raises(UserError, match="entries differ"):
        weight_matching(spec, state(model), state(build_model("mlp", (1, 4, 4), 5, widths=(16,))))
    bad = identity_perms(spec)
    bad["fc1"] = torch.zeros(16, dtype=torch.long)
    with pytest.raises(UserError, match="not a permutation"):
        permute_state(spec, state(model), bad)
    with pytest.raises(UserError, match="does not know"):
        permute_mask(spec, {"fc9.weight": torch.ones(2, dtype=torch.bool)}, identity_perms(spec))
