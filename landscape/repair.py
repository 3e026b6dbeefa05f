"""REPAIR: renormalising the channels of an interpolated network.

Jordan, Sedghi, Saukh, Entezari & Neyshabur (2023), "REPAIR: REnormalizing Permuted
Activations for Interpolation Repair" (ICLR): the channels of ``w(a) = (1 - a) w_A + a w_B``
lose variance ("variance collapse") even when A and B are aligned. REPAIR rescales each
channel of the interpolated network so that its mean and standard deviation over a fixed
batch are the interpolation of the endpoints':

    goal_mean_c = (1 - a) mu_A,c + a mu_B,c,      goal_std_c = (1 - a) s_A,c + a s_B,c,
    out_c <- (out_c - mu_c) / max(s_c, eps) * goal_std_c + goal_mean_c,

with ``mu_c``, ``s_c`` the mean and population standard deviation of channel c of the
interpolated network's output at that point, over every example and spatial position of
``repair_examples`` (eval mode), and ``eps`` = :data:`EPS` guarding channels that are
constant there (a pruned or dead unit; such a channel is set to its goal mean). The
points (:func:`repair_points`) are every BatchNorm layer's output and every hidden
Linear/Conv2d output that no BatchNorm follows; never the classifier. Points are measured
in forward order, each with the corrections of the earlier points in place, as in the
paper. The correction is applied as ``out * scale + shift`` (scale = goal_std /
max(s, eps), shift = goal_mean - mu * scale, float64), so at a = 0 and a = 1 it is the
identity exactly (scale 1, shift 0) wherever ``s >= eps``.
"""

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from imp.base.errors import UserError
from imp.data import Split
from imp.level import State
from landscape.align import permutation_spec
from landscape.fastpath import forward_sums, mix
from landscape.lmc import Moments, needs_reestimation, preserved, alphas, interpolate, reestimate_batchnorm

EPS = 1e-5  # smallest standard deviation divided by (activation units)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
_WEIGHTED = (nn.Linear, nn.Conv2d)
Statistics = dict[str, tuple[torch.Tensor, torch.Tensor]]  # point -> (mean, std), float64 (C,) each


def repair_points(model: nn.Module) -> list[str]:
    """Names of the modules whose outputs REPAIR renormalises: every BatchNorm layer, and
    every Linear/Conv2d layer but the last (the classifier) that is not directly followed
    by a BatchNorm. Only for the models :func:`landscape.align.permutation_spec` supports
    (UserError otherwise), which register their layers in forward order with each
    BatchNorm right after the layer it normalises."""
    permutation_spec(model)
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, _WEIGHTED + _BATCHNORM)]
    last = max(i for i, (_, m) in enumerate(layers) if isinstance(m, _WEIGHTED))
    points = []
    for i, (name, module) in enumerate(layers):
        followed_by_batchnorm = i + 1 < len(layers) and isinstance(layers[i + 1][1], _BATCHNORM)
        if isinstance(module, _BATCHNORM) or (i != last and not followed_by_batchnorm):
            points.append(name)
    return points


def _finish(moments: Moments) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and population standard deviation (float64) from pooled moments."""
    return moments.mean, (moments.m2 / moments.count).sqrt()


def _apply(output: torch.Tensor, correction: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    shape = (1, -1) + (1,) * (output.dim() - 2)  # channel axis 1
    scale, shift = (t.to(output.dtype).view(shape) for t in correction)
    return output * scale + shift


@contextlib.contextmanager
def _hooked(model: nn.Module, names: list[str], hook) -> Iterator[None]:
    """``hook(name, output) -> output or None`` as a forward hook on each module of ``names``."""
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(lambda module, inputs, output, name=name: hook(name, output))
               for name in names]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _chunks(x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, ...]:
    if len(x) < 2:
        raise UserError(f"REPAIR needs at least 2 repair examples, got {len(x)}")
    return torch.tensor_split(x, max(1, math.ceil(len(x) / batch_size)))


@torch.no_grad()
def point_statistics(model: nn.Module, names: list[str], x: torch.Tensor, batch_size: int) -> Statistics:
    """Mean and population std of each channel of each point's output over ``x`` (all
    examples and spatial positions, pooled over chunks exactly, float64), as the model is
    (no correction; mode as set by the caller)."""
    moments = {name: Moments() for name in names}

    def measure(name: str, output: torch.Tensor) -> None:
        moments[name](None, (output,))
    with _hooked(model, names, measure):
        for chunk in _chunks(x, batch_size):
            model(chunk)
    return {name: _finish(m) for name, m in moments.items()}


@torch.no_grad()
def repair_corrections(model: nn.Module, names: list[str], goals: Statistics, x: torch.Tensor,
                       batch_size: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``(scale, shift)`` per point (module docstring), measured in forward order, each with
    the earlier corrections applied. One pass when ``x`` fits one chunk (each point is
    measured on all of ``x`` the moment the forward reaches it); otherwise one pass per
    point (the first point not yet measured that the forward reaches)."""
    chunks = _chunks(x, batch_size)
    corrections: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    while len(corrections) < len(names):
        measuring: dict[str, Moments] = {}

        def finish(name: str) -> None:
            mean, std = _finish(measuring.pop(name))
            goal_mean, goal_std = goals[name]
            scale = goal_std / std.clamp_min(EPS)
            corrections[name] = (scale, goal_mean - mean * scale)

        def hook(name: str, output: torch.Tensor) -> torch.Tensor | None:
            if name not in corrections:
                if measuring and name not in measuring:
                    return None  # a point earlier in this pass is being measured
                measuring.setdefault(name, Moments())(None, (output,))
                if len(chunks) > 1:
                    return None
                finish(name)
            return _apply(output, corrections[name])

        done = len(corrections)
        with _hooked(model, names, hook):
            for chunk in chunks:
                model(chunk)
        for name in list(measuring):
            finish(name)
        if len(corrections) == done:
            missing = sorted(set(names) - corrections.keys())
            raise RuntimeError(f"the forward pass never reached the REPAIR points {missing}")
    return corrections


@contextlib.contextmanager
def corrected(model: nn.Module, corrections: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Within the block, each point's output ``out`` becomes ``out * scale + shift`` per
    channel, with ``(scale, shift)`` = ``corrections[point]`` (from :func:`repair_corrections`)."""
    with _hooked(model, list(corrections), lambda name, output: _apply(output, corrections[name])):
        yield


def _endpoint_statistics(model: nn.Module, state: State, names: list[str], reestimate: bool,
                         bn_examples: torch.Tensor | None, repair_examples: torch.Tensor,
                         batch_size: int) -> Statistics:
    model.load_state_dict(state)
    if reestimate:
        reestimate_batchnorm(model, bn_examples, batch_size)
    model.eval()
    return point_statistics(model, names, repair_examples, batch_size)


@torch.no_grad()
def repaired_path(model: nn.Module, state_a: State, state_b: State, splits: dict[str, Split], *,
                  points: int = 25, bn: str = "reestimate", bn_examples: torch.Tensor | None = None,
                  repair_examples: torch.Tensor, batch_size: int = 2048) -> dict[str, np.ndarray]:
    """:func:`landscape.lmc.evaluate_path` with REPAIR at every point: the same keys and
    meanings (``"alpha"``, ``f"{split}_loss"``, ``f"{split}_error"``, float64 (P,) each).

    At each a: load ``interpolate(state_a, state_b, a)``; re-estimate BatchNorm on
    ``bn_examples`` when ``bn="reestimate"`` (as evaluate_path does); then measure the
    REPAIR corrections on ``repair_examples`` (inputs on the model's device), their goals
    the statistics of the endpoints (each loaded and BatchNorm-handled the same way);
    then evaluate in eval mode with the corrections applied. ``batch_size`` chunks every
    pass. The model's state and train/eval modes are restored afterwards.
    """
    grid = alphas(points)
    reestimate = needs_reestimation(model, bn, bn_examples)
    if any(len(split) == 0 for split in splits.values()):
        raise UserError("cannot evaluate on an empty split")
    names = repair_points(model)
    loss = {name: np.zeros(len(grid)) for name in splits}
    wrong = {name: np.zeros(len(grid)) for name in splits}
    with preserved(model):
        ends = [_endpoint_statistics(model, state, names, reestimate, bn_examples, repair_examples, batch_size)
                for state in (state_a, state_b)]
        for i, alpha in enumerate(grid.tolist()):
            model.load_state_dict(interpolate(state_a, state_b, alpha))
            if reestimate:
                reestimate_batchnorm(model, bn_examples, batch_size)
            model.eval()
            goals = {name: (mix(ends[0][name][0], ends[1][name][0], alpha),
                            mix(ends[0][name][1], ends[1][name][1], alpha)) for name in names}
            corrections = repair_corrections(model, names, goals, repair_examples, batch_size)
            with corrected(model, corrections):
                for name, split in splits.items():
                    loss[name][i], wrong[name][i] = forward_sums(model, split.x, split.y, batch_size)
    curve = {"alpha": grid}
    for name, split in splits.items():
        curve[f"{name}_loss"] = loss[name] / len(split)
        curve[f"{name}_error"] = wrong[name] / len(split)
    return curve
