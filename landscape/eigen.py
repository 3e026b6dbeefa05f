"""The whole spectrum of a curvature operator, accurate enough for spectral sums.

A :class:`Spectrum` holds the ``n = active`` eigenvalues of an operator on its active
subspace, either all of them (``method = "exact"``: the dense restricted matrix and
``numpy.linalg.eigh``) or as the top ``k`` found by Lanczos plus a stochastic Lanczos
quadrature of the *deflated* operator ``P A P``, ``P = I - Q Q^T`` with Q the top-k Ritz
vectors (``method = "lanczos+slq"``). Deflation takes the large eigenvalues out of the
quadrature, which then only has to resolve the bulk near zero (Ubaru, Chen & Saad 2017
for the quadrature; deflating the top of the spectrum as in Lin, Saad & Yang 2016,
"Approximating spectral densities of large matrices", §5).

:meth:`Spectrum.total` is the spectral sum ``sum_i f(lambda_i)`` over all n eigenvalues;
with deflation it is

    sum_{i <= k} f(theta_i) + n * mean_r sum_j w_rj f(node_rj) - k f(0),

because ``P A P`` has the remaining ``n - k`` eigenvalues plus k exact zeros.
:meth:`Spectrum.error` estimates that sum's error as the probe standard error
(Hutchinson) combined with the quadrature error, the latter estimated by the change
from ``steps // 2`` to ``steps`` Lanczos steps on the same probes.
"""

from collections.abc import Callable

Report = Callable[[str], None] | None  # takes one progress line
from dataclasses import dataclass, field

import numpy as np
import torch

from landscape.lanczos import _ritz, _steps, active_dimension, lanczos, random_start

EXACT_LIMIT = 8000  # default largest active dimension decomposed exactly
ZERO = 1e-4  # |lambda| <= ZERO * max |lambda| counts as zero for the masses


@dataclass
class Spectrum:
    """All ``active`` eigenvalues of an operator, exactly or as top + deflated quadrature."""

    active: int
    top: np.ndarray  # exact: every eigenvalue; else the deflated top k (descending)
    method: str = "exact"
    nodes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (runs, steps) deflated quadrature
    weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    half_nodes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # the same probes, steps // 2
    half_weights: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    products: int = 0

    def _probes(self, f: Callable, nodes: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Each probe's estimate of the full spectral sum (first axis: probes; f may add
        trailing axes, as :meth:`neff` does)."""
        inner = f(nodes)
        weights = weights.reshape(weights.shape + (1,) * (inner.ndim - nodes.ndim))
        return (f(self.top).sum(axis=0) + self.active * np.sum(weights * inner, axis=1)
                - len(self.top) * f(np.zeros(1))[0])

    def total(self, f: Callable[[np.ndarray], np.ndarray]):
        """``sum_i f(lambda_i)`` over all ``active`` eigenvalues (f vectorised; a float, or
        an array when f adds trailing axes)."""
        if self.method == "exact":
            out = f(self.top).sum(axis=0)
        else:
            out = np.mean(self._probes(f, self.nodes, self.weights), axis=0)
        return float(out) if np.ndim(out) == 0 else out

    def neff(self, z: np.ndarray) -> np.ndarray:
        """``N_eff(z) = sum_i lambda_i / (lambda_i + z)`` for each entry of the array ``z``
        (0 where z is infinite)."""
        z = np.asarray(z, dtype=float)
        flat = z.reshape(-1)
        finite = np.where(np.isfinite(flat), flat, 1.0)
        out = self.total(lambda lam: np.asarray(lam, dtype=float)[..., None]
                         / (np.asarray(lam, dtype=float)[..., None] + finite))
        return np.where(np.isfinite(flat), out, 0.0).reshape(z.shape)

    def error(self, f: Callable[[np.ndarray], np.ndarray]) -> float:
        """Estimated error of :meth:`total` (0 for exact: rounding only)."""
        if self.method == "exact":
            return 0.0
        full = self._probes(f, self.nodes, self.weights)
        sampling = full.std(ddof=1) / np.sqrt(len(full)) if len(full) > 1 else np.inf
        quadrature = abs(full.mean() - self._probes(f, self.half_nodes, self.half_weights).mean())
        return float(np.hypot(sampling, quadrature))

    def mass(self, which: str) -> float:
        """The fraction of eigenvalues that are ``negative`` (< -zeta) or ``zero`` (|lambda|
        <= zeta), with ``zeta = ZERO * max |lambda|``."""
        scale = ZERO * max(float(np.max(np.abs(self.top))), 1e-300)
        if which == "negative":
            return self.total(lambda lam: (lam < -scale).astype(float)) / self.active
        return self.total(lambda lam: (np.abs(lam) <= scale).astype(float)) / self.active

    def tree(self) -> dict:
        return {"method": self.method, "active": self.active, "top": self.top, "nodes": self.nodes,
                "weights": self.weights, "half_nodes": self.half_nodes, "half_weights": self.half_weights,
                "products": self.products, "negative_mass": self.mass("negative"), "zero_mass": self.mass("zero")}

    @classmethod
    def from_tree(cls, tree: dict) -> "Spectrum":
        return cls(int(tree["active"]), np.asarray(tree["top"]), str(tree["method"]),
                   *(np.asarray(tree[key]) for key in ("nodes", "weights", "half_nodes", "half_weights")),
                   products=int(tree["products"]))

    def mapped(self, g: Callable[[np.ndarray], np.ndarray]) -> "Spectrum":
        """The spectrum of g(A) (g applied to every eigenvalue and node; g(0) must be 0)."""
        return Spectrum(self.active, g(self.top), self.method, g(self.nodes), self.weights, g(self.half_nodes),
                        self.half_weights, self.products)


def restricted_matrix(operator, report: Report = None) -> np.ndarray:
    """The operator on its active coordinates as a dense float64 (active, active) matrix:
    one product per active coordinate (a progress line at every tenth of them)."""
    mask = getattr(operator, "mask", None)
    index = torch.arange(operator.dim) if mask is None else torch.nonzero(mask.cpu()).flatten()
    columns = np.empty((len(index), len(index)))
    for column, i in enumerate(index.tolist()):
        e = torch.zeros(operator.dim, dtype=torch.float64)
        e[i] = 1.0
        columns[:, column] = operator.matvec(e).cpu()[index].numpy()
        if report is not None and (column + 1) % max(len(index) // 10, 1) == 0:
            report(f"exact: {column + 1} of {len(index)} columns")
    return (columns + columns.T) / 2


def exact_spectrum(operator, report: Report = None) -> Spectrum:
    before = operator.products
    eigenvalues = np.linalg.eigvalsh(restricted_matrix(operator, report))[::-1].copy()
    return Spectrum(len(eigenvalues), eigenvalues, products=operator.products - before)


class Deflated:
    """``v -> P A P v`` with ``P = I - Q^T Q`` for orthonormal rows Q (k, dim)."""

    def __init__(self, operator, rows: torch.Tensor):
        self.operator, self.rows = operator, rows
        self.dim, self.active = operator.dim, active_dimension(operator)

    def _project(self, v: torch.Tensor) -> torch.Tensor:
        return v - self.rows.T @ (self.rows @ v)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._project(self.operator.matvec(self._project(v.to(self.rows))))

    def random_vector(self, generator: torch.Generator, kind: str = "rademacher") -> torch.Tensor:
        return random_start(self.operator, generator, kind).to(self.rows)


def deflated_spectrum(operator, k: int, runs: int, steps: int, *, tol: float = 1e-3, seed: int = 0,
                      report: Report = None) -> Spectrum:
    """Top ``k`` by Lanczos (relative residual ``tol``), then ``runs`` x ``steps`` quadrature
    of the deflated operator (Rademacher probes on the active coordinates)."""
    before = operator.products
    active = active_dimension(operator)
    k = min(k, active - 1)
    top = lanczos(operator, k, tol=tol, max_iter=max(100, 3 * k), seed=seed, vectors=True) if k > 0 else None
    rows = (torch.from_numpy(top["eigenvectors"]) if top else torch.zeros(0, operator.dim, dtype=torch.float64))
    if report is not None and top:
        report(f"Lanczos: top {k} in {top['products']} products (smallest {top['eigenvalues'][-1]:.3g})")
    deflated = Deflated(operator, rows.to(getattr(operator, "device", "cpu")))
    generator = torch.Generator().manual_seed(seed + 1)
    steps = min(steps, active)
    shape = (runs, steps)
    nodes, weights, half_nodes, half_weights = (np.zeros(shape) for _ in range(4))
    for r in range(runs):
        start = random_start(deflated, generator, "rademacher")
        for alpha, beta, _, _ in _steps(deflated, start, steps):
            if len(alpha) == max(steps // 2, 1):
                theta, s = _ritz(alpha, beta)
                half_nodes[r, :len(theta)], half_weights[r, :len(theta)] = theta, s[0] ** 2
        theta, s = _ritz(alpha, beta)
        nodes[r, :len(theta)], weights[r, :len(theta)] = theta, s[0] ** 2
        if len(alpha) < max(steps // 2, 1):  # Krylov space exhausted early: already exact
            half_nodes[r], half_weights[r] = nodes[r], weights[r]
        if report is not None:
            report(f"quadrature: probe {r + 1} of {runs} ({len(alpha)} steps)")
    eigenvalues = np.asarray(top["eigenvalues"]) if top else np.zeros(0)
    return Spectrum(active, eigenvalues, "lanczos+slq", nodes, weights, half_nodes, half_weights,
                    operator.products - before)


def spectrum(operator, *, k: int, runs: int, steps: int, tol: float = 1e-3, seed: int = 0,
             exact_limit: int = EXACT_LIMIT, report: Report = None) -> Spectrum:
    """Exact up to ``exact_limit`` active coordinates, deflated Lanczos + quadrature above;
    ``report`` gets progress lines."""
    if active_dimension(operator) <= exact_limit:
        return exact_spectrum(operator, report)
    return deflated_spectrum(operator, k, runs, steps, tol=tol, seed=seed, report=report)
