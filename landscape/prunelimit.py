"""The largest fraction of weights prunable in one iteration, predicted from the Hessian.

This is a *reconstruction* of the theory of Paul et al. (2023), "Unmasking the lottery
ticket hypothesis: what's encoded in a winning ticket's mask?", not their code. At a
level-L solution w with D' unpruned (prunable) weights:

* pruning a fraction p of them by magnitude moves the weights by the projection length
  ``l(p) = sqrt(sum of w_i^2 over the round(p D') smallest-magnitude unpruned weights)``
  (:func:`projection_length`; one global ordering over all masked tensors);
* in a quadratic basin with Hessian eigenvalues lambda_i (restricted to the unpruned
  coordinates), a move of length l along eigendirection i raises the training loss by
  ``lambda_i l^2 / 2``. With an allowed loss increase ``eps``, the predicted largest
  prunable fraction is the solution of the self-consistency equation
  ``p = (1/D') sum_i 1 / (1 + lambda_i l(p)^2 / (2 eps))`` (non-positive lambda_i count
  as flat, i.e. contribute 1) (:func:`predicted_fraction`). The sum over all D'
  eigenvalues is estimated by stochastic Lanczos quadrature: ``(1/D') sum_i f(lambda_i)
  ~ mean_r sum_j weights[r, j] f(nodes[r, j])``;
* the conservative bound uses the top eigenvalue alone: the largest p with
  ``l(p) <= sqrt(2 eps / lambda_max)`` (:func:`conservative_fraction`).

``eps`` is an allowed increase of the mean training cross-entropy (nats), recorded with
every prediction.
"""

from collections.abc import Callable

import numpy as np
import torch

from imp.pruning import Mask


def sorted_squares(weights: dict[str, torch.Tensor], mask: Mask) -> np.ndarray:
    """Squares of the unpruned weights, smallest magnitude first (float64)."""
    kept = torch.cat([weights[name].detach().double().cpu()[mask[name].cpu()] for name in mask])
    return np.sort(kept.numpy() ** 2)


def projection_length(squares: np.ndarray, p: float | np.ndarray) -> np.ndarray:
    """``l(p)``: the norm of the ``round(p D')`` smallest-magnitude weights (``squares`` sorted)."""
    cumulative = np.concatenate([[0.0], np.cumsum(squares)])
    count = np.clip(np.floor(np.asarray(p) * len(squares) + 0.5).astype(int), 0, len(squares))
    return np.sqrt(cumulative[count])


def slq_average(nodes: np.ndarray, weights: np.ndarray) -> Callable[[Callable], float]:
    """``f -> (1/D') sum_i f(lambda_i)`` estimated from stochastic Lanczos quadrature."""
    nodes, weights = np.asarray(nodes, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    return lambda f: float(np.mean(np.sum(weights * f(nodes), axis=-1)))


def predicted_fraction(squares: np.ndarray, average: Callable[[Callable], float], eps: float,
                       tol: float = 1e-6) -> float:
    """Solve ``p = average(1 / (1 + max(lambda, 0) l(p)^2 / (2 eps)))`` by bisection.

    The right side falls from 1 at p = 0 as l(p) grows while the left side rises, so
    there is exactly one crossing in [0, 1].
    """
    def gap(p: float) -> float:
        scale = float(projection_length(squares, p)) ** 2 / (2 * eps)
        return average(lambda lam: 1.0 / (1.0 + np.maximum(lam, 0.0) * scale)) - p

    low, high = 0.0, 1.0
    if gap(high) >= 0:
        return 1.0
    while high - low > tol:
        middle = (low + high) / 2
        low, high = (middle, high) if gap(middle) > 0 else (low, middle)
    return (low + high) / 2


def conservative_fraction(squares: np.ndarray, top_eigenvalue: float, eps: float) -> float:
    """The largest p with ``l(p) <= sqrt(2 eps / lambda_max)`` (1 when lambda_max <= 0)."""
    if top_eigenvalue <= 0:
        return 1.0
    budget = 2 * eps / top_eigenvalue
    cumulative = np.cumsum(squares)
    return float(np.searchsorted(cumulative, budget, side="right") / len(squares))
