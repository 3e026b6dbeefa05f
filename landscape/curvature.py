"""The generalised Gauss-Newton curvature of the training loss, restricted to a mask.

For the mean cross-entropy ``L(w) = (1/N) sum_n CE(f(x_n; w), y_n)`` of a network with
logits ``f``, the generalised Gauss-Newton matrix (GGN; Schraudolph 2002, "Fast
curvature matrix-vector products for second-order gradient descent"; Martens 2020,
"New insights and perspectives on the natural gradient method") is

    G = (1/N) sum_n J_n^T H_n J_n,    H_n = diag(s_n) - s_n s_n^T,

with ``J_n`` the Jacobian of example n's logits with respect to the parameters and
``s_n = softmax(f(x_n; w))`` (``H_n`` is the Hessian of the cross-entropy in the
logits). It is the Hessian with the term ``sum_k dCE/df_k * Hessian(f_k)`` dropped, and
it is positive semi-definite (``H_n = S_n S_n^T`` with ``S_n = diag(sqrt s_n) - s_n
sqrt(s_n)^T``), so its eigenvalues are the curvatures of a quadratic well: what the
prune-limit theory of :mod:`landscape.prunelimit` needs. Its rank is at most
``(classes - 1) N``.

:class:`GGNOperator` has the interface of :class:`landscape.hessian.HessianOperator`
(mask, BatchNorm mode, batching by ``batch_size``, no side effects): ``v -> m * G(m * v)``.
A product is one forward-mode pass for ``J v`` (``torch.func.jvp``, never ``vmap``, so
train-mode BatchNorm is exact) and one backward pass for ``J^T u``.
"""

import warnings

import torch

from landscape.hessian import HessianOperator


class GGNOperator(HessianOperator):
    """``v -> m * G(m * v)`` for the mean cross-entropy of ``model`` over ``(x, y)``.

    Everything else as :class:`landscape.hessian.HessianOperator`: when ``len(x) <=
    batch_size`` the logits' graph is built once and each product reuses it; otherwise
    each product recomputes it per batch and weights the batches by their size.
    """

    def _prepare(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The logits of ``x`` with their graph (for ``J^T u``)."""
        with self._mode(), torch.enable_grad():
            return self._logits(x)

    def _apply(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, pieces: list[torch.Tensor],
               retain: bool) -> list[torch.Tensor]:
        """One batch's ``(1/N_b) sum_n J_n^T H_n J_n v`` (the caller weights batches by size)."""
        names = self.names
        primals = tuple(p.detach() for p in self.params)

        def logits_of(*values: torch.Tensor) -> torch.Tensor:
            return self._logits(x, dict(zip(names, values)))

        with self._mode(), torch.no_grad(), warnings.catch_warnings():
            # torch's forward-mode AD loads its decompositions with torch.jit.script once per
            # process, which warns that script is deprecated: torch's matter, not the user's
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            _, jv = torch.func.jvp(logits_of, primals, tuple(pieces))
        s = torch.softmax(logits.detach().double(), dim=1)
        jv = jv.double()
        u = (s * jv - s * (s * jv).sum(dim=1, keepdim=True)) / len(x)
        grads = torch.autograd.grad(logits, self.params, grad_outputs=u.to(logits.dtype), retain_graph=retain,
                                    allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]
