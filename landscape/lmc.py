"""Linear mode connectivity: interpolating two networks, error and loss along the path, barriers.

Frankle, Dziugaite, Roy & Carbin (2020), "Linear Mode Connectivity and the Lottery Ticket
Hypothesis" (ICML): networks ``w_A`` and ``w_B`` are linearly mode connected when the error
does not rise along ``w(a) = (1 - a) w_A + a w_B``, a in [0, 1]. Definitions (DESIGN §4):

- The path interpolates every floating entry of the state dicts (weights, biases,
  BatchNorm running statistics); pruned weights are stored as zeros, so a weight pruned
  in both endpoints stays zero and the path lies in the denser mask's subspace.
- BatchNorm: interpolated running statistics are not the statistics of the interpolated
  network, so by default they are re-estimated at every point, endpoints included, on a
  fixed set of examples (:func:`reestimate_batchnorm`); ``bn="interpolate"`` keeps the
  interpolated ones instead.
- A curve ``E(a)`` (mean cross-entropy, or error = 1 - accuracy) is measured on a grid
  of a on fixed splits, and has two barriers (:func:`barriers`).
- Per-example: ``B_i = l_i(w(1/2)) - (l_i(w_A) + l_i(w_B)) / 2`` (:func:`midpoint_barriers`).

Functions take a built ``model`` of the right architecture on the data's device, load
the states they need into it, and restore its state and train/eval modes before returning.
"""

import contextlib
import math
from collections.abc import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from imp.data import Split
from imp.base.errors import UserError, did_you_mean
from imp.level import State
from landscape.fastpath import Sums, cross_entropy, forward_sums, mix, mlp_applies, mlp_sums, vmap_sums

BN_MODES = ("reestimate", "interpolate")
METHODS = ("auto", "plain", "mlp", "vmap")
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def alphas(points: int = 25) -> np.ndarray:
    """The interpolation grid: ``points`` evenly spaced coefficients from 0 to 1 inclusive."""
    if points < 2:
        raise UserError(f"a path needs at least 2 points, got {points}")
    return np.linspace(0.0, 1.0, points)


def interpolate(a: State, b: State, alpha: float) -> State:
    """``(1 - alpha) a + alpha b`` for every floating tensor (weights, biases, BatchNorm
    running_mean / running_var); integer tensors (num_batches_tracked) are taken from ``a``.

    Computed as ``torch.lerp(a, b, alpha)``, exact at alpha = 0 and 1.
    """
    if a.keys() != b.keys():
        raise UserError(f"the two states differ in entries: {sorted(a.keys() ^ b.keys())}")
    out = {}
    for name, tensor in a.items():
        if tensor.shape != b[name].shape:
            raise UserError(f"{name} has shape {tuple(tensor.shape)} in one state and "
                            f"{tuple(b[name].shape)} in the other")
        out[name] = mix(tensor, b[name], alpha) if tensor.is_floating_point() else tensor.clone()
    return out


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BATCHNORM) and m.running_mean is not None]


class Moments:
    """Per-channel count, mean and sum of squared deviations of a BatchNorm layer's inputs,
    pooled over batches exactly (Chan et al.'s parallel update, in float64)."""

    def __init__(self) -> None:
        self.count, self.mean, self.m2 = 0, 0.0, 0.0

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0]
        dims = [d for d in range(x.dim()) if d != 1]  # all but the channel axis
        n = x.numel() // x.shape[1]
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        mean, m2 = mean.double(), var.double() * n
        total = self.count + n
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
        self.count = total


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> None:
    """Replace every BatchNorm layer's running statistics by those of its inputs over ``x``.

    Definition: one no-grad pass over ``x`` in ``ceil(len(x) / batch_size)`` near-equal
    consecutive chunks, with the BatchNorm layers in train mode (each chunk normalised by
    its own batch statistics, as in training) and every other module in eval mode (no
    dropout). For each BatchNorm layer, with ``n`` = all input values of a channel over
    the whole pass (examples x spatial positions), ``running_mean`` = their mean and
    ``running_var`` = their unbiased variance ``sum (v - mean)^2 / (n - 1)``, pooled over
    chunks exactly (not PyTorch's ``momentum=None`` average of per-chunk values, which
    weights chunks equally and averages per-chunk unbiased variances); old statistics
    are discarded; ``num_batches_tracked`` = the number of chunks. Hence when
    ``len(x) <= batch_size`` this is exactly what a single train-mode forward of all of
    ``x`` with ``momentum=None`` stores, and for BatchNorm layers with no BatchNorm
    before them it is that for any ``batch_size``; deeper layers see inputs normalised
    with each chunk's statistics, which shifts theirs slightly (by the chunk-to-chunk
    sampling noise of the earlier layers' statistics). Exact pooling of all of ``x``
    through every layer would need one pass per BatchNorm layer; pass a ``batch_size``
    of at least ``len(x)`` when memory allows.

    Momentum is never changed. The model is left in eval mode; a model without
    BatchNorm is only put in eval mode.
    """
    layers = batchnorm_layers(model)
    model.eval()
    if not layers:
        return
    moments = [Moments() for _ in layers]
    hooks = [layer.register_forward_pre_hook(moment) for layer, moment in zip(layers, moments)]
    chunks = max(1, math.ceil(len(x) / batch_size))
    try:
        for layer in layers:
            layer.train()
        for chunk in torch.tensor_split(x, chunks):
            model(chunk)
    finally:
        for hook in hooks:
            hook.remove()
        model.eval()
    for layer, moment in zip(layers, moments):
        if moment.count < 2:
            raise UserError(f"BatchNorm re-estimation needs at least 2 values per channel, got {moment.count}")
        layer.running_mean.copy_(moment.mean)
        layer.running_var.copy_(moment.m2 / (moment.count - 1))
        layer.num_batches_tracked.fill_(chunks)


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[None]:
    """Restore the model's state dict and every module's train/eval mode on exit."""
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield
    finally:
        model.load_state_dict(saved)
        for module, training in modes:
            module.training = training


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{key} must be one of {', '.join(choices)}, got {value!r}"
                        + did_you_mean(value, choices))


def needs_reestimation(model: nn.Module, bn: str, bn_examples: torch.Tensor | None) -> bool:
    _choice("bn", bn, BN_MODES)
    reestimate = bn == "reestimate" and bool(batchnorm_layers(model))
    if reestimate and bn_examples is None:
        raise UserError('the model has BatchNorm: pass bn_examples (fixed training inputs) to '
                        're-estimate its statistics, or bn="interpolate"')
    return reestimate


def _resolve_method(method: str, model: nn.Module, reestimate: bool) -> str:
    _choice("method", method, METHODS)
    if method == "auto":
        return "mlp" if mlp_applies(model) and not reestimate else "plain"
    if method == "mlp" and not mlp_applies(model):
        raise UserError('method="mlp" needs an nn.Sequential starting with nn.Flatten() then nn.Linear')
    if method in ("mlp", "vmap") and reestimate:
        raise UserError(f'method="{method}" cannot re-estimate BatchNorm statistics; use method="plain" '
                        'or bn="interpolate"')
    return method


def _plain_sums(model: nn.Module, state_a: State, state_b: State, splits: Mapping[str, Split],
                grid: np.ndarray, reestimate: bool, bn_examples: torch.Tensor | None, batch_size: int) -> Sums:
    """The reference: load each interpolated state, re-estimate BatchNorm, evaluate in eval mode."""
    loss = {name: np.zeros(len(grid)) for name in splits}
    wrong = {name: np.zeros(len(grid)) for name in splits}
    for i, alpha in enumerate(grid.tolist()):
        model.load_state_dict(interpolate(state_a, state_b, alpha))
        if reestimate:
            reestimate_batchnorm(model, bn_examples, batch_size)
        model.eval()
        for name, split in splits.items():
            loss[name][i], wrong[name][i] = forward_sums(model, split.x, split.y, batch_size)
    return {name: (loss[name], wrong[name]) for name in splits}


@torch.no_grad()
def evaluate_path(model: nn.Module, state_a: State, state_b: State, splits: dict[str, Split], *,
                  points: int = 25, bn: str = "reestimate", bn_examples: torch.Tensor | None = None,
                  batch_size: int = 2048, method: str = "auto") -> dict[str, np.ndarray]:
    """Loss and error of ``interpolate(state_a, state_b, a)`` for each a in ``alphas(points)``.

    Returns float64 arrays: ``"alpha"`` (P,), and for every split ``f"{split}_loss"`` (mean
    cross-entropy) and ``f"{split}_error"`` (1 - accuracy, a fraction), (P,) each, in eval mode.

    ``bn="reestimate"`` (default; needs ``bn_examples``, inputs on the model's device, when
    the model has BatchNorm): :func:`reestimate_batchnorm` on ``bn_examples`` at every
    point, endpoints included, in chunks of ``batch_size``. ``bn="interpolate"``: the
    interpolated running statistics. Without BatchNorm the two are the same.

    ``method``: ``"plain"`` loads and evaluates one point at a time (the reference);
    ``"mlp"``: the exact first-layer shortcut (landscape.fastpath.mlp_sums) for models
    starting with Flatten then Linear; ``"vmap"``: several points per call
    (landscape.fastpath.vmap_sums, for GPUs); ``"auto"``: ``"mlp"`` where it applies,
    else ``"plain"``. Neither fast path can re-estimate BatchNorm. The model's state and
    train/eval modes are restored afterwards.
    """
    grid = alphas(points)
    reestimate = needs_reestimation(model, bn, bn_examples)
    method = _resolve_method(method, model, reestimate)
    if any(len(split) == 0 for split in splits.values()):
        raise UserError("cannot evaluate on an empty split")
    with preserved(model):
        if method == "mlp":
            sums = mlp_sums(model, state_a, state_b, splits, grid, batch_size)
        elif method == "vmap":
            sums = vmap_sums(model, state_a, state_b, splits, grid, batch_size)
        else:
            sums = _plain_sums(model, state_a, state_b, splits, grid, reestimate, bn_examples, batch_size)
    curve = {"alpha": grid}
    for name, split in splits.items():
        loss, wrong = sums[name]
        curve[f"{name}_loss"] = loss / len(split)
        curve[f"{name}_error"] = wrong / len(split)
    return curve


def barriers(values: np.ndarray, alpha: np.ndarray) -> dict[str, float]:
    """Both barrier conventions of a curve ``E(a)`` sampled at ``alpha`` (from 0 to 1):

    - ``"interpolated"``: ``max_a E(a) - [(1 - a) E(0) + a E(1)]``, the height above the
      straight line between the endpoints (never negative: it is 0 at the endpoints);
    - ``"mean"``: ``max_a E(a) - (E(0) + E(1)) / 2``, Frankle et al. (2020)'s instability
      (the error barrier over the mean of the endpoints; at least ``|E(1) - E(0)| / 2``,
      so nonzero for a straight line between unequal endpoints).

    Neither bounds the other: a straight line has only a mean barrier, a bump near an
    endpoint is taller above the line than above the mean.
    """
    values, alpha = np.asarray(values, dtype=np.float64), np.asarray(alpha, dtype=np.float64)
    if values.ndim != 1 or values.shape != alpha.shape or len(alpha) < 2:
        raise UserError(f"a curve needs matching 1-D values and alphas, got shapes {values.shape} and {alpha.shape}")
    if alpha[0] != 0.0 or alpha[-1] != 1.0:
        raise UserError(f"alphas must run from 0 to 1, got {alpha[0]} to {alpha[-1]}")
    line = (1 - alpha) * values[0] + alpha * values[-1]
    return {"interpolated": float(np.max(values - line)),
            "mean": float(np.max(values) - (values[0] + values[-1]) / 2)}


def curve_barriers(curve: dict) -> dict[str, dict[str, float]]:
    """:func:`barriers` of every ``f"{split}_loss"`` and ``f"{split}_error"`` of an
    :func:`evaluate_path` result, keyed by that name."""
    return {key: barriers(values, curve["alpha"]) for key, values in curve.items()
            if key.endswith(("_loss", "_error"))}


@torch.no_grad()
def example_losses(model: nn.Module, state: State, split: Split, *, bn_examples: torch.Tensor | None = None,
                   bn: str = "reestimate", batch_size: int = 2048) -> np.ndarray:
    """Per-example cross-entropy (float64, (N,)) of the network ``state`` on ``split``, in eval
    mode, BatchNorm re-estimated on ``bn_examples`` first when ``bn="reestimate"`` (as
    :func:`evaluate_path` does at each point). The model's state and modes are restored."""
    reestimate = needs_reestimation(model, bn, bn_examples)
    with preserved(model):
        model.load_state_dict(state)
        if reestimate:
            reestimate_batchnorm(model, bn_examples, batch_size)
        model.eval()
        losses = [cross_entropy(model(x), y)
                  for x, y in zip(split.x.split(batch_size), split.y.split(batch_size))]
    return torch.cat(losses).cpu().numpy()


def midpoint_barriers(model: nn.Module, state_a: State, state_b: State, split: Split, *,
                      bn_examples: torch.Tensor | None = None, bn: str = "reestimate",
                      batch_size: int = 2048) -> np.ndarray:
    """Per-example midpoint barrier (DESIGN §4, per-example LMC), float64 (N,):
    ``B_i = l_i(w(1/2)) - (l_i(w_A) + l_i(w_B)) / 2`` with ``l_i`` the cross-entropy of
    example i from :func:`example_losses` (same BatchNorm handling at all three points).
    Its mean over the split is the whole-split loss barrier at a = 1/2 (mean baseline).
    """
    def losses(state: State) -> np.ndarray:
        return example_losses(model, state, split, bn_examples=bn_examples, bn=bn, batch_size=batch_size)
    return losses(interpolate(state_a, state_b, 0.5)) - (losses(state_a) + losses(state_b)) / 2
