"""Masks and pruning as pure functions of weights and masks.

A mask maps the name of a prunable tensor (``model.named_parameters()`` naming) to a
bool tensor of its shape: True = kept. Only the tensors in the mask are ever pruned;
biases, BatchNorm parameters and excluded tensors are simply absent from it.

Definitions (Frankle & Carbin 2019; DESIGN.md §4):

* Magnitude pruning at rate ``f`` removes exactly ``k = round(f * remaining)`` of the
  weights still kept in a *group* of tensors, the smallest ``|w|`` first. Rounding is
  half up. Ties are broken by position: the tensors are concatenated in the mask's order
  (the model's registration order), flattened row-major, and among equal magnitudes the
  earlier position is pruned first. Weights already pruned are never candidates, so
  masks are nested.
* Global pruning puts every tensor without a rate override in one group; layerwise
  pruning makes each tensor its own group. A tensor with a rate override
  (``layer_fractions``, e.g. the output layer at half the rate as in the LTH paper) is
  always its own group, pruned at its own rate.
* The *allocation* (``prune.allocation``) decides how many weights each tensor of a
  shared group keeps; the rule names used here are ``"global"`` (one magnitude
  threshold), ``"layerwise"`` (``prune.allocation = "uniform"``: every tensor loses the
  same fraction), ``"erk"`` and ``"lamp"``:

  - ERK (Evci et al. 2020, "Rigging the lottery: making all tickets winners", §3): the
    density of a tensor of shape ``s`` is ``eps * sum(s) / prod(s)`` (for a convolution
    ``(n_out + n_in + k_h + k_w) / (n_out n_in k_h k_w)``, for a linear layer the
    Erdős-Rényi ``(n_out + n_in) / (n_out n_in)``), with ``eps`` chosen so that the group
    keeps its count; a tensor whose density would exceed what it keeps now (1 when
    dense) keeps everything it has and ``eps`` is solved again for the others
    (:func:`erk_counts`). Each tensor then loses its smallest weights.
  - LAMP (Lee et al. 2021, "Layer-adaptive sparsity for the magnitude-based pruning",
    eq. 2): with a tensor's kept weights sorted by ``|w|`` ascending (ties by position),
    ``score(u) = w_u^2 / sum_{v >= u} w_v^2``; the group loses the weights of lowest
    score (ties by position). A tensor's largest weight scores 1, so no tensor is emptied
    before every other weight is gone.
* One-shot pruning goes from a start mask straight to the same number of kept weights
  per group as a target mask, by magnitude.
* Random pruning keeps the same number of weights as a target mask, chosen uniformly
  at random, per tensor (``layerwise``) or over all tensors together (``global``).
"""

import math
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

import torch
from torch import nn

from imp.base.errors import UserError
from imp.models import prunable_names

Mask = dict[str, torch.Tensor]
Weights = Mapping[str, torch.Tensor]


def round_half_up(x: float) -> int:
    """``round`` as taught in school (Python's ``round`` goes to the even neighbour)."""
    return math.floor(x + 0.5)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatchcase(name, pattern) for pattern in patterns)


def _check_patterns(patterns: Iterable[str], names: list[str], key: str) -> None:
    for pattern in patterns:
        if not any(fnmatchcase(name, pattern) for name in names):
            raise UserError(f"{key} {pattern!r} matches no prunable tensor; "
                            f"this model's are: {', '.join(names)}")


def prunable_tensors(model: nn.Module, exclude: Iterable[str] = (),
                     layer_fractions: Mapping[str, float] | None = None) -> list[str]:
    """The names of ``model``'s Conv/Linear weights not matched by an ``exclude`` pattern.

    Patterns are shell-style (``fnmatch``, case-sensitive). A pattern that matches no
    tensor is an error naming the tensors there are, so a typo never silently prunes
    what it meant to spare; so is a rate override on an excluded tensor.
    """
    names = prunable_names(model)
    exclude = list(exclude)
    _check_patterns(exclude, names, "prune.exclude pattern")
    kept = [name for name in names if not _matches(name, exclude)]
    if not kept:
        raise UserError("prune.exclude leaves no tensor to prune")
    _check_patterns(layer_fractions or {}, kept, "prune.layer_fractions pattern")
    return kept


def full_mask(weights: Weights, names: Iterable[str]) -> Mask:
    """A mask keeping every weight of the tensors ``names``."""
    return {name: torch.ones_like(weights[name], dtype=torch.bool) for name in names}


def kept(mask: Mask) -> int:
    return sum(int(m.sum()) for m in mask.values())


def size(mask: Mask) -> int:
    return sum(m.numel() for m in mask.values())


def density(mask: Mask) -> float:
    """The fraction of the mask's weights kept."""
    return kept(mask) / max(size(mask), 1)


RULES = ("global", "layerwise", "erk", "lamp")
SHARED = ("global", "erk", "lamp")  # rules that prune the tensors without an override as one group


def groups(names: Iterable[str], strategy: str, fraction: float,
           layer_fractions: Mapping[str, float] | None = None) -> list[tuple[list[str], float]]:
    """The groups pruned together and each one's rate (see the module docstring).

    ``strategy`` is one of :data:`RULES`. A tensor matched by several override patterns
    takes the first pattern's rate.
    """
    overrides, shared = [], []
    for name in names:
        rate = next((r for p, r in (layer_fractions or {}).items() if fnmatchcase(name, p)), None)
        (overrides if rate is not None else shared).append((name, rate))
    out = [([name], rate) for name, rate in overrides]
    if strategy in SHARED:
        if shared:
            out.append(([name for name, _ in shared], fraction))
    elif strategy == "layerwise":
        out += [([name], fraction) for name, _ in shared]
    else:
        raise ValueError(f"unknown pruning strategy {strategy!r}")
    return out


def _remove_smallest(weights: Weights, mask: Mask, names: list[str], count: int) -> Mask:
    """Copy of ``mask`` for ``names`` with the ``count`` smallest kept ``|w|`` removed."""
    flat_mask = torch.cat([mask[n].reshape(-1).cpu() for n in names])
    if count <= 0:
        return {n: mask[n].clone() for n in names}
    magnitude = torch.cat([weights[n].detach().reshape(-1).abs().cpu().float() for n in names])
    candidates = flat_mask.nonzero().squeeze(1)
    if count > len(candidates):
        raise ValueError(f"cannot remove {count} of {len(candidates)} kept weights")
    order = torch.argsort(magnitude[candidates], stable=True)
    flat_mask = flat_mask.clone()
    flat_mask[candidates[order[:count]]] = False
    return split_flat(flat_mask, names, mask)


def erk_counts(shapes: list[tuple[int, ...]], total: int, caps: list[int]) -> list[int]:
    """The ERK kept counts of tensors of ``shapes`` that keep ``total`` weights in all, none
    more than its cap (what it keeps now).

    Ideal counts ``c_i = min(cap_i, eps * sum(s_i))`` (``sum(s_i) = density factor x
    size``), ``eps`` solved with the capped tensors set aside until none more is capped;
    then each count is rounded down and the weights left over go one each to the largest
    fractional parts (ties to the earlier tensor), so the counts sum to ``total`` exactly.
    """
    if not 0 <= total <= sum(caps):
        raise ValueError(f"cannot keep {total} of {sum(caps)} weights")
    raw = [float(sum(shape)) for shape in shapes]
    capped: set[int] = set()
    while True:
        free = [i for i in range(len(shapes)) if i not in capped]
        budget = total - sum(caps[i] for i in capped)
        eps = budget / sum(raw[i] for i in free) if free else 0.0
        over = {i for i in free if eps * raw[i] > caps[i]}
        if not over:
            break
        capped |= over
    ideal = [float(caps[i]) if i in capped else eps * raw[i] for i in range(len(shapes))]
    counts = [min(math.floor(c), caps[i]) for i, c in enumerate(ideal)]
    left = total - sum(counts)
    by_remainder = sorted((i for i in range(len(shapes)) if counts[i] < caps[i]),
                          key=lambda i: (-(ideal[i] - counts[i]), i))
    for i in by_remainder[:left]:
        counts[i] += 1
    return counts


def lamp_scores(weights: Weights, mask: Mask, name: str) -> torch.Tensor:
    """LAMP scores (float64, flat, row-major) of tensor ``name``'s kept weights; pruned
    positions score +inf (never candidates). See the module docstring."""
    keep = mask[name].reshape(-1).cpu()
    w = weights[name].detach().reshape(-1).cpu()
    positions = keep.nonzero().squeeze(1)
    order = positions[torch.argsort(w[positions].abs().float(), stable=True)]
    squares = w[order].double() ** 2
    below = squares.flip(0).cumsum(0).flip(0)  # sum over v >= u in the sorted order
    out = torch.full((keep.numel(),), float("inf"), dtype=torch.float64)
    out[order] = torch.where(below > 0, squares / below.clamp_min(1e-300), torch.zeros_like(squares))
    return out


def prune_group(weights: Weights, mask: Mask, names: list[str], count: int, strategy: str) -> Mask:
    """Copy of ``mask`` for the group ``names`` with ``count`` kept weights removed as the
    rule ``strategy`` allocates them (one tensor, or "global"/"layerwise": by magnitude)."""
    if len(names) == 1 or strategy not in ("erk", "lamp"):
        return _remove_smallest(weights, mask, names, count)
    have = [int(mask[n].sum()) for n in names]
    if strategy == "erk":
        want = erk_counts([tuple(mask[n].shape) for n in names], sum(have) - count, have)
        out: Mask = {}
        for name, h, k in zip(names, have, want):
            out.update(_remove_smallest(weights, mask, [name], h - k))
        return out
    if count > sum(have):
        raise ValueError(f"cannot remove {count} of {sum(have)} kept weights")
    score = torch.cat([lamp_scores(weights, mask, n) for n in names])
    flat = torch.cat([mask[n].reshape(-1).cpu() for n in names]).clone()
    flat[torch.argsort(score, stable=True)[:count]] = False
    return split_flat(flat, names, mask)


def split_flat(flat: torch.Tensor, names: list[str], like: Mask) -> Mask:
    """A flat bool vector over ``names`` (in order) back into tensors shaped like ``like``'s."""
    out, start = {}, 0
    for name in names:
        n = like[name].numel()
        out[name] = flat[start:start + n].reshape(like[name].shape).to(like[name].device)
        start += n
    return out


def magnitude_prune(weights: Weights, mask: Mask, fraction: float, strategy: str = "global",
                    layer_fractions: Mapping[str, float] | None = None) -> Mask:
    """One level of magnitude pruning: the next, nested mask (``mask`` is not modified)."""
    out: Mask = {}
    for names, rate in groups(mask, strategy, fraction, layer_fractions):
        remaining = sum(int(mask[n].sum()) for n in names)
        out.update(prune_group(weights, mask, names, round_half_up(rate * remaining), strategy))
    return {name: out[name] for name in mask}


def oneshot_prune(weights: Weights, start: Mask, target: Mask, strategy: str = "global",
                  layer_fractions: Mapping[str, float] | None = None) -> Mask:
    """Prune ``start`` by magnitude in one step to ``target``'s kept count in every group.

    The groups are those of ``strategy`` and ``layer_fractions`` (rates do not matter
    here), so one-shot global pruning matches the trunk's total per group and one-shot
    layerwise pruning its count per tensor; ERK and LAMP allocate the group's total anew
    from ``start`` (one-shot ERK and one-shot LAMP).
    """
    out: Mask = {}
    for names, _rate in groups(start, strategy, 0.5, layer_fractions):
        have = sum(int(start[n].sum()) for n in names)
        want = sum(int(target[n].sum()) for n in names)
        out.update(prune_group(weights, start, names, have - want, strategy))
    return {name: out[name] for name in start}


def random_mask(target: Mask, generator: torch.Generator, layerwise: bool = True) -> Mask:
    """A uniformly random mask with ``target``'s kept count per tensor or in total."""
    names = list(target)
    if layerwise:
        return {name: _random_keep(target[name], int(target[name].sum()), generator) for name in names}
    flat = torch.cat([target[n].reshape(-1).cpu() for n in names])
    return split_flat(_random_keep(flat, int(flat.sum()), generator), names, target)


def _random_keep(like: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    keep = torch.zeros(like.numel(), dtype=torch.bool)
    keep[torch.randperm(like.numel(), generator=generator)[:count]] = True
    return keep.reshape(like.shape).to(like.device)


def apply_mask(model: nn.Module, mask: Mask) -> None:
    """Set the pruned weights of ``model`` to exactly zero, in place."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, keep in mask.items():
            parameters[name].masked_fill_(~keep.to(parameters[name].device), 0.0)


class MaskEnforcer:
    """Called after every optimiser step: re-zeroes the pruned weights.

    Whatever the optimiser did to them (momentum, Adam moments, weight decay), pruned
    weights are exactly zero (0.0 or -0.0) after each step, so the network trained is the
    masked one.
    """

    def __init__(self, model: nn.Module, mask: Mask):
        parameters = dict(model.named_parameters())
        # multiplying by a 0/1 mask of the weights' dtype is several times faster than
        # masked_fill_ with a bool mask in the hot loop (0.02 vs 0.77 ms on LeNet's first layer)
        self.pairs = [(parameters[name], keep.to(parameters[name].device, parameters[name].dtype))
                      for name, keep in mask.items() if not bool(keep.all())]

    def __call__(self, model: nn.Module) -> None:
        if self.pairs:  # one multi-tensor kernel for all of them (a launch per tensor on a GPU otherwise)
            with torch.no_grad():
                torch._foreach_mul_([parameter for parameter, _ in self.pairs], [keep for _, keep in self.pairs])
