"""Tests for landscape.hessian and landscape.lanczos: explicit matrices with chosen spectra,
dense Hessians of tiny models (autograd and eigh), and PyHessian 0.1 as the reference."""

import copy
import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from imp.base.config import load_config
from imp.data import load_dataset
from imp.base.errors import UserError
from imp.models import build_model
from imp.pruning import apply_mask, full_mask, magnitude_prune, prunable_tensors
from landscape.hessian import HessianOperator, dense_hessian, hutchinson_trace, lanczos, slq_density
from landscape.lanczos import random_entries


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class MatrixOperator:
    """An explicit symmetric matrix as an operator; with ``keep`` (bool (dim,)) it acts as
    ``m * A (m * v)`` and draws its random vectors on the kept coordinates, like a mask."""

    def __init__(self, matrix: np.ndarray, keep: np.ndarray | None = None) -> None:
        self.matrix = torch.from_numpy(matrix)
        self.dim = len(matrix)
        self.m = torch.ones(self.dim, dtype=torch.float64) if keep is None else torch.from_numpy(keep).double()
        self.active = int(self.m.sum())
        self.products = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return self.m * (self.matrix @ (self.m * v))

    def random_vector(self, generator: torch.Generator, kind: str = "rademacher") -> torch.Tensor:
        return random_entries(self.dim, generator, kind) * self.m


def with_spectrum(eigenvalues: np.ndarray, seed: int = 0) -> np.ndarray:
    """``Q diag(eigenvalues) Q^T`` for a random orthogonal Q."""
    n = len(eigenvalues)  # torch's QR: numpy's BLAS threads crawl on a busy machine
    q = torch.linalg.qr(torch.randn(n, n, generator=seeded(seed), dtype=torch.float64))[0].numpy()
    return (q * eigenvalues) @ q.T


# Five large, well-separated eigenvalues over a bulk that straddles zero.
SPECTRUM = np.concatenate([[50.0, 30.0, 20.0, 12.0, 8.0], np.linspace(-2.0, 3.0, 115)])


# --- explicit matrices ---------------------------------------------------------------------


def test_lanczos_finds_a_known_spectrum_with_true_residuals():
    operator = MatrixOperator(with_spectrum(SPECTRUM))
    result = lanczos(operator, 5, tol=1e-8, vectors=True)
    np.testing.assert_allclose(result["eigenvalues"], SPECTRUM[:5], rtol=1e-6)
    assert result["products"] == result["iterations"] == operator.products < 60
    assert np.all(result["residuals"] <= 1e-8)
    a = operator.matrix.numpy()
    for value, vector, reported in zip(result["eigenvalues"], result["eigenvectors"], result["residuals"]):
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-12)
        true = np.linalg.norm(a @ vector - value * vector) / abs(value)
        assert true == pytest.approx(reported, rel=1e-3, abs=1e-12)


def test_lanczos_orders_largest_algebraic_and_stops_on_the_tolerance():
    # The largest-magnitude eigenvalues are negative; power iteration would find -50 first.
    spectrum = np.concatenate([[-50.0, -30.0, 10.0, 6.0, 4.0], np.linspace(-2.0, 2.0, 115)])
    result = lanczos(MatrixOperator(with_spectrum(spectrum)), 3, tol=1e-8)
    np.testing.assert_allclose(result["eigenvalues"], [10.0, 6.0, 4.0], rtol=1e-6)
    coarse = lanczos(MatrixOperator(with_spectrum(SPECTRUM)), 5, tol=1e-2)
    fine = lanczos(MatrixOperator(with_spectrum(SPECTRUM)), 5, tol=1e-8)
    assert coarse["products"] < fine["products"]
    assert np.all(coarse["residuals"] <= 1e-2)
    np.testing.assert_allclose(coarse["eigenvalues"], SPECTRUM[:5], rtol=1e-3)  # ~ tol^2


def test_lanczos_is_seeded_and_leaves_the_global_rng_alone():
    operator = MatrixOperator(with_spectrum(SPECTRUM))
    state = torch.get_rng_state()
    first, again = lanczos(operator, 3, seed=4), lanczos(operator, 3, seed=4)
    other = lanczos(operator, 3, seed=5, tol=1e-3)
    assert torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(first["eigenvalues"], again["eigenvalues"])
    assert not np.array_equal(first["eigenvalues"], other["eigenvalues"])


def test_lanczos_restarts_on_an_invariant_subspace_and_handles_k_above_the_active_dimension():
    repeated = MatrixOperator(with_spectrum(np.array([3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0, -1.0])))
    result = lanczos(repeated, 4, tol=1e-10)  # the first Krylov space has dimension 3
    np.testing.assert_allclose(result["eigenvalues"], [3.0, 3.0, 3.0, 1.0], atol=1e-10)
    keep = np.array([True, False, True, True, False, False, True, False])
    a = with_spectrum(np.linspace(-3, 4, 8), seed=1)
    masked = MatrixOperator(a, keep)
    result = lanczos(masked, 6, tol=1e-10, vectors=True)  # only 4 active coordinates
    np.testing.assert_allclose(result["eigenvalues"], np.linalg.eigvalsh(a[np.ix_(keep, keep)])[::-1], atol=1e-10)
    assert result["iterations"] == 4 and result["eigenvectors"].shape == (4, 8)
    assert np.all(result["eigenvectors"][:, ~keep] == 0)


def test_hutchinson_trace_is_within_its_standard_error_and_unbiased():
    operator = MatrixOperator(with_spectrum(SPECTRUM))
    a = operator.matrix.numpy()
    variance = 2 * (np.sum(a ** 2) - np.sum(np.diag(a) ** 2))  # of one Rademacher sample
    result = hutchinson_trace(operator, 400, seed=1)
    assert result["samples"] == 400 == operator.products
    assert abs(result["trace"] - SPECTRUM.sum()) <= 4 * result["std_error"]
    assert result["std_error"] == pytest.approx(np.sqrt(variance / 400), rel=0.25)
    small = MatrixOperator(with_spectrum(np.linspace(-1.0, 5.0, 30), seed=2))
    a = small.matrix.numpy()
    many = hutchinson_trace(small, 20_000, seed=3)
    bound = 5 * np.sqrt(2 * (np.sum(a ** 2) - np.sum(np.diag(a) ** 2)) / 20_000)
    assert abs(many["trace"] - np.trace(a)) <= bound
    diagonal = hutchinson_trace(MatrixOperator(np.diag(SPECTRUM)), 3)  # v^T D v = tr D for every v
    assert diagonal["trace"] == pytest.approx(SPECTRUM.sum(), rel=1e-12) and diagonal["std_error"] < 1e-12


def test_slq_weights_sum_to_one_and_the_mean_matches_the_trace():
    operator = MatrixOperator(with_spectrum(SPECTRUM))
    density = slq_density(operator, runs=40, steps=20, seed=2)
    assert density["nodes"].shape == density["weights"].shape == (40, 20)
    np.testing.assert_allclose(density["weights"].sum(axis=1), 1.0, atol=1e-12)  # f(x) = 1
    assert np.all(density["weights"] >= 0)
    per_run = (density["weights"] * density["nodes"]).sum(axis=1)  # f(x) = x: v^T A v
    a = operator.matrix.numpy()
    spread = np.sqrt(2 * (np.sum(a ** 2) - np.sum(np.diag(a) ** 2)) / 40) / len(a)
    assert abs(per_run.mean() - SPECTRUM.mean()) <= 4 * spread
    assert density["nodes"].max() == pytest.approx(50.0, rel=1e-8)  # extreme Ritz values converge first


def test_slq_moments_are_exact_for_a_diagonal_matrix_and_exclude_masked_coordinates():
    # z^T f(D) z = sum_i f(d_i) for every Rademacher z, so each run's quadrature is the
    # exact normalised trace for polynomials of degree < 2 steps.
    values = np.linspace(-1.0, 2.0, 40) ** 3
    keep = np.arange(40) % 3 != 0
    for operator, spectrum in ((MatrixOperator(np.diag(values)), values),
                               (MatrixOperator(np.diag(values), keep), values[keep])):
        density = slq_density(operator, runs=3, steps=6, seed=1)
        for power in range(12):
            quadrature = (density["weights"] * density["nodes"] ** power).sum(axis=1)
            np.testing.assert_allclose(quadrature, np.mean(spectrum ** power), rtol=1e-8, atol=1e-12)


def test_slq_pads_an_exhausted_krylov_space():
    operator = MatrixOperator(np.diag([1.0, 2.0, 3.0, 4.0]))
    density = slq_density(operator, runs=2, steps=7)
    np.testing.assert_allclose(np.sort(density["nodes"][:, :4], axis=1), [[1, 2, 3, 4]] * 2, atol=1e-10)
    assert np.all(density["nodes"][:, 4:] == 0) and np.all(density["weights"][:, 4:] == 0)
    np.testing.assert_allclose(density["weights"][:, :4], 0.25, atol=1e-10)


# --- tiny models -----------------------------------------------------------------------------


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 14), nn.Tanh(), nn.Linear(14, 5)).double()  # 201 params


def tiny_conv() -> nn.Module:
    """Conv, BatchNorm2d with non-trivial running statistics, ReLU, Linear: 207 params."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32, 5)).double()
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.copy_(torch.randn(2, generator=seeded(2)) * 0.3)
        bn.running_var.copy_(0.5 + torch.rand(2, generator=seeded(3)))
        bn.weight.copy_(1 + 0.2 * torch.randn(2, generator=seeded(4)))
        bn.bias.normal_(0, 0.2, generator=seeded(5))
    return model


def examples(shape, count=40, classes=5, seed=0):
    g = seeded(seed)
    x = torch.randn(count, *shape, generator=g, dtype=torch.float64)
    return x, torch.randint(0, classes, (count,), generator=g)


def reference_hessian(model: nn.Module, x, y, bn: str = "eval") -> np.ndarray:
    """torch.autograd.functional.hessian (double backward) of the mean cross-entropy as a
    function of all parameters flattened in named_parameters() order, on a copy of the model."""
    model = copy.deepcopy(model).eval()
    if bn == "train":
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.train()
    named = list(model.named_parameters())
    sizes = [p.numel() for _, p in named]

    def loss(flat):
        params = {name: piece.view_as(p) for (name, p), piece in zip(named, flat.split(sizes))}
        return F.cross_entropy(torch.func.functional_call(model, params, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for _, p in named])
    return torch.autograd.functional.hessian(loss, flat).numpy()


@functools.cache
def reference(build, shape: tuple, bn: str = "eval") -> np.ndarray:
    """:func:`reference_hessian` of ``build()`` on ``examples(shape)``, computed once."""
    return reference_hessian(build(), *examples(shape), bn)


def random_mask(model: nn.Module, density: float, seed: int) -> dict:
    g = seeded(seed)
    return {name: torch.rand(p.shape, generator=g) < density
            for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1}


def test_hvp_equals_the_autograd_hessian_and_multi_batch_equals_single_batch():
    model, (x, y) = tiny_mlp(), examples((8,))
    h = reference(tiny_mlp, (8,))
    operator = HessianOperator(model, x, y)
    assert operator.dim == operator.active == 201 == len(h)
    v = torch.randn(operator.dim, generator=seeded(9), dtype=torch.float64)
    np.testing.assert_allclose(operator.matvec(v).numpy(), h @ v.numpy(), atol=1e-12)
    assert operator.products == 1
    batched = HessianOperator(model, x, y, batch_size=7)  # 6 batches, the last of 5
    np.testing.assert_allclose(batched.matvec(v).numpy(), operator.matvec(v).numpy(), atol=1e-12)
    np.testing.assert_allclose(dense_hessian(operator), h, atol=1e-12)


@pytest.mark.parametrize("build, shape", [(tiny_mlp, (8,)), (tiny_conv, (2, 4, 4))])
def test_top_eigenvalues_match_a_dense_eigendecomposition(build, shape):
    model, (x, y) = build(), examples(shape)
    operator = HessianOperator(model, x, y)
    exact = np.linalg.eigvalsh(reference(build, shape))[::-1]
    result = lanczos(operator, 5, tol=1e-6)
    np.testing.assert_allclose(result["eigenvalues"], exact[:5], rtol=1e-4)
    assert result["products"] < operator.dim
    np.testing.assert_allclose(np.linalg.eigvalsh(dense_hessian(operator)), np.sort(exact), atol=1e-10)


@pytest.mark.parametrize("build, shape", [(tiny_mlp, (8,)), (tiny_conv, (2, 4, 4))])
def test_a_masked_operator_is_the_restricted_hessian_plus_zeros(build, shape):
    model, (x, y) = build(), examples(shape)
    mask = random_mask(model, 0.5, seed=3)
    operator = HessianOperator(model, x, y, mask)
    m = torch.cat([mask[n].reshape(-1) if n in mask else torch.ones(p.numel(), dtype=torch.bool)
                   for n, p in model.named_parameters()]).numpy()
    assert operator.active == m.sum() < operator.dim
    h = reference(build, shape)
    dense = dense_hessian(operator)
    np.testing.assert_allclose(dense, h * np.outer(m, m), atol=1e-12)
    restricted = np.linalg.eigvalsh(h[np.ix_(m, m)])
    zeros = np.zeros(operator.dim - operator.active)
    np.testing.assert_allclose(np.linalg.eigvalsh(dense), np.sort(np.concatenate([restricted, zeros])), atol=1e-10)
    result = lanczos(operator, 4, tol=1e-6, vectors=True)
    np.testing.assert_allclose(result["eigenvalues"], restricted[::-1][:4], rtol=1e-4)
    assert np.all(result["eigenvectors"][:, ~m] == 0)
    assert np.all(operator.random_vector(seeded(0)).numpy()[~m] == 0)


def test_slq_quadrature_of_a_masked_hessian_is_that_of_its_start_vectors():
    model, (x, y) = tiny_mlp(), examples((8,))
    operator = HessianOperator(model, x, y, random_mask(model, 0.6, seed=1))
    density = slq_density(operator, runs=3, steps=8, seed=5)
    g = seeded(5)  # the documented draws: run r starts from the r-th random_vector
    for r in range(3):
        v = operator.random_vector(g, "rademacher")
        v = v / v.norm()
        hv = operator.matvec(v)
        assert (density["weights"][r] * density["nodes"][r]).sum() == pytest.approx(float(v @ hv), rel=1e-9)
        assert (density["weights"][r] * density["nodes"][r] ** 2).sum() == pytest.approx(float(hv @ hv), rel=1e-9)
    # Hutchinson draws the same vectors, and v^T H v = (z^T H z) / active for v = z / ||z||.
    trace = hutchinson_trace(operator, 3, seed=5)
    quadrature = (density["weights"] * density["nodes"]).sum(axis=1)
    assert trace["trace"] == pytest.approx(operator.active * quadrature.mean(), rel=1e-9)


def test_batchnorm_mode_changes_the_hessian_and_each_matches_its_dense_reference():
    model, (x, y) = tiny_conv(), examples((2, 4, 4))
    dense = {bn: dense_hessian(HessianOperator(model, x, y, bn=bn)) for bn in ("eval", "train")}
    for bn, h in dense.items():
        np.testing.assert_allclose(h, reference(tiny_conv, (2, 4, 4), bn), atol=1e-10)
    top = {bn: np.linalg.eigvalsh(h)[-1] for bn, h in dense.items()}
    assert abs(top["train"] - top["eval"]) > 0.05 * abs(top["eval"])
    result = lanczos(HessianOperator(model, x, y, bn="train"), 2, tol=1e-6)
    assert result["eigenvalues"][0] == pytest.approx(top["train"], rel=1e-4)


def test_no_side_effects_on_parameters_gradients_buffers_or_modes():
    model, (x, y) = tiny_conv(), examples((2, 4, 4))
    model.train()
    model[3].eval()  # mixed flags must come back as they were
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=seeded(0), dtype=p.dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [p.grad.clone() for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    mask = random_mask(model, 0.5, seed=0)
    for bn in ("eval", "train"):
        for batch_size in (1024, 16):
            operator = HessianOperator(model, x, y, mask, bn=bn, batch_size=batch_size)
            lanczos(operator, 2, max_iter=10)
            hutchinson_trace(operator, 2)
            slq_density(operator, runs=1, steps=3)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # incl. running stats
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert [m.training for m in model.modules()] == modes


def test_bad_arguments_are_errors_that_say_what_is_wrong():
    model, (x, y) = tiny_mlp(), examples((8,))
    with pytest.raises(UserError, match="did you mean 'eval'"):
        HessianOperator(model, x, y, bn="evl")
    with pytest.raises(UserError, match="'2.weight'"):
        HessianOperator(model, x, y, {"2.weight": torch.ones(5, 14, dtype=torch.bool)})
    with pytest.raises(UserError, match="shape"):
        HessianOperator(model, x, y, {"1.weight": torch.ones(14, 9, dtype=torch.bool)})
    with pytest.raises(UserError, match="max_iter"):
        lanczos(HessianOperator(model, x, y), 5, max_iter=3)
    with pytest.raises(UserError, match="products"):
        dense_hessian(HessianOperator(model, x, y), limit=100)


# --- PyHessian 0.1 as the reference ------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An MLP (64-32-16-10, 2,778 params, float32) after 200 SGD steps on sklearn's digits,
    and 512 of its training examples."""
    data = load_dataset(load_config().data, tmp_path_factory.mktemp("data"))
    model = build_model("mlp", (1, 8, 8), 10, widths=(32, 16), generator=seeded(0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = seeded(1)
    for _ in range(200):
        batch = torch.randint(0, len(data.train), (128,), generator=g)
        optimizer.zero_grad()
        F.cross_entropy(model(data.train.x[batch]), data.train.y[batch]).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    weights = dict(model.named_parameters())
    mask = magnitude_prune(weights, full_mask(weights, prunable_tensors(model)), 0.8)
    return model, data.train.x[:512], data.train.y[:512], mask


def pyhessian_of(model: nn.Module, x, y):
    """PyHessian's ``hessian`` object, built the careful way (DESIGN §4): on the CPU, from
    a clean ``.grad``, with its create_graph warning silenced."""
    import pyhessian

    for p in model.parameters():
        p.grad = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pyhessian.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False)


def pyhessian_top(model: nn.Module, x, y) -> float:
    """PyHessian's top eigenvalue (power iteration, seeded, tight tolerance), undoing its side
    effects: the seed does not leak, ``.grad`` is cleared, train/eval flags are restored."""
    modes = [(m, m.training) for m in model.modules()]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        values, _ = pyhessian_of(model, x, y).eigenvalues(top_n=1, maxIter=1000, tol=1e-6)
    for p in model.parameters():
        p.grad = None
    for module, training in modes:
        module.training = training
    return values[0]


def reparametrised(model: nn.Module, mask: dict) -> nn.Module:
    """A copy where each masked weight is ``weight_orig * mask`` (torch.nn.utils.prune), so the
    trainable parameters are ``weight_orig`` and the Hessian w.r.t. them is ``m H m``."""
    copied = copy.deepcopy(model)
    modules = dict(copied.named_modules())
    for name, keep in mask.items():
        prune.custom_from_mask(modules[name.rsplit(".", 1)[0]], "weight", keep)
    return copied


def test_top_eigenvalue_matches_pyhessian_on_a_trained_network(trained):
    model, x, y, _ = trained
    model.train()
    ours = lanczos(HessianOperator(model, x, y), 1, tol=1e-6)["eigenvalues"][0]
    theirs = pyhessian_top(model, x, y)
    assert model.training and all(p.grad is None for p in model.parameters())
    assert ours > 1.0 and theirs == pytest.approx(ours, rel=0.01)


def test_masked_operator_is_what_pyhessian_sees_through_prune_reparametrisation(trained):
    import pyhessian.utils

    model, x, y, mask = trained
    pruned = copy.deepcopy(model)
    apply_mask(pruned, mask)
    operator = HessianOperator(pruned, x, y, mask)
    replica = reparametrised(pruned, mask)
    # The same product: PyHessian's HVP w.r.t. (bias, weight_orig) is ours, m H (m v).
    v = torch.randn(operator.dim, generator=seeded(3), dtype=torch.float64)
    sizes = [p.numel() for p in pruned.parameters()]
    ours_v = dict(zip([n for n, _ in pruned.named_parameters()], v.split(sizes)))
    theirs = pyhessian_of(replica, x, y)
    names = [n.replace("weight_orig", "weight") for n, _ in replica.named_parameters()]
    hv = pyhessian.utils.hessian_vector_product(
        theirs.gradsH, theirs.params, [ours_v[n].view_as(p).float() for n, p in zip(names, theirs.params)])
    hv = dict(zip(names, hv))
    expected = torch.cat([hv[n].reshape(-1).double() for n, _ in pruned.named_parameters()])
    product = operator.matvec(v)
    assert torch.linalg.vector_norm(product - expected) <= 1e-4 * torch.linalg.vector_norm(expected)
    # And the same top eigenvalue.
    ours = lanczos(operator, 1, tol=1e-6)["eigenvalues"][0]
    assert pyhessian_top(reparametrised(pruned, mask), x, y) == pytest.approx(ours, rel=0.01)


def test_pyhessian_on_merely_zeroed_weights_measures_the_full_space_hessian(trained):
    model, x, y, mask = trained
    pruned = copy.deepcopy(model)
    apply_mask(pruned, mask)
    restricted = lanczos(HessianOperator(pruned, x, y, mask), 1, tol=1e-6)["eigenvalues"][0]
    full = lanczos(HessianOperator(pruned, x, y), 1, tol=1e-6)["eigenvalues"][0]
    zeroed = pyhessian_top(pruned, x, y)
    assert zeroed == pytest.approx(full, rel=0.01)
    assert abs(zeroed - restricted) > 0.05 * restricted  # DESIGN: 2.83 vs 1.58 on a pruned LeNet
