"""The largest fraction of weights prunable in one iteration, predicted from the curvature.

This is a *reconstruction* of the theory of Paul et al. (2023), "Unmasking the lottery
ticket hypothesis: what's encoded in a winning ticket's mask?" (ICLR 2023), which builds
on Larsen et al. (2022), "How many degrees of freedom do we need to train deep
networks: a loss landscape perspective" (ICLR 2022); it is not their code.

Setting. At a level-L solution w there are D_L kept prunable weights and B trainable
coordinates that are never pruned (biases, excluded tensors). Pruning rule R
(:data:`RULES`) removes a fraction p of the D_L weights, which moves the network by the
*projection length* ``l_R(p)``: the norm of the weights it sets to zero.

- magnitude: the ``round(p D_L)`` smallest-magnitude kept weights, in the run's strategy
  and allocation (global, uniform, ERK or LAMP: :func:`imp.pruning.magnitude_prune`): ``l^2`` is their sum of squares;
- random (expected): a uniformly random subset of ``round(p D_L)`` kept weights, for
  which ``E l^2 = (round(p D_L) / D_L) sum_i w_i^2`` exactly (:func:`random_removal`);
- random (sampled): one such subset, drawn as a seeded random order of the kept weights
  (:func:`random_order`; the prune check's random masks are drawn the same way).

:class:`Removal` holds, on the grid :data:`GRID` of 1,001 fractions, what a rule removes:
its count r(p) (``round(p D_L)``; per group with the run's strategy and layer overrides)
and ``l_R(p)^2``.

Prediction. Near w the training loss is the quadratic ``(1/2) d^T G d`` with curvature
G (the Gauss-Newton matrix by default) restricted to the ``D_L + B`` kept coordinates,
and the sublevel set at allowed loss rise ``eps`` is an ellipsoid. Pruning confines the
network to the affine subspace of the ``(D_L + B) - p D_L`` coordinates it keeps,
displaced by ``l_R(p)`` from w. Following Larsen et al.'s analysis of when a random
affine subspace reaches a sublevel set, the subspace reaches it when its dimension is at
least the number of directions along which a move of length l leaves the set: the
effective dimension

    N_eff(z) = sum_i lambda_i / (lambda_i + z),   z = z(p) = 2 eps / l_R(p)^2,

over the curvature's eigenvalues on the kept coordinates. The predicted limit is the
largest p with

    r(p) = round(p D_L)  <=  (D_L + B) - N_eff(z(p))            (:func:`predicted_limits`)

resolved on :data:`GRID`: the left side rises with p and the right side falls (l grows,
so z falls and N_eff grows), so the set of such p is an interval [0, p*], and p* is the
last grid fraction before the first one that fails.

The earlier form of this module solved the fixed point
``p = (1/D') sum_i 1 / (1 + lambda_i l(p)^2 / (2 eps))`` with D' the kept prunable
weights and the sum over every active coordinate. Since ``1 / (1 + lambda l^2 / 2 eps) =
z / (lambda + z) = 1 - lambda / (lambda + z)``, its right side is
``((D_L + B) - N_eff(z)) / D'``: the same condition, but with the B never-pruned
coordinates counted as prunable room in the denominator's place. Writing it as
``p D_L <= (D_L + B) - N_eff`` puts each count where it belongs, and the curvature is now
positive semi-definite (Gauss-Newton), so no eigenvalue has to be clipped: the old
``max(lambda, 0)`` counted every negative Hessian eigenvalue as a flat direction.

The exact quadratic limit. In the same quadratic well the minimum over the kept
subspace can be computed in the limit of many dimensions, assuming the pruned coordinates
are a random subspace with respect to the curvature's eigenvectors (which random pruning
of a rotated well satisfies). With ``r = round(p D_L)`` removed and ``d = (D_L + B) - r``
kept coordinates, the minimum is the Schur complement ``(1/2) delta^T ((G^-1)_RR)^-1
delta`` (delta the removed weights, ``|delta| = l``). ``(G^-1)_RR`` is a random
r-dimensional compression of ``A = G^-1``, and the deterministic equivalent of such a
compression (as for sketched inverses: LeJeune, Patil, Javadi, Baraniuk & Tibshirani,
"Asymptotics of the sketched pseudoinverse", 2024) is ``R (R^T A R)^-1 R^T ~ (A + nu)^-1``
with nu solving ``r = sum_i 1 / (1 + nu lambda_i)``, i.e. ``N_eff(1/nu) = d``. For delta
spread evenly over R this gives ``delta^T ((G^-1)_RR)^-1 delta ~ (l^2 / r) sum_i lambda_i
/ (1 + nu lambda_i) = l^2 z' N_eff(z') / r`` with ``z' = 1/nu``, so

    min loss rise  ~  (1/2) l_R(p)^2 z' d / r,    z' solving N_eff(z') = d

(z' = 0 when d is at least the curvature's rank: the kept subspace then absorbs the
move). The quadratic limit is the largest p with ``l^2 z' d / r <= 2 eps``
(:func:`quadratic_limits`). It agrees with the prediction above exactly when ``r = d``
(half the coordinates removed) and differs by the factor ``d / r`` in the loss rise
elsewhere: ``p D_L <= (D_L + B) - N_eff(z)`` is the statement ``l^2 z' <= 2 eps``
without it. On exact quadratic wells (tests/landscape/test_prunelimit.py) the quadratic
limit lands on the measured 50% crossing, while the prediction misses it by up to about
0.17 where few or many weights are removed.

``eps`` is an allowed rise of the mean training cross-entropy (nats), stored with every
prediction; :data:`EPS_GRID` is the grid every measurement stores.
"""

from dataclasses import dataclass

import numpy as np
import torch

from imp.pruning import Mask, erk_counts, groups, lamp_scores, round_half_up

RULES = ("magnitude", "random")
EPS_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
GRID = np.linspace(0.0, 1.0, 1001)  # the fractions p every limit is resolved on


@dataclass
class Removal:
    """What a pruning rule removes from the kept prunable weights at each p of ``grid``:
    ``count`` r(p) and the squared projection length ``squares`` l_R(p)^2."""

    grid: np.ndarray
    count: np.ndarray
    squares: np.ndarray


def kept_squares(weights: dict[str, torch.Tensor], mask: Mask) -> np.ndarray:
    """Squares of the kept prunable weights (float64), in mask order, flattened."""
    return torch.cat([weights[name].detach().double().cpu()[mask[name].cpu()] ** 2 for name in mask]).numpy()


def magnitude_removal(weights: dict[str, torch.Tensor], mask: Mask, strategy: str = "global",
                      layer_fractions: dict | None = None, grid: np.ndarray = GRID) -> Removal:
    """Exactly the weights :func:`imp.pruning.magnitude_prune` removes at each p with the
    rule ``strategy``: per group, the ``round(rate * kept)`` first in the rule's order (the
    same stable order of float32 magnitudes; LAMP scores; under ERK, each tensor's
    smallest, as many as :func:`imp.pruning.erk_counts` takes from it)."""
    count, squares = np.zeros(len(grid), dtype=np.int64), np.zeros(len(grid))
    cumulative = {}
    for names, _ in groups(mask, strategy, 0.5, layer_fractions):
        split = strategy == "erk" and len(names) > 1
        cumulative[tuple(names)] = ([_cumulative(weights, mask, [n], "global") for n in names] if split
                                    else _cumulative(weights, mask, names, strategy))
    for i, p in enumerate(grid):
        for names, rate in groups(mask, strategy, float(p), layer_fractions):
            sums = cumulative[tuple(names)]
            if isinstance(sums, list):  # ERK: each tensor's own smallest
                have = [len(s) - 1 for s in sums]
                removed = min(round_half_up(rate * sum(have)), sum(have))
                want = erk_counts([tuple(mask[n].shape) for n in names], sum(have) - removed, have)
                squares[i] += sum(s[h - k] for s, h, k in zip(sums, have, want))
            else:
                removed = min(round_half_up(rate * (len(sums) - 1)), len(sums) - 1)
                squares[i] += sums[removed]
            count[i] += removed
    return Removal(grid, count, squares)


def _cumulative(weights: dict[str, torch.Tensor], mask: Mask, names: list[str], strategy: str) -> np.ndarray:
    """0 then the running sum of squares of the kept weights of ``names`` in the order a
    group pruned by ``strategy`` loses them."""
    flat = torch.cat([weights[n].detach().reshape(-1).cpu()[mask[n].reshape(-1).cpu()] for n in names])
    if strategy == "lamp" and len(names) > 1:
        score = torch.cat([lamp_scores(weights, mask, n)[mask[n].reshape(-1).cpu()] for n in names])
        order = torch.argsort(score, stable=True)
    else:
        order = torch.argsort(flat.abs().float(), stable=True)
    return np.concatenate([[0.0], np.cumsum(flat.double()[order].numpy() ** 2)])


def random_removal(squares: np.ndarray, seed: int | None = None, grid: np.ndarray = GRID) -> Removal:
    """A uniformly random subset of ``round(p D)`` kept weights: with ``seed`` None the
    expectation ``E l^2 = (r / D) sum_i w_i^2``; else the subset drawn by
    :func:`random_order` with ``seed``."""
    total = len(squares)
    count = np.array([round_half_up(p * total) for p in grid], dtype=np.int64)
    if seed is None:
        return Removal(grid, count, float(np.sum(squares)) * count / max(total, 1))
    cumulative = np.concatenate([[0.0], np.cumsum(squares[random_order(total, seed)])])
    return Removal(grid, count, cumulative[count])


def random_order(count: int, seed: int) -> np.ndarray:
    """A seeded random order of ``count`` kept weights: random pruning at fraction p removes
    the first ``round(p count)`` (so the masks of larger p contain those of smaller)."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed)).numpy()


def _last_true(grid: np.ndarray, ok: np.ndarray) -> float:
    """The largest grid p before the first False (every p is fine: 1)."""
    failed = np.flatnonzero(~ok)
    return float(grid[-1] if len(failed) == 0 else grid[max(failed[0] - 1, 0)])


def predicted_limits(removal: Removal, neff, dimension: int, eps_values) -> np.ndarray:
    """For each eps: the largest p with ``r(p) <= dimension - N_eff(2 eps / l^2(p))``.

    ``neff`` maps an array of z to ``N_eff(z)`` (:meth:`landscape.eigen.Spectrum.neff`),
    ``dimension`` is D_L + B. p = 0 always qualifies (nothing moves)."""
    out = []
    for eps in eps_values:
        with np.errstate(divide="ignore"):
            z = np.where(removal.squares > 0, 2 * eps / np.maximum(removal.squares, 1e-300), np.inf)
        room = dimension - neff(z)
        out.append(_last_true(removal.grid, (removal.count <= room) | (removal.squares == 0)))
    return np.array(out)


def kept_scale(neff, kept: np.ndarray, top: float, iterations: int = 100) -> np.ndarray:
    """z' with ``N_eff(z') = kept`` for each entry of ``kept`` (bisection in log z over
    ``[1e-14, 1e14] * top``); 0 where even the smallest z gives N_eff <= kept."""
    kept = np.asarray(kept, dtype=float)
    low, high = np.full(kept.shape, np.log(1e-14 * top)), np.full(kept.shape, np.log(1e14 * top))
    for _ in range(iterations):
        middle = (low + high) / 2
        above = neff(np.exp(middle)) > kept
        low, high = np.where(above, middle, low), np.where(above, high, middle)
    return np.where(neff(np.exp(np.full(kept.shape, np.log(1e-14 * top)))) <= kept, 0.0, np.exp(high))


def quadratic_limits(removal: Removal, neff, dimension: int, top: float, eps_values) -> np.ndarray:
    """For each eps: the largest p with ``l^2(p) z'(p) d / r <= 2 eps`` (module docstring)."""
    if top <= 0:
        return np.ones(len(eps_values))
    kept = dimension - removal.count
    scale = kept_scale(neff, kept, top)
    rise = np.where(removal.count > 0, removal.squares * scale * kept / np.maximum(removal.count, 1), 0.0) / 2
    return np.array([_last_true(removal.grid, rise <= eps) for eps in eps_values])


def conservative_limit(removal: Removal, top_eigenvalue: float, eps: float) -> float:
    """The largest p with ``top_eigenvalue * l^2(p) / 2 <= eps`` (1 when it is <= 0)."""
    if top_eigenvalue <= 0:
        return 1.0
    return _last_true(removal.grid, top_eigenvalue * removal.squares / 2 <= eps)
