import numpy as np
import pytest
import torch

from imp.pruning import magnitude_prune
from landscape.eigen import Spectrum
from landscape.prunelimit import (GRID, conservative_limit, kept_scale, magnitude_removal, predicted_limits,
                                  quadratic_limits, random_order, random_removal)


def test_magnitude_removal_is_what_magnitude_pruning_removes():
    rng = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(40, generator=rng), "b": torch.randn(6, 5, generator=rng)}
    mask = {"a": torch.rand(40, generator=rng) > 0.3, "b": torch.ones(6, 5, dtype=torch.bool)}
    for strategy, overrides in (("global", None), ("layerwise", None), ("global", {"b": 0.5})):
        removal = magnitude_removal(weights, mask, strategy, overrides)
        for i in (0, 137, 500, 731, 1000):
            pruned = magnitude_prune(weights, mask, float(GRID[i]), strategy, overrides)
            gone = {n: mask[n] & ~pruned[n] for n in mask}
            assert removal.count[i] == sum(int(g.sum()) for g in gone.values())
            assert removal.squares[i] == pytest.approx(sum(float((weights[n][gone[n]].double() ** 2).sum())
                                                           for n in mask))


def test_random_removal_expected_and_sampled():
    squares = np.arange(1.0, 11.0)
    expected = random_removal(squares)
    np.testing.assert_allclose(expected.squares[[0, 500, 1000]], [0.0, 27.5, 55.0])
    sampled = random_removal(squares, seed=3)
    order = random_order(10, 3)
    assert sampled.count[300] == 3 and sampled.squares[300] == squares[order[:3]].sum()
    assert sampled.squares[-1] == 55.0


def _neff(eigenvalues):
    return Spectrum(len(eigenvalues), np.asarray(eigenvalues, dtype=float)).neff


def test_prediction_solves_the_dimension_count():
    """Where the limit lands, the removed count has just used up the room left by N_eff."""
    eigenvalues = np.logspace(1, -4, 200)
    removal = random_removal(np.ones(150))  # D = 150 prunable, B = 50 fixed
    (limit,) = predicted_limits(removal, _neff(eigenvalues), 200, [0.05])
    i = int(round(limit * 1000))
    room = lambda j: 200 - np.sum(eigenvalues / (eigenvalues + 2 * 0.05 / removal.squares[j]))  # noqa: E731
    assert removal.count[i] <= room(i) and removal.count[i + 1] > room(i + 1)
    assert 0 < limit < 1


def test_flat_directions_allow_pruning_everything():
    removal = random_removal(np.ones(100))
    flat = _neff(np.zeros(100))
    assert predicted_limits(removal, flat, 100, [1e-3])[0] == 1.0
    assert quadratic_limits(removal, flat, 100, 0.0, [1e-3])[0] == 1.0
    assert conservative_limit(removal, 0.0, 1e-3) == 1.0


def test_kept_scale_inverts_the_effective_dimension():
    eigenvalues = np.logspace(0, -3, 50)
    neff = _neff(eigenvalues)
    scale = kept_scale(neff, np.array([10.0, 25.0, 49.0, 50.0]), 1.0)
    np.testing.assert_allclose(neff(scale[:3]), [10.0, 25.0, 49.0], rtol=1e-8)
    assert scale[3] == 0.0  # as many kept coordinates as the rank: nothing to climb


def _well(eigenvalues, prunable, seed):
    """A quadratic well 0.5 (w - w*)^T H (w - w*) with random orthogonal eigenvectors."""
    rng = np.random.default_rng(seed)
    n = len(eigenvalues)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * eigenvalues) @ q.T, rng.standard_normal(n), rng


def _reaches(h, solution, removed, eps):
    """Whether the subspace with ``removed`` coordinates zeroed reaches the eps sublevel set:
    the minimum over the kept coordinates, by least squares (exact for singular H)."""
    kept = np.setdiff1d(np.arange(len(solution)), removed)
    delta = -solution[removed]
    hkk, hkr = h[np.ix_(kept, kept)], h[np.ix_(kept, removed)]
    x = np.linalg.lstsq(hkk, -hkr @ delta, rcond=1e-12)[0]
    rise = 0.5 * (delta @ h[np.ix_(removed, removed)] @ delta + 2 * x @ hkr @ delta + x @ hkk @ x)
    return rise <= eps


def _crossing(h, solution, prunable, eps, rng, masks=20):
    """The fraction p where half of ``masks`` random masks still reach the sublevel set
    (linear interpolation on a 0.05 grid; 1 when more than half reach it everywhere)."""
    grid = np.arange(0.05, 1.0001, 0.05)
    reached = []
    for p in grid:
        count = int(round(p * prunable))
        reached.append(np.mean([_reaches(h, solution, rng.choice(prunable, count, replace=False), eps)
                                for _ in range(masks)]))
        if reached[-1] < 0.5:
            break
    if reached[-1] >= 0.5:
        return 1.0
    if len(reached) == 1:
        return grid[0]
    a, b = reached[-2], reached[-1]
    return grid[len(reached) - 2] + 0.05 * (a - 0.5) / (a - b)


@pytest.mark.parametrize("spectrum", ["power", "low rank"])
@pytest.mark.parametrize("fixed", [0, 40])
def test_quadratic_limit_finds_the_sublevel_set_of_an_exact_well(spectrum, fixed):
    """Ground truth: 20 random masks per p on a 200 + B dimensional well; the 50% crossing
    lies within 0.1 of the quadratic limit of random pruning at every eps."""
    prunable = 160
    n = prunable + fixed
    eigenvalues = (np.arange(1, n + 1) ** -1.5 if spectrum == "power"
                   else np.concatenate([np.logspace(1, -2, n // 3), np.zeros(n - n // 3)]))
    h, solution, rng = _well(eigenvalues, prunable, seed=1)
    removal = random_removal(solution[:prunable] ** 2)
    neff = _neff(eigenvalues)
    for eps in (0.01, 0.1, 1.0):
        (quadratic,) = quadratic_limits(removal, neff, n, eigenvalues.max(), [eps])
        truth = _crossing(h, solution, prunable, eps, rng)
        assert abs(quadratic - truth) <= 0.1, (eps, quadratic, truth)


def test_the_prediction_is_the_quadratic_limit_without_the_factor_d_over_r():
    """``r <= n - N_eff(2 eps / l^2)`` holds exactly when ``l^2 z' <= 2 eps``, z' solving
    N_eff(z') = n - r (the module docstring's comparison), at every p of the grid."""
    eigenvalues = np.logspace(1, -3, 120)
    neff = _neff(eigenvalues)
    removal = random_removal(np.random.default_rng(0).random(100))  # D = 100, B = 20
    eps = 0.02
    with np.errstate(divide="ignore"):
        z = np.where(removal.squares > 0, 2 * eps / removal.squares, np.inf)
    fits = removal.count <= 120 - neff(z)
    scale = kept_scale(neff, 120 - removal.count, eigenvalues.max())
    margin = np.abs(removal.squares * scale - 2 * eps) > 1e-6 * eps  # skip exact ties
    np.testing.assert_array_equal(fits[margin], (removal.squares * scale <= 2 * eps)[margin])
    assert fits.any() and not fits.all()
