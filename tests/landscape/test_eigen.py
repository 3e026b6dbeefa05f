import numpy as np
import pytest
import torch
from torch import nn

from landscape.curvature import GGNOperator
from landscape.eigen import Spectrum, deflated_spectrum, exact_spectrum, restricted_matrix
from landscape.hessian import HessianOperator, dense_hessian
from landscape.prunelimit import predicted_limits, random_removal


def _mlp_problem(seed=0, examples=1000):
    """A small MLP (1,450 active coordinates; about 350 weights of its first layer pruned)
    trained by full-batch gradient descent to a loss near 0.5 on a linear teacher's labels."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 40), nn.Tanh(), nn.Linear(40, 15), nn.Tanh(), nn.Linear(15, 5))
    x = torch.randn(examples, 20)
    y = (x @ torch.randn(20, 5)).argmax(dim=1)
    mask = {"0.weight": torch.rand(40, 20) > 0.44, "2.weight": torch.ones(15, 40, dtype=torch.bool)}
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
        with torch.no_grad():
            model[0].weight.mul_(mask["0.weight"])
    return model, x, y, mask


class Matrix:
    """A symmetric matrix as an operator."""

    def __init__(self, a):
        self.a = torch.as_tensor(a, dtype=torch.float64)
        self.dim = self.active = len(self.a)
        self.products = 0

    def matvec(self, v):
        self.products += 1
        return self.a @ v


def test_spectral_sums_of_a_known_matrix():
    rng = np.random.default_rng(0)
    eigenvalues = np.concatenate([np.logspace(2, -1, 20), rng.random(380) * 1e-2])
    q, _ = np.linalg.qr(rng.standard_normal((400, 400)))
    operator = Matrix((q * eigenvalues) @ q.T)
    exact = exact_spectrum(operator)
    np.testing.assert_allclose(exact.top, np.sort(eigenvalues)[::-1], atol=1e-10)
    deflated = deflated_spectrum(operator, 20, runs=10, steps=60, seed=1)
    z = np.array([1e-3, 1e-2, 1e-1, 1.0])
    truth = (eigenvalues[:, None] / (eigenvalues[:, None] + z)).sum(axis=0)
    np.testing.assert_allclose(deflated.neff(z), truth, atol=0.01 * 400)
    for value in z:  # the estimated error covers the actual one (within a factor 3)
        f = lambda lam, value=value: lam / (lam + value)  # noqa: E731
        assert abs(deflated.total(f) - truth[list(z).index(value)]) <= 3 * deflated.error(f) + 1e-9
    assert deflated.total(np.ones_like) == pytest.approx(400, rel=1e-9)  # sum of 1 counts every eigenvalue


def test_ggn_is_the_jacobian_sandwich_and_positive_semidefinite():
    model, x, y, mask = _mlp_problem(examples=60)
    model.double()
    x = x.double()
    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def logits(vector):
        pieces, start = {}, 0
        for name, p in model.named_parameters():
            pieces[name] = vector[start:start + p.numel()].view_as(p)
            start += p.numel()
        return torch.func.functional_call(model, pieces, (x,))

    jacobian = torch.autograd.functional.jacobian(logits, flat)  # (N, C, dim)
    s = torch.softmax(logits(flat), dim=1)
    h = torch.diag_embed(s) - s[:, :, None] * s[:, None, :]
    g = torch.einsum("nci,ncd,ndj->ij", jacobian, h, jacobian) / len(x)
    m = torch.cat([mask[n].reshape(-1).double() if n in mask else torch.ones(p.numel(), dtype=torch.float64)
                   for n, p in zip(names, model.parameters())])
    for batch in (1024, 70):
        operator = GGNOperator(model, x, y, mask, batch_size=batch)
        np.testing.assert_allclose(dense_hessian(operator), (m[:, None] * g * m[None]).numpy(), atol=1e-10)
    spectrum = exact_spectrum(GGNOperator(model, x, y, mask))
    assert spectrum.top.min() > -1e-10 * spectrum.top.max()
    assert spectrum.mass("negative") == 0.0
    assert spectrum.active == int(m.sum())


def test_production_estimator_matches_eigh():
    """The deflated Lanczos + quadrature path, forced on a 1,450-coordinate MLP, gives the
    prediction of torch.linalg.eigh's spectrum to within 0.02."""
    model, x, y, mask = _mlp_problem()
    operator = GGNOperator(model, x, y, mask)
    dense = torch.from_numpy(restricted_matrix(operator))
    eigenvalues = torch.linalg.eigvalsh(dense).numpy()
    truth = Spectrum(len(eigenvalues), eigenvalues)
    estimate = deflated_spectrum(operator, 100, runs=10, steps=100, seed=3)
    squares = torch.cat([p.detach()[mask[n]] for n, p in model.named_parameters() if n in mask]).double() ** 2
    removal = random_removal(squares.numpy())
    dimension = operator.active
    eps = [1e-3, 1e-2, 1e-1]
    expected = predicted_limits(removal, truth.neff, dimension, eps)
    assert np.all((0.02 < expected) & (expected < 0.98))  # predictions inside the range, not clipped ones
    np.testing.assert_allclose(predicted_limits(removal, estimate.neff, dimension, eps), expected, atol=0.02)


def test_hessian_negative_mass_is_the_exact_one():
    model, x, y, mask = _mlp_problem(seed=1)
    operator = HessianOperator(model, x, y, mask)
    spectrum = exact_spectrum(operator)
    eigenvalues = np.linalg.eigvalsh(restricted_matrix(HessianOperator(model, x, y, mask)))
    zeta = 1e-4 * np.abs(eigenvalues).max()
    assert spectrum.mass("negative") == np.mean(eigenvalues < -zeta) > 0
    assert spectrum.mass("zero") == np.mean(np.abs(eigenvalues) <= zeta)
    absolute = spectrum.mapped(np.abs)
    np.testing.assert_allclose(np.sort(absolute.top), np.sort(np.abs(eigenvalues)), atol=1e-8)
