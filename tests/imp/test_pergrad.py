"""Tests for imp.pergrad: every method agrees with the one-backward-per-example loop."""

import pytest
import torch
from torch import nn

from imp import pergrad
from imp.base.errors import UserError
from imp.models import build_model
from imp.pergrad import UnsupportedModel, conv_form_for, grad_norms, naive_grad_norms


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 20), nn.ReLU(), nn.Linear(20, 12), nn.ReLU(), nn.Linear(12, 5))


def conv_net() -> nn.Module:
    """Conv with and without bias, stride 2, 1x1, dilation, non-square kernel, BN (one with a large
    eps, so that leaving eps out would show), in-place ReLU, pooling."""
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
        nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8, eps=0.1), nn.ReLU(),
        nn.Conv2d(8, 10, 1), nn.ReLU(),
        nn.Conv2d(10, 10, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(10), nn.ReLU(),
        nn.Conv2d(10, 12, (3, 1), padding=(1, 0)), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12 * 2 * 2, 5),
    )


def bn_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 16), nn.BatchNorm1d(16, eps=0.1), nn.ReLU(), nn.Linear(16, 5))


def prepared(builder, dtype=torch.float64, shape=(3, 4, 4), seed=0) -> nn.Module:
    """A seeded model with random BN affine parameters and running statistics from a few
    train-mode batches (left in eval mode); torch's global RNG state is left unchanged."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        model = builder().to(dtype)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_()
        model.train()
        for _ in range(3):
            model(2 + 3 * torch.randn(16, *shape, dtype=dtype))
    return model.eval()


def batch(shape, n=10, classes=5, dtype=torch.float64, seed=1):
    g = seeded(seed)
    return torch.randn(n, *shape, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def max_relative_error(norms, reference) -> float:
    return ((norms - reference).abs() / reference).max().item()


# --- agreement with the naive loop -------------------------------------------------------


@pytest.mark.parametrize("method", ["auto", "ghost", "vmap"])
def test_mlp_matches_naive(method):
    model, (x, y) = prepared(mlp), batch((3, 4, 4))
    norms = grad_norms(model, x, y, method=method)
    assert norms.dtype == torch.float64 and norms.shape == (10,)
    assert max_relative_error(norms, naive_grad_norms(model, x, y)) < 1e-5


@pytest.mark.parametrize("conv_form", ["auto", "materialise", "gram"])
def test_conv_net_with_batchnorm_matches_naive_in_each_conv_form(conv_form):
    model, (x, y) = prepared(conv_net, shape=(3, 8, 8)), batch((3, 8, 8))
    norms = grad_norms(model, x, y, method="ghost", conv_form=conv_form)
    assert max_relative_error(norms, naive_grad_norms(model, x, y)) < 1e-5


def test_vmap_matches_naive_on_the_conv_net():
    model, (x, y) = prepared(conv_net, shape=(3, 8, 8)), batch((3, 8, 8))
    assert max_relative_error(grad_norms(model, x, y, method="vmap"), naive_grad_norms(model, x, y)) < 1e-5


@pytest.mark.parametrize("builder, conv_form", [(conv_net, "materialise"), (conv_net, "gram"), (bn_mlp, "auto")])
def test_each_layer_alone_matches_naive(builder, conv_form):
    # One layer trainable at a time: BatchNorm's share of the whole norm is ~1e-4 here, so an
    # error in it would hide under a whole-model tolerance.
    shape = (3, 8, 8) if builder is conv_net else (3, 4, 4)
    model, (x, y) = prepared(builder, shape=shape), batch(shape)
    layers = [layer for layer in model if list(layer.parameters())]
    assert {type(layer) for layer in layers} >= {nn.Linear, nn.Conv2d if builder is conv_net else nn.BatchNorm1d}
    for layer in layers:
        model.requires_grad_(False)
        layer.requires_grad_(True)
        norms = grad_norms(model, x, y, method="ghost", conv_form=conv_form)
        assert max_relative_error(norms, naive_grad_norms(model, x, y)) < 1e-5, layer


@pytest.mark.parametrize("conv_form", ["materialise", "gram"])
def test_float32_agrees_to_float32_accuracy(conv_form):
    # Both sides round in float32 (unit roundoff 6e-8) and sum in different orders over up to
    # a few hundred terms per gradient entry and per norm; measured differences are ~1e-7, so
    # 1e-4 leaves room for other BLAS kernels while still catching any wrong term (>> 1e-3).
    model, (x, y) = prepared(conv_net, torch.float32, (3, 8, 8)), batch((3, 8, 8), dtype=torch.float32)
    norms = grad_norms(model, x, y, method="ghost", conv_form=conv_form)
    assert max_relative_error(norms, naive_grad_norms(model, x, y)) < 1e-4


def test_toolkit_models_take_the_ghost_path_and_match_naive():
    model = prepared(lambda: build_model("mlp", (1, 8, 8), 10, widths=(16,)), shape=(1, 8, 8))
    x, y = batch((1, 8, 8), classes=10)
    assert max_relative_error(grad_norms(model, x, y, method="ghost"), naive_grad_norms(model, x, y)) < 1e-5
    model = prepared(lambda: build_model("resnet20", (3, 8, 8), 10, width=4), shape=(3, 8, 8))
    x, y = batch((3, 8, 8), n=6, classes=10)
    reference = naive_grad_norms(model, x, y)
    for conv_form in ("auto", "materialise", "gram"):
        norms = grad_norms(model, x, y, method="ghost", conv_form=conv_form)
        assert max_relative_error(norms, reference) < 1e-5


def test_only_trainable_parameters_count():
    model, (x, y) = prepared(conv_net, shape=(3, 8, 8)), batch((3, 8, 8))
    model[0].weight.requires_grad_(False)  # conv keeps only its bias
    model[-1].bias.requires_grad_(False)
    model[1].requires_grad_(False)  # a whole BN layer frozen
    reference = naive_grad_norms(model, x, y)
    assert max_relative_error(grad_norms(model, x, y, method="ghost"), reference) < 1e-5
    assert (reference < naive_grad_norms(prepared(conv_net, shape=(3, 8, 8)), x, y)).all()


@pytest.mark.parametrize("conv_form", ["materialise", "gram"])
def test_chunks_and_conv_slices_give_the_same_answer(conv_form, monkeypatch):
    model, (x, y) = prepared(conv_net, shape=(3, 8, 8)), batch((3, 8, 8))
    whole = grad_norms(model, x, y, method="ghost", conv_form=conv_form, batch_size=256)
    assert torch.allclose(grad_norms(model, x, y, method="ghost", conv_form=conv_form, batch_size=3), whole,
                          rtol=1e-12, atol=0)
    monkeypatch.setattr(pergrad, "_SLICE_ELEMENTS", 1)  # every conv layer one example at a time
    assert torch.allclose(grad_norms(model, x, y, method="ghost", conv_form=conv_form), whole, rtol=1e-12, atol=0)
    vmap_whole = grad_norms(model, x, y, method="vmap", batch_size=256)
    assert torch.allclose(grad_norms(model, x, y, method="vmap", batch_size=4), vmap_whole, rtol=1e-12, atol=0)


# --- no side effects ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["auto", "naive", "vmap"])
def test_leaves_weights_buffers_grads_and_modes_unchanged(method):
    model, (x, y) = prepared(conv_net, shape=(3, 8, 8)), batch((3, 8, 8))
    model.train()
    model[4].eval()  # a mixed state, restored module by module
    model[0].weight.grad = torch.ones_like(model[0].weight)
    state = {name: t.clone() for name, t in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    grad_norms(model, x, y, method=method)
    assert all(torch.equal(model.state_dict()[name], t) for name, t in state.items())
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "0.weight")


def test_eval_mode_is_used_even_when_the_model_is_training():
    model, (x, y) = prepared(conv_net, shape=(3, 8, 8)), batch((3, 8, 8))
    expected = naive_grad_norms(model, x, y)  # model is in eval mode here
    model.train()
    assert max_relative_error(grad_norms(model, x, y), expected) < 1e-5


# --- fallback for what the ghost path does not cover -------------------------------------


class Scaled(nn.Module):
    """A custom module with its own parameter, then a Linear."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 48))
        self.fc = nn.Linear(48, 5)

    def forward(self, x):
        return self.fc(x.flatten(1) * self.scale)


class Embedded(nn.Module):
    """An embedding of the (rounded) inputs, mixing long indices into a float model."""

    def __init__(self):
        super().__init__()
        self.embedding, self.fc = nn.Embedding(7, 3), nn.Linear(48 * 3, 5)

    def forward(self, x):
        return self.fc(self.embedding(x.flatten(1).abs().long().clamp(max=6)).flatten(1))


def module_called_twice():
    shared = nn.Linear(12, 12)
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 12), nn.ReLU(), shared, nn.ReLU(), shared, nn.Linear(12, 5))


def weight_tied_across_modules():
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                          nn.Linear(12, 12), nn.Linear(12, 5))
    model[5].weight = model[3].weight
    return model


UNSUPPORTED = {
    "layer_norm": lambda: nn.Sequential(nn.Flatten(), nn.Linear(48, 8), nn.LayerNorm(8), nn.Linear(8, 5)),
    "embedding": Embedded,
    "custom_parameter": Scaled,
    "grouped_conv": lambda: nn.Sequential(nn.Conv2d(3, 6, 3), nn.Conv2d(6, 6, 1, groups=2), nn.Flatten(),
                                          nn.Linear(24, 5)),
    "linear_on_3d_input": lambda: nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Flatten(), nn.Linear(72, 5)),
    "module_called_twice": module_called_twice,
    "weight_tied_across_modules": weight_tied_across_modules,
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_models_fall_back_to_vmap_and_match_naive(name):
    model, (x, y) = prepared(UNSUPPORTED[name]), batch((3, 4, 4))
    reference = naive_grad_norms(model, x, y)
    with pytest.raises(UnsupportedModel):
        grad_norms(model, x, y, method="ghost")
    assert max_relative_error(grad_norms(model, x, y), reference) < 1e-10
    # The fallback leaves the model intact: parameters stay Parameters, the answer is unchanged.
    assert all(isinstance(p, nn.Parameter) for m in model.modules() for p in m._parameters.values())
    assert torch.equal(naive_grad_norms(model, x, y), reference)


def test_batchnorm_without_running_statistics_is_not_ghosted():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(),
                          nn.Linear(16, 5))
    with pytest.raises(UnsupportedModel, match="running statistics"):
        grad_norms(model, *batch((3, 4, 4), dtype=torch.float32), method="ghost")


# --- choices and errors ------------------------------------------------------------------


def test_conv_form_follows_the_multiply_add_count():
    # 3->16 3x3 on 32x32: materialise 16*1024*27 = 442k vs Gram 1024^2*43 = 45M.
    assert conv_form_for(nn.Conv2d(3, 16, 3), 32 * 32) == "materialise"
    # 64->64 3x3 on 2x2: materialise 64*4*576 = 147k vs Gram 16*640 = 10k.
    assert conv_form_for(nn.Conv2d(64, 64, 3), 2 * 2) == "gram"
    # 1x1, F = O = 8: 8*P*8 vs P^2*16, equal at P = 4; ties materialise.
    assert [conv_form_for(nn.Conv2d(8, 8, 1), p) for p in (3, 4, 5)] == ["gram", "materialise", "materialise"]


def test_unknown_method_or_form_is_a_user_error():
    model, (x, y) = mlp(), batch((3, 4, 4), dtype=torch.float32)
    with pytest.raises(UserError, match="did you mean 'vmap'"):
        grad_norms(model, x, y, method="vmapp")
    with pytest.raises(UserError, match="conv_form"):
        grad_norms(model, x, y, conv_form="im2col")
