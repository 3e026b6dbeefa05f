"""Hessian-vector products of the training loss, restricted to a mask's unpruned weights.

Definitions (DESIGN §4, "Hessian spectra and the prune limit"):

- The loss is the mean cross-entropy of ``model`` over a fixed subset ``(x, y)``, as a
  function of all trainable parameters (``requires_grad``) flattened in
  ``model.named_parameters()`` order into one vector of length ``dim``.
- With a mask (imp.pruning.Mask: parameter name -> bool tensor, True = kept), ``m`` is
  the 0/1 vector that is 0 exactly on the pruned weights (parameters absent from the mask
  are fully active), and the operator is ``v -> m * H(m * v)``. On the ``active``
  unpruned coordinates it is the restricted Hessian (the submatrix of H); its other
  eigenvalues are exact zeros. This is the Hessian of ``w -> L(m * w)``, which is what
  PyHessian sees through ``torch.nn.utils.prune`` re-parametrisation, and NOT the Hessian
  of a model whose pruned weights are merely zero (that is the full-space one).
- BatchNorm: ``bn="eval"`` (default, as PyHessian) normalises with the running
  statistics; ``bn="train"`` with each batch's statistics (running statistics are not
  updated). It changes the answer a lot (ResNet-8: 606.6 vs 47.7); record it. Products
  are autograd double backward, never ``vmap`` (whose batching rules are about 1% wrong
  with train-mode BatchNorm).

The eigenvalue, trace and density routines are in :mod:`landscape.lanczos` and take any
operator; they are re-exported here.
"""

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imp.base.errors import UserError, did_you_mean
from imp.pruning import Mask
from landscape.lanczos import hutchinson_trace, lanczos, random_entries, slq_density

__all__ = ["HessianOperator", "dense_hessian", "hutchinson_trace", "lanczos", "slq_density"]

BN_MODES = ("eval", "train")
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class HessianOperator:
    """``v -> m * H(m * v)`` for the mean cross-entropy of ``model`` over ``(x, y)``.

    ``x``, ``y`` are on the model's device; vectors are float64 (dim,) on that device.
    When ``len(x) <= batch_size`` the first-order graph of the whole subset is built
    once, here, and every product is one double backward through it (the cheapest
    measured on a CPU, at the price of holding the graph). Otherwise each product
    recomputes the loss per consecutive batch of ``batch_size`` and returns
    ``sum_b (n_b / N) H_b v``, the Hessian of the batch-size-weighted mean loss (the
    mean over all of ``x``; with ``bn="train"`` each batch uses its own statistics).

    The operator is the Hessian at the parameters' values when it is built: do not
    change them while using it (autograd raises for a held graph). It has no side
    effects: ``.grad`` is never written (products use ``torch.autograd.grad``), buffers
    are not updated, and every module's train/eval flag is restored after each forward.

    Attributes: ``dim`` (number of trainable parameters), ``active`` (coordinates with
    m = 1), ``products`` (Hessian-vector products done so far), ``bn``, ``names`` (the
    parameters in flattening order), ``device``.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, mask: Mask | None = None, *,
                 bn: str = "eval", batch_size: int = 1024) -> None:
        if bn not in BN_MODES:
            raise UserError(f"bn must be one of {', '.join(BN_MODES)}, got {bn!r}" + did_you_mean(bn, BN_MODES))
        if len(x) == 0 or len(x) != len(y):
            raise UserError(f"need matching, non-empty x and y, got {len(x)} and {len(y)} examples")
        if batch_size < 1:
            raise UserError(f"batch_size must be positive, got {batch_size}")
        self.model, self.x, self.y, self.bn, self.batch_size = model, x, y, bn, batch_size
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise UserError("the model has no trainable parameters")
        self.names = [name for name, _ in named]
        self.params = [p for _, p in named]
        self.dim = sum(p.numel() for p in self.params)
        self.device = self.params[0].device
        self.mask = _flat_mask(mask, named, self.device)
        self.active = self.dim if self.mask is None else int(self.mask.sum())
        self.products = 0
        self._graph = self._prepare(x, y) if len(x) <= batch_size else None

    @contextlib.contextmanager
    def _mode(self) -> Iterator[None]:
        """Eval mode, BatchNorm layers in train mode when ``bn="train"``; flags restored after."""
        modes = [(module, module.training) for module in self.model.modules()]
        try:
            self.model.eval()
            if self.bn == "train":
                for module in self.model.modules():
                    if isinstance(module, _BATCHNORM):
                        module.train()
            yield
        finally:
            for module, training in modes:
                module.training = training

    def _logits(self, x: torch.Tensor, parameters: dict | None = None) -> torch.Tensor:
        """The model's logits on ``x`` (in the operator's BatchNorm mode; call inside
        ``_mode()``), with ``parameters`` replacing the model's own when given."""
        if self.bn == "train" or parameters is not None:  # batch statistics update cloned buffers only
            buffers = {name: b.clone() for name, b in self.model.named_buffers()}
            return torch.func.functional_call(self.model, {**buffers, **(parameters or {})}, (x,))
        return self.model(x)

    def _prepare(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor | None]:
        """First-order gradients of the mean cross-entropy on (x, y), with their graph."""
        with self._mode(), torch.enable_grad():
            loss = F.cross_entropy(self._logits(x), y)
            return list(torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True))

    def _apply(self, x: torch.Tensor, y: torch.Tensor, grads: list[torch.Tensor | None],
               pieces: list[torch.Tensor], retain: bool) -> list[torch.Tensor]:
        """``H v`` by double backward: the gradient of ``<grad L, v>``; unused parameters give 0."""
        dot = sum((g * v).sum() for g, v in zip(grads, pieces) if g is not None and g.requires_grad)
        if not torch.is_tensor(dot) or not dot.requires_grad:
            return [torch.zeros_like(p) for p in self.params]
        hv = torch.autograd.grad(dot, self.params, retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h for p, h in zip(self.params, hv)]

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``m * H(m * v)`` for a float64 vector (dim,); float64 (dim,) on the model's device."""
        if v.shape != (self.dim,):
            raise UserError(f"expected a vector of shape ({self.dim},), got {tuple(v.shape)}")
        v = v.to(self.device, torch.float64)
        if self.mask is not None:
            v = v * self.mask
        pieces = [piece.view_as(p).to(p.dtype) for piece, p in zip(v.split([p.numel() for p in self.params]),
                                                                    self.params)]
        if self._graph is not None:
            out = _flat(self._apply(self.x, self.y, self._graph, pieces, retain=True), torch.empty_like(v))
        else:
            out, part = torch.zeros_like(v), torch.empty_like(v)
            for x, y in zip(self.x.split(self.batch_size), self.y.split(self.batch_size)):
                out.add_(_flat(self._apply(x, y, self._prepare(x, y), pieces, retain=False), part),
                         alpha=len(x) / len(self.x))
        self.products += 1
        return out if self.mask is None else out.mul_(self.mask)

    def random_vector(self, generator: torch.Generator, kind: str = "rademacher") -> torch.Tensor:
        """A float64 (dim,) vector with i.i.d. entries (Rademacher +-1 or standard Gaussian)
        drawn from ``generator`` (a CPU generator) on all coordinates, then zeroed on the
        pruned ones; on the model's device."""
        plain = random_entries(self.dim, generator, kind).to(self.device)
        return plain if self.mask is None else plain * self.mask


def _flat(pieces: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """``pieces`` flattened and concatenated into ``out`` (converting to its dtype)."""
    start = 0
    for piece in pieces:
        out[start:start + piece.numel()].copy_(piece.reshape(-1))
        start += piece.numel()
    return out


def _flat_mask(mask: Mask | None, named: list[tuple[str, torch.Tensor]],
               device: torch.device) -> torch.Tensor | None:
    """The float64 0/1 vector m over the flattened parameters (None without a mask)."""
    if mask is None:
        return None
    shapes = {name: p.shape for name, p in named}
    for name, keep in mask.items():
        if name not in shapes:
            raise UserError(f"mask entry {name!r} is not a trainable parameter of the model"
                            + did_you_mean(name, shapes))
        if keep.shape != shapes[name] or keep.dtype != torch.bool:
            raise UserError(f"mask entry {name!r} must be a bool tensor of shape {tuple(shapes[name])}, "
                            f"got {keep.dtype} {tuple(keep.shape)}")
    return torch.cat([mask[name].reshape(-1).to(device, torch.float64) if name in mask
                      else torch.ones(p.numel(), dtype=torch.float64, device=device) for name, p in named])


def dense_hessian(operator, *, limit: int = 10_000) -> np.ndarray:
    """The operator as a dense float64 matrix (dim, dim): column i is ``matvec(e_i)``.

    ``dim`` products, for tiny models and tests; an operator larger than ``limit`` is an
    error. For a masked Hessian the pruned rows and columns are zero.
    """
    if operator.dim > limit:
        raise UserError(f"dense_hessian of a {operator.dim}-dimensional operator needs {operator.dim} products "
                        f"and {8 * operator.dim ** 2 / 1e9:.1f} GB; raise limit to do it anyway")
    columns = []
    for i in range(operator.dim):
        e = torch.zeros(operator.dim, dtype=torch.float64)
        e[i] = 1.0
        columns.append(operator.matvec(e).cpu().numpy())
    return np.stack(columns, axis=1)
