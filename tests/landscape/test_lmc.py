"""Tests for landscape.lmc: paths with known curves and barriers, BatchNorm re-estimation
against a direct computation, and every fast path against the per-point loop."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from imp.data import Split
from imp.base.errors import UserError
from imp.models import build_model
from imp.pruning import apply_mask, full_mask, magnitude_prune, prunable_tensors
from imp.train import evaluate
from landscape import fastpath
from landscape.lmc import (alphas, barriers, curve_barriers, evaluate_path, example_losses, interpolate,
                           midpoint_barriers, reestimate_batchnorm)
from tests.landscape.conftest import randomised, seeded, state


def split(shape, count, classes=5, seed=0, dtype=torch.float64) -> Split:
    g = seeded(seed)
    x = torch.randn(count, *shape, generator=g).to(dtype)
    return Split(x, torch.randint(0, classes, (count,), generator=g), torch.arange(count))


def conv_bn() -> nn.Module:
    """Two BatchNorm2d layers (the second sees the first's output) and a BatchNorm1d."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3, stride=2, bias=False), nn.BatchNorm2d(6, eps=0.1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 2 * 2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5))


def mlp_bn() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.BatchNorm1d(10), nn.ReLU(),
                         nn.Linear(10, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 5))


def small_mlp() -> nn.Module:
    return build_model("mlp", (1, 8, 8), 5, widths=(16,))


def masked(model, density_target=0.2) -> dict:
    """The state of ``model`` with 80% of its weights pruned (zeroed) by global magnitude."""
    weights = dict(model.named_parameters())
    mask = magnitude_prune(weights, full_mask(weights, prunable_tensors(model)), 1 - density_target)
    apply_mask(model, mask)
    return state(model)


def assert_curves_close(a, b, rtol=1e-12, atol=1e-12, error_atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        tolerance = error_atol if key.endswith("_error") else atol
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=tolerance, err_msg=key)


# ---------------------------------------------------------------- interpolation and barriers


def test_alphas_is_the_inclusive_grid():
    np.testing.assert_array_equal(alphas(5), [0.0, 0.25, 0.5, 0.75, 1.0])
    assert len(alphas()) == 25
    with pytest.raises(UserError):
        alphas(1)


def test_interpolate_mixes_floats_and_keeps_integers_from_a():
    a = {"w": torch.tensor([0.0, 2.0, 4.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([0.0, 6.0, -4.0]), "n": torch.tensor(9)}
    mid = interpolate(a, b, 0.25)
    torch.testing.assert_close(mid["w"], torch.tensor([0.0, 3.0, 2.0]))  # pruned in both: stays 0
    assert mid["n"].item() == 3
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"]) and torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    with pytest.raises(UserError, match="differ"):
        interpolate(a, {"w": b["w"]}, 0.5)


def test_barriers_on_hand_made_curves():
    assert barriers(np.array([0.1, 0.5, 0.3]), alphas(3)) == pytest.approx({"interpolated": 0.3, "mean": 0.3})
    # A straight line: no barrier above the line, but above the endpoints' mean.
    assert barriers(np.array([0.1, 0.5, 0.9]), alphas(3)) == pytest.approx({"interpolated": 0.0, "mean": 0.4})
    # A bump off-centre: the line at a = 1/4 is 0.2, the mean is 0.3.
    assert barriers(np.array([0.1, 0.6, 0.3, 0.4, 0.5]), alphas(5)) == pytest.approx(
        {"interpolated": 0.4, "mean": 0.3})
    # A valley: nothing above the line, but the mean convention still counts half the endpoints' gap.
    assert barriers(np.array([0.5, 0.2, 0.4]), alphas(3)) == pytest.approx({"interpolated": 0.0, "mean": 0.05})
    with pytest.raises(UserError, match="0 to 1"):
        barriers(np.array([0.1, 0.2]), np.array([0.0, 0.5]))
    with pytest.raises(UserError, match="matching"):
        barriers(np.array([0.1, 0.2, 0.3]), alphas(2))


def test_a_network_has_no_barrier_with_itself():
    for model, shape in ((randomised(conv_bn(), 0), (3, 6, 6)), (randomised(small_mlp(), 1), (1, 8, 8))):
        splits = {"train": split(shape, 20, seed=1), "test": split(shape, 20, seed=2)}
        s = state(model)
        curve = evaluate_path(model, s, s, splits, points=5, bn_examples=splits["train"].x)
        for key in ("train_loss", "train_error", "test_loss", "test_error"):
            np.testing.assert_allclose(curve[key], curve[key][0], rtol=0, atol=1e-12)
        found = curve_barriers(curve)
        assert set(found) == {"train_loss", "train_error", "test_loss", "test_error"}
        for value in found.values():
            assert value == pytest.approx({"interpolated": 0.0, "mean": 0.0}, abs=1e-12)


@pytest.mark.parametrize("method", ["plain", "mlp", "vmap"])
def test_a_linear_model_has_the_curve_computed_by_hand(method):
    """Logits (x_0, 0) at A and (x_1, 0) at B, every label 0: the margin of example i along
    the path is (1 - a) x_i0 + a x_i1. Example 1 (1, -4) is right until a = 0.2, example 2
    (-4, 1) right from a = 0.8, example 3 (2, 3) always: errors 1/3, 2/3, 2/3, 2/3, 1/3."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 2, bias=False)).double()
    a = {"1.weight": torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)}
    b = {"1.weight": torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)}
    x = torch.tensor([[1.0, -4.0], [-4.0, 1.0], [2.0, 3.0]], dtype=torch.float64)
    splits = {"train": Split(x, torch.zeros(3, dtype=torch.long), torch.arange(3))}
    curve = evaluate_path(model, a, b, splits, points=5, method=method)
    grid = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
    margins = (1 - grid[:, None]) * x[:, 0].numpy() + grid[:, None] * x[:, 1].numpy()  # (P, 3)
    np.testing.assert_allclose(curve["train_error"], [1 / 3, 2 / 3, 2 / 3, 2 / 3, 1 / 3], rtol=0, atol=1e-15)
    np.testing.assert_allclose(curve["train_loss"], np.log1p(np.exp(-margins)).mean(1), rtol=1e-13)
    assert curve_barriers(curve)["train_error"] == pytest.approx({"interpolated": 1 / 3, "mean": 1 / 3})


# ---------------------------------------------------------------- BatchNorm re-estimation


def bn_inputs(model, chunks):
    """Inputs of every BatchNorm layer, collected by hooks on a train-mode copy fed ``chunks``."""
    model = copy.deepcopy(model).train()
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    seen = {i: [] for i in range(len(layers))}
    hooks = [layer.register_forward_pre_hook(lambda m, inputs, i=i: seen[i].append(inputs[0]))
             for i, layer in enumerate(layers)]
    with torch.no_grad():
        for chunk in chunks:
            model(chunk)
    for hook in hooks:
        hook.remove()
    return [torch.cat([v.transpose(0, 1).reshape(v.shape[1], -1) for v in values], 1)  # (C, n)
            for values in seen.values()]


@pytest.mark.parametrize("builder, shape", [(conv_bn, (3, 6, 6)), (mlp_bn, (3, 2, 2))])
def test_reestimated_statistics_are_those_of_the_layer_inputs(builder, shape):
    model = randomised(builder(), 0)
    x = 2 + 3 * split(shape, 40, seed=1).x
    momenta = [m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]

    reestimate_batchnorm(model, x, batch_size=64)  # one chunk: a single full batch
    layers = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    full = bn_inputs(model, [x])
    for layer, values in zip(layers, full):
        torch.testing.assert_close(layer.running_mean, values.mean(1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.running_var, values.var(1, correction=1), rtol=1e-12, atol=1e-12)
        assert layer.num_batches_tracked.item() == 1
    assert not any(m.training for m in model.modules())
    assert [m.momentum for m in layers] == momenta

    # Chunks of 14, 13, 13: moments pooled exactly over the inputs each chunk produced.
    with torch.no_grad():
        for layer in layers:  # stale statistics must not leak into the result
            layer.running_mean.fill_(100.0)
            layer.running_var.fill_(100.0)
    reestimate_batchnorm(model, x, batch_size=14)
    chunked = bn_inputs(model, torch.tensor_split(x, 3))
    for layer, values in zip(layers, chunked):
        torch.testing.assert_close(layer.running_mean, values.mean(1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.running_var, values.var(1, correction=1), rtol=1e-12, atol=1e-12)
        assert layer.num_batches_tracked.item() == 3
    # The first layer sees the same inputs however x is chunked: the full-set statistics.
    torch.testing.assert_close(layers[0].running_mean, full[0].mean(1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layers[0].running_var, full[0].var(1), rtol=1e-12, atol=1e-12)


def test_first_layer_statistics_by_hand():
    model = randomised(conv_bn(), 2)
    x = split((3, 6, 6), 30, seed=3).x
    reestimate_batchnorm(model, x, batch_size=7)
    z = F.conv2d(x, model[0].weight, model[0].bias, padding=1)  # (N, 4, 6, 6)
    torch.testing.assert_close(model[1].running_mean, z.mean((0, 2, 3)), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[1].running_var, z.var((0, 2, 3)), rtol=1e-12, atol=1e-12)


def test_reestimation_keeps_dropout_off():
    model = randomised(nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Dropout(0.5), nn.BatchNorm1d(6)), 0)
    x = split((3, 2, 2), 20).x
    reestimate_batchnorm(model, x)
    z = model[1](x.flatten(1))  # no dropout between the Linear layer and the BatchNorm
    torch.testing.assert_close(model[3].running_mean, z.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model[3].running_var, z.var(0), rtol=1e-12, atol=1e-12)


def test_reestimation_leaves_a_model_without_batchnorm_alone():
    model = randomised(small_mlp(), 0).train()
    before = state(model)
    reestimate_batchnorm(model, split((1, 8, 8), 10).x)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_interpolate_mode_uses_the_interpolated_statistics():
    a, b = state(randomised(conv_bn(), 0)), state(randomised(conv_bn(), 1))
    model = randomised(conv_bn(), 2)
    data = split((3, 6, 6), 24, seed=4)
    used = []
    hook = model[4].register_forward_pre_hook(lambda m, inputs: used.append(m.running_mean.clone()))
    curve = evaluate_path(model, a, b, {"test": data}, points=3, bn="interpolate")
    hook.remove()
    assert len(used) == 3  # one batch per point
    for alpha, seen in zip(alphas(3), used):
        torch.testing.assert_close(seen, interpolate(a, b, alpha)["4.running_mean"], rtol=0, atol=0)
    # ... and the curve is that of the interpolated networks, evaluated directly.
    reference = copy.deepcopy(model)
    for i, alpha in enumerate(alphas(3)):
        reference.load_state_dict(interpolate(a, b, alpha))
        result = evaluate(reference, data)
        assert curve["test_loss"][i] == pytest.approx(result["loss"], rel=1e-6)  # evaluate: float32 logits
        assert curve["test_error"][i] == pytest.approx(1 - result["accuracy"], abs=1e-12)

    # Re-estimation replaces the interpolated statistics by those of the interpolated network.
    used.clear()  # now only eval-mode calls: re-estimation runs the layer in train mode first
    hook = model[4].register_forward_pre_hook(
        lambda m, inputs: None if m.training else used.append(m.running_mean.clone()))
    evaluate_path(model, a, b, {"test": data}, points=3, bn_examples=data.x)
    hook.remove()
    reference.load_state_dict(interpolate(a, b, 0.5))
    reestimate_batchnorm(reference, data.x, batch_size=2048)
    torch.testing.assert_close(used[1], reference[4].running_mean, rtol=0, atol=0)
    assert not torch.allclose(used[1], interpolate(a, b, 0.5)["4.running_mean"])


# ---------------------------------------------------------------- fast paths agree with the loop


@pytest.mark.parametrize("name, shape, widths", [("lenet_300_100", (1, 28, 28), ()), ("mlp", (1, 8, 8), (16,))])
@pytest.mark.parametrize("dtype, rtol, error_atol", [(torch.float64, 1e-12, 0.0), (torch.float32, 1e-5, 0.01)])
def test_mlp_shortcut_equals_the_plain_loop(name, shape, widths, dtype, rtol, error_atol):
    model = build_model(name, shape, 10, widths=widths, generator=seeded(0)).to(dtype)
    other = build_model(name, shape, 10, widths=widths, generator=seeded(1)).to(dtype)
    a, b = state(model), masked(other)
    assert (b["fc1.weight"] == 0).float().mean() > 0.5
    splits = {"train": split(shape, 150, classes=10, seed=5, dtype=dtype),
              "test": split(shape, 100, classes=10, seed=6, dtype=dtype)}
    plain = evaluate_path(model, a, b, splits, points=7, method="plain", batch_size=64)
    shortcut = evaluate_path(model, a, b, splits, points=7, method="mlp", batch_size=64)
    assert_curves_close(shortcut, plain, rtol=rtol, atol=0.0, error_atol=error_atol)
    assert_curves_close(evaluate_path(model, a, b, splits, points=7, batch_size=64), shortcut, rtol=0, atol=0)


@pytest.mark.parametrize("builder, shape, bn", [(small_mlp, (1, 8, 8), "reestimate"),
                                                (conv_bn, (3, 6, 6), "interpolate")])
def test_vmap_equals_the_plain_loop(builder, shape, bn):
    a, b = state(randomised(builder(), 0)), state(randomised(builder(), 1))
    model = randomised(builder(), 2)
    splits = {"train": split(shape, 50, seed=7), "test": split(shape, 30, seed=8)}
    points = fastpath.VMAP_POINTS + 3  # a full chunk of points and a partial one
    plain = evaluate_path(model, a, b, splits, points=points, bn=bn, method="plain", batch_size=32)
    stacked = evaluate_path(model, a, b, splits, points=points, bn=bn, method="vmap", batch_size=32)
    assert_curves_close(stacked, plain, rtol=1e-12, atol=1e-12)


def test_methods_that_cannot_apply_are_refused():
    model = randomised(conv_bn(), 0)
    s = state(model)
    splits = {"train": split((3, 6, 6), 10)}
    with pytest.raises(UserError, match="bn_examples"):
        evaluate_path(model, s, s, splits, points=3)
    with pytest.raises(UserError, match="Flatten"):
        evaluate_path(model, s, s, splits, points=3, method="mlp", bn="interpolate")
    with pytest.raises(UserError, match="cannot re-estimate"):
        evaluate_path(model, s, s, splits, points=3, method="vmap", bn_examples=splits["train"].x)
    with pytest.raises(UserError, match="did you mean 'vmap'"):
        evaluate_path(model, s, s, splits, points=3, method="vmapp", bn="interpolate")
    with pytest.raises(UserError, match="did you mean 'interpolate'"):
        evaluate_path(model, s, s, splits, points=3, bn="interpolated")


# ---------------------------------------------------------------- side effects, per-example barriers


@pytest.mark.parametrize("builder, method", [(conv_bn, "plain"), (small_mlp, "mlp"), (small_mlp, "vmap")])
def test_evaluate_path_restores_the_model(builder, method):
    model = randomised(builder(), 0).train()
    list(model.modules())[-1].eval()  # mixed modes come back as they were
    before = state(model)
    other = state(randomised(builder(), 1))
    shape = (3, 6, 6) if builder is conv_bn else (1, 8, 8)
    data = split(shape, 20)
    evaluate_path(model, before, other, {"train": data}, points=3, bn_examples=data.x, method=method)
    example_losses(model, other, data, bn_examples=data.x)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == [True] * (len(list(model.modules())) - 1) + [False]


@pytest.mark.parametrize("builder, shape", [(conv_bn, (3, 6, 6)), (small_mlp, (1, 8, 8))])
def test_midpoint_barriers_per_example_and_on_average(builder, shape):
    a, b = state(randomised(builder(), 0)), state(randomised(builder(), 1))
    model = randomised(builder(), 2)
    data, bn_examples = split(shape, 30, seed=9), split(shape, 40, seed=10).x
    found = midpoint_barriers(model, a, b, data, bn_examples=bn_examples)

    def direct(weights):  # a fresh copy, BN re-estimated, then one example at a time
        network = copy.deepcopy(model)
        network.load_state_dict(weights)
        reestimate_batchnorm(network, bn_examples, batch_size=2048)
        with torch.no_grad():
            return np.array([F.cross_entropy(network(data.x[i:i + 1]), data.y[i:i + 1]).item()
                             for i in range(len(data))])
    mid = {k: 0.5 * a[k] + 0.5 * b[k] if a[k].is_floating_point() else a[k] for k in a}
    expected = direct(mid) - (direct(a) + direct(b)) / 2
    np.testing.assert_allclose(found, expected, rtol=1e-10, atol=1e-12)
    assert found.dtype == np.float64 and found.shape == (30,)

    curve = evaluate_path(model, a, b, {"train": data}, points=3, bn_examples=bn_examples)
    loss = curve["train_loss"]
    assert found.mean() == pytest.approx(loss[1] - (loss[0] + loss[2]) / 2, rel=1e-12, abs=1e-14)
