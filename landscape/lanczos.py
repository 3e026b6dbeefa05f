"""Krylov methods for a symmetric operator: top eigenpairs, trace, spectral density.

They work on any object with ``dim`` (int), ``matvec(v)`` (float64 torch vector (dim,)
-> float64 (dim,)), optionally ``active`` (the dimension of the subspace the operator
acts on; default ``dim``) and optionally ``random_vector(generator, kind)`` (a random
vector in that subspace, ``kind`` "rademacher" or "gaussian"; default: on all ``dim``
coordinates). ``matvec`` must return a new tensor (the caller may overwrite it).
:class:`landscape.hessian.HessianOperator` is one; a test matrix is another.

Every start vector comes from a private ``torch.Generator`` seeded with ``seed``
(drawn through ``random_vector`` in the order stated below), so results are
reproducible and torch's global RNG is never touched.

- :func:`lanczos`: Lanczos (1950) with full reorthogonalisation (Golub & Van Loan,
  "Matrix Computations", 4th ed., §10.1-10.3), stopped on the Ritz residual.
- :func:`hutchinson_trace`: Hutchinson (1989), "A stochastic estimator of the trace of
  the influence matrix for Laplacian smoothing splines".
- :func:`slq_density`: stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017, "Fast
  estimation of tr(f(A)) via stochastic Lanczos quadrature"), as used for Hessian
  densities by Yao et al. (2020), "PyHessian: Neural Networks Through the Lens of the
  Hessian".
"""

from collections.abc import Iterator

import numpy as np
import torch

from imp.base.errors import UserError

_BREAKDOWN = 1e-10  # beta below this times the largest |alpha| or beta seen: invariant subspace


def random_entries(dim: int, generator: torch.Generator, kind: str = "rademacher") -> torch.Tensor:
    """A float64 (dim,) CPU vector of i.i.d. Rademacher (+-1) or standard Gaussian entries."""
    if kind == "rademacher":
        return torch.randint(0, 2, (dim,), generator=generator).double() * 2 - 1
    if kind == "gaussian":
        return torch.randn(dim, generator=generator, dtype=torch.float64)
    raise UserError(f"kind must be rademacher or gaussian, got {kind!r}")


def random_start(operator, generator: torch.Generator, kind: str = "rademacher") -> torch.Tensor:
    """``operator.random_vector(generator, kind)`` when it has one, else :func:`random_entries`
    on all ``operator.dim`` coordinates."""
    if hasattr(operator, "random_vector"):
        return operator.random_vector(generator, kind)
    return random_entries(operator.dim, generator, kind)


def active_dimension(operator) -> int:
    return int(getattr(operator, "active", operator.dim))


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``w`` (overwritten) minus its projection on the orthonormal rows of ``basis`` (m, dim):
    classical Gram-Schmidt, repeated once when it removed most of ``w`` (the DGKS
    criterion, Daniel, Gragg, Kaufman & Stewart 1976; "twice is enough", Giraud et al.
    2005). Each pass reads the basis twice, the main cost of a step beside the product."""
    for _ in range(2):
        before = torch.linalg.vector_norm(w)
        w.addmv_(basis.T, basis @ w, alpha=-1)  # in place: w -= Q^T (Q w)
        if torch.linalg.vector_norm(w) > 0.7 * before:
            break
    return w


def _steps(operator, start: torch.Tensor, steps: int, restart: torch.Generator | None = None
           ) -> Iterator[tuple[list[float], list[float], torch.Tensor, bool]]:
    """Lanczos with full reorthogonalisation from ``start``, one product per step.

    After step m yields ``(alpha, beta, basis, restarted)``: the tridiagonal ``T_m``
    (diagonal ``alpha`` (m,), off-diagonal ``beta[:m-1]``), ``beta[m-1]`` = the norm of
    the next residual vector (so the Ritz pair (theta_i, Q s_i) has residual
    ``beta[m-1] |s_i[m-1]|``), and the orthonormal basis rows ``Q`` (m, dim), float64,
    one tensor grown by doubling. On an invariant subspace (beta ~ 0) it stops, or with
    ``restart`` goes on from a new random vector orthogonal to the basis, with coupling
    beta = 0 and ``restarted`` True, stopping when none is left.
    """
    q = start.double()
    q = q / torch.linalg.vector_norm(q)
    basis = q.new_empty(min(steps, 16), q.numel())  # rows beyond m are never read
    basis[0] = q
    alpha, beta, scale = [], [], 0.0
    for m in range(1, steps + 1):
        q = basis[m - 1]
        w = operator.matvec(q)
        if m > 1:  # the three-term recurrence, then full reorthogonalisation against the basis
            w.sub_(basis[m - 2], alpha=beta[-1])
        alpha.append(float(q @ w))
        w = _orthogonalise(w.sub_(q, alpha=alpha[-1]), basis[:m])
        beta.append(float(torch.linalg.vector_norm(w)))
        scale = max(scale, abs(alpha[-1]), beta[-1])
        invariant = beta[-1] <= _BREAKDOWN * scale
        if invariant and restart is not None and m < steps:
            fresh = random_start(operator, restart, "gaussian").to(w)
            w = _orthogonalise(fresh / torch.linalg.vector_norm(fresh), basis[:m])
            if torch.linalg.vector_norm(w) <= 1e-8:
                restart = None  # the basis spans the operator's space
            beta[-1] = 0.0
        yield alpha, beta, basis[:m], invariant and restart is not None
        if m == steps or (invariant and restart is None):
            return
        if m == len(basis):
            grown = basis.new_empty(2 * len(basis), basis.shape[1])
            grown[:m] = basis
            basis = grown
        torch.div(w, torch.linalg.vector_norm(w), out=basis[m])


def _ritz(alpha: list[float], beta: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors (columns) of the tridiagonal ``T_m``."""
    m = len(alpha)
    t = np.diag(alpha) + np.diag(beta[:m - 1], 1) + np.diag(beta[:m - 1], -1)
    return np.linalg.eigh(t)


def _top_ritz(alpha: list[float], beta: list[float], wanted: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (up to) ``wanted`` largest Ritz values of ``T_m``, descending, their eigenvectors
    of ``T_m`` (columns) and relative residuals ``beta_m |s_i[m]| / |theta_i|``."""
    theta, s = _ritz(alpha, beta)
    top = np.argsort(-theta, kind="stable")[:wanted]
    absolute = beta[-1] * np.abs(s[-1, top])
    relative = np.divide(absolute, np.abs(theta[top]), out=np.where(absolute > 0, np.inf, 0.0),
                         where=theta[top] != 0)
    return theta[top], s[:, top], relative


def lanczos(operator, k: int = 5, *, tol: float = 1e-3, max_iter: int = 100, seed: int = 0,
            vectors: bool = False) -> dict:
    """The ``k`` largest (algebraic) eigenvalues of a symmetric operator, by Lanczos.

    Lanczos (1950) with full reorthogonalisation of a float64 basis (Golub & Van Loan
    §10.3.1), from ``operator.random_vector(torch.Generator().manual_seed(seed),
    "gaussian")`` (for a masked Hessian, zero on the pruned coordinates). After each step
    the Ritz pairs ``(theta_i, u_i = Q s_i)`` of ``T_m`` are formed; it stops when the
    ``min(k, active)`` largest have relative residual
    ``||A u_i - theta_i u_i|| / |theta_i| = beta_m |s_i[m]| / |theta_i| <= tol`` (the
    Lanczos identity, exact up to rounding with full reorthogonalisation), when the
    Krylov space has reached the operator's active dimension, or after ``max_iter``
    steps. Eigenvalue errors are then of order ``tol^2 |theta| / gap`` (Golub & Van Loan
    Thm 10.1.4 with 8.1.13). On an invariant subspace it restarts from a new random
    vector orthogonal to the basis (never stopping at that step), which finds repeated
    eigenvalues. Like any Krylov method it can miss an eigenvalue whose eigenvector is
    (numerically) orthogonal to the start vectors, and a repeated eigenvalue is found
    again only through such restarts.

    Eigenvalues are those of the operator on its active subspace: for a masked Hessian
    the restricted Hessian's, without the exact zeros of the pruned coordinates. With
    ``k`` above the active dimension, all ``active`` of them are returned.

    Returns ``"eigenvalues"`` float64 (n,) descending, n = min(k, active), their relative
    ``"residuals"`` (n,), ``"iterations"`` (Lanczos steps) and ``"products"`` (operator
    products by this call; one per step), and with ``vectors`` the Ritz vectors
    ``"eigenvectors"`` float64 (n, dim), unit norm.
    """
    if k < 1 or max_iter < 1 or tol <= 0:
        raise UserError(f"lanczos needs k >= 1, max_iter >= 1 and tol > 0, got {k}, {max_iter}, {tol}")
    wanted = min(k, active_dimension(operator))
    if max_iter < wanted:
        raise UserError(f"max_iter ({max_iter}) must be at least k ({wanted})")
    generator = torch.Generator().manual_seed(seed)
    start = random_start(operator, generator, "gaussian")
    for alpha, beta, basis, restarted in _steps(operator, start, min(max_iter, active_dimension(operator)),
                                                generator):
        if not restarted and len(alpha) >= wanted and np.all(_top_ritz(alpha, beta, wanted)[2] <= tol):
            break
    theta, s, residuals = _top_ritz(alpha, beta, wanted)
    result = {"eigenvalues": theta, "residuals": residuals, "iterations": len(alpha),
              "products": len(alpha)}
    if vectors:
        ritz = torch.from_numpy(np.ascontiguousarray(s.T)).to(basis)
        result["eigenvectors"] = (ritz @ basis).cpu().numpy()
    return result


def hutchinson_trace(operator, samples: int = 100, *, seed: int = 0) -> dict:
    """Hutchinson's (1989) trace estimate: the mean of ``v^T A v`` over ``samples``
    Rademacher vectors ``v`` (entries +-1 on the active coordinates, 0 on masked ones;
    drawn in turn from ``torch.Generator().manual_seed(seed)``).

    Unbiased for the trace of the operator on its active subspace (for a masked Hessian,
    the trace of the restricted Hessian); the variance of one sample is
    ``2 sum_{i != j} A_ij^2``. Returns ``"trace"``, ``"std_error"`` (sample standard
    deviation, ddof 1, over sqrt(samples); nan for one sample) and ``"samples"``.
    """
    if samples < 1:
        raise UserError(f"samples must be at least 1, got {samples}")
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(samples):
        v = random_start(operator, generator, "rademacher")
        values.append(float(v @ operator.matvec(v)))
    values = np.array(values)
    error = values.std(ddof=1) / np.sqrt(samples) if samples > 1 else float("nan")
    return {"trace": float(values.mean()), "std_error": float(error), "samples": samples}


def slq_density(operator, runs: int = 10, steps: int = 30, *, seed: int = 0) -> dict:
    """Stochastic Lanczos quadrature of the spectral density (Ubaru, Chen & Saad 2017).

    Run r (r = 0 .. runs-1) takes ``z_r``, the r-th ``random_vector(generator,
    "rademacher")`` of a generator seeded with ``seed``, and ``v = z_r / ||z_r||``, and runs
    ``steps`` Lanczos steps with full reorthogonalisation from ``v``; the Ritz values
    ``theta_j`` of ``T`` are the ``"nodes"`` and the squared first components ``s_j[0]^2``
    of its unit eigenvectors the ``"weights"``, both float64 (runs, steps), each row of
    weights summing to 1. Then ``sum_j weights[r, j] f(nodes[r, j]) = e_1^T f(T) e_1``,
    the Gauss quadrature of ``v^T f(A) v``, exact when f is a polynomial of degree at
    most ``2 steps - 1``. Since ``||z_r||^2 = active`` and ``E[z^T f(A) z] = tr f(A)`` on
    the active subspace,

        (1/active) sum_i f(lambda_i)  ~=  (1/runs) sum_r sum_j weights[r, j] f(nodes[r, j]),

    with lambda_i the ``active`` eigenvalues of the operator on its active subspace (for
    a masked Hessian, the restricted Hessian's: the exact zeros of the pruned
    coordinates are excluded, because the start vectors live on the active
    coordinates). The right side is unbiased for polynomials of degree < 2 steps; its
    error is Hutchinson sampling error (shrinking as 1/sqrt(runs)) plus quadrature error.
    When a run's Krylov space is exhausted after m < steps steps (e.g. steps > active),
    its quadrature is already exact and the remaining entries are node 0, weight 0.
    """
    if runs < 1 or steps < 1:
        raise UserError(f"slq_density needs runs >= 1 and steps >= 1, got {runs}, {steps}")
    generator = torch.Generator().manual_seed(seed)
    nodes, weights = np.zeros((runs, steps)), np.zeros((runs, steps))
    for r in range(runs):
        start = random_start(operator, generator, "rademacher")
        for alpha, beta, _, _ in _steps(operator, start, min(steps, active_dimension(operator))):
            pass
        theta, s = _ritz(alpha, beta)
        nodes[r, :len(theta)], weights[r, :len(theta)] = theta, s[0] ** 2
    return {"nodes": nodes, "weights": weights}
