"""Permutation alignment of two networks: weight matching and activation matching.

Permuting the hidden units of a network (the rows of a layer's weight and bias, the
entries of its BatchNorm, and the matching input columns of the layers that read it)
leaves its function unchanged. Two independently trained networks are usually far apart
on a linear path but much closer after one of them is permuted to line up with the other
(Entezari, Sedghi, Saukh & Neyshabur 2022; Ainsworth, Hayase & Srinivasa 2023, "Git
Re-Basin: Merging Models modulo Permutation Symmetries", ICLR).

- :func:`permutation_spec`: which permutation group acts on each axis of each entry of a
  model's state dict.
- :func:`permute_state`, :func:`permute_mask`: apply permutations.
- :func:`weight_matching`: Git Re-Basin's Algorithm 1 (coordinate descent of linear
  assignments on the weights).
- :func:`activation_matching`: one linear assignment per group on the correlation of the
  two networks' activations (Git Re-Basin §3.1; Jordan et al. 2023, "REPAIR").

Convention: ``perms[g]`` is a LongTensor of the group's size with ``perms[g][i]`` = the
index in B of the unit that goes to position i, so that ``permute_state(spec, state_b,
perms)`` is B aligned to A (along an axis acted on by g, ``aligned = b.index_select(axis,
perms[g])``).
"""

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.func import functional_call

from imp.base.errors import UserError
from imp.level import State
from imp.models import MLP, VGG, BasicBlock, ConvNet, ResNet
from landscape.lmc import preserved

Perms = dict[str, torch.Tensor]
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
_WEIGHTED = (nn.Linear, nn.Conv2d)
# modules that act on each channel alike, so commute with permutations of channels
_CHANNELWISE = (nn.ReLU, nn.Flatten, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity)
SUPPORTED = ("mlp", "lenet_300_100", "conv2", "conv4", "conv6", "vgg11", "vgg16", "resnet20", "resnet32",
             "resnet56", "resnet18", "nn.Sequential of Linear/Conv2d/BatchNorm/ReLU/Flatten/pooling")
CORRELATION_EPS = 1e-8  # added to the product of standard deviations in activation matching


@dataclass(frozen=True)
class PermutationSpec:
    """The permutation symmetries of a model's state dict.

    ``sizes``: group name -> number of units it permutes (a hidden layer's width, a
    conv's output channels, a ResNet stage's residual-stream width).
    ``axes``: every floating state entry -> the group acting on each of its axes (None:
    not permuted). An axis of length ``k * sizes[g]`` holds ``k`` consecutive entries per
    unit (a Linear layer's columns after flattening ``sizes[g]`` channels of ``k``
    spatial positions each, channel-major as ``torch.flatten`` orders them); unit i owns
    entries ``i*k .. (i+1)*k - 1``.
    ``parameters``: the entries that are parameters (not BatchNorm running statistics);
    weight matching uses only these.
    ``activations``: group -> names of the modules whose outputs, after a ReLU, are the
    group's activations (channel axis 1); several for a residual stream.
    """

    model: str
    sizes: dict[str, int]
    axes: dict[str, tuple[str | None, ...]]
    parameters: frozenset[str]
    activations: dict[str, tuple[str, ...]]


class _Builder:
    """Collects axes, sizes and activation points while a model's layers are walked."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = dict(model.named_modules())
        self.sizes: dict[str, int] = {}
        self.axes: dict[str, tuple[str | None, ...]] = {}
        self.activations: dict[str, list[str]] = {}

    def weighted(self, name: str, out: str | None, inp: str | None) -> None:
        """A Linear or Conv2d layer from channels of group ``inp`` to group ``out``."""
        layer = self.modules[name]
        self.axes[f"{name}.weight"] = (out, inp) + (None,) * (layer.weight.dim() - 2)
        if layer.bias is not None:
            self.axes[f"{name}.bias"] = (out,)
        if out is not None:
            self.sizes[out] = layer.weight.shape[0]

    def batchnorm(self, name: str, group: str | None) -> None:
        for key in ("weight", "bias", "running_mean", "running_var"):
            self.axes[f"{name}.{key}"] = (group,)

    def point(self, group: str | None, name: str, replace: bool = False) -> None:
        if group is not None:
            self.activations[group] = [name] if replace else self.activations.get(group, []) + [name]


def _chain(model: nn.Module, builder: _Builder, names: list[str]) -> None:
    """Layers applied one after another (``names``: Linear, Conv2d and BatchNorm layers in
    forward order, with only channel-wise modules between them). Each Linear/Conv2d but
    the last starts a group named after it; a BatchNorm takes the current group."""
    last = [n for n in names if isinstance(builder.modules[n], _WEIGHTED)][-1]
    group = None
    for name in names:
        if isinstance(builder.modules[name], _BATCHNORM):
            builder.batchnorm(name, group)
            builder.point(group, name, replace=True)
        else:
            out = None if name == last else name
            builder.weighted(name, out, group)
            builder.point(out, name)
            group = out


def _resnet(model: ResNet, builder: _Builder) -> None:
    """One group per residual stream (a new one after each downsampling shortcut; the
    stem, every block's conv2/bn2 and downsample output, and the inputs of every layer
    reading the stream share it), and one per block for its inner channels."""
    streams = 1
    stream = "stream1"
    builder.weighted("conv1", stream, None)
    builder.batchnorm("bn1", stream)
    builder.point(stream, "bn1")
    for s in range(1, model.stages + 1):
        for j, block in enumerate(getattr(model, f"layer{s}")):
            if not isinstance(block, BasicBlock):
                raise UserError(f"cannot align {type(block).__name__} blocks; only BasicBlock")
            p = f"layer{s}.{j}"
            out = stream
            if block.downsample is not None:
                streams += 1
                out = f"stream{streams}"
                builder.weighted(f"{p}.downsample.0", out, stream)
                builder.batchnorm(f"{p}.downsample.1", out)
            builder.weighted(f"{p}.conv1", f"{p}.conv1", stream)
            builder.batchnorm(f"{p}.bn1", f"{p}.conv1")
            builder.point(f"{p}.conv1", f"{p}.bn1")
            builder.weighted(f"{p}.conv2", out, f"{p}.conv1")
            builder.batchnorm(f"{p}.bn2", out)
            builder.point(out, p)  # the block's output is already after its ReLU
            stream = out
    builder.weighted("fc", None, stream)


def _sequential_names(model: nn.Sequential) -> list[str]:
    names = []
    for name, module in model.named_children():
        if isinstance(module, _WEIGHTED + _BATCHNORM):
            names.append(name)
        elif not isinstance(module, _CHANNELWISE):
            raise UserError(f"cannot align an nn.Sequential holding {type(module).__name__}; "
                            f"supported models: {', '.join(SUPPORTED)}")
    return names


def permutation_spec(model: nn.Module) -> PermutationSpec:
    """The :class:`PermutationSpec` of ``model``: hidden units of each Linear layer and output
    channels of each conv (with its BatchNorm) form a group; the inputs and the classes
    are never permuted. ResNets: see :func:`_resnet`. UserError for other architectures."""
    builder = _Builder(model)
    if isinstance(model, MLP):
        _chain(model, builder, [f"fc{i}" for i in range(1, model.hidden_layers + 1)] + ["fc"])
    elif isinstance(model, ConvNet):
        _chain(model, builder, [f"conv{i}" for i in range(1, model.convs + 1)] + ["fc1", "fc2", "fc"])
    elif isinstance(model, VGG):
        _chain(model, builder, [f"features.{n}" for n in _sequential_names(model.features)] + ["fc"])
    elif isinstance(model, ResNet):
        _resnet(model, builder)
    elif isinstance(model, nn.Sequential) and any(isinstance(m, _WEIGHTED) for m in model):
        _chain(model, builder, _sequential_names(model))
    else:
        raise UserError(f"cannot align {type(model).__name__} models; supported models: {', '.join(SUPPORTED)}")
    spec = PermutationSpec(model=type(model).__name__, sizes=builder.sizes, axes=builder.axes,
                           parameters=frozenset(name for name, _ in model.named_parameters()),
                           activations={g: tuple(names) for g, names in builder.activations.items()})
    _check_state(spec, model.state_dict())
    return spec


def _check_state(spec: PermutationSpec, state: State) -> None:
    """UserError unless the floating entries of ``state`` are exactly the spec's, with
    axes divisible by their groups' sizes."""
    floating = {name for name, tensor in state.items() if tensor.is_floating_point()}
    if floating != spec.axes.keys():
        raise UserError(f"the state does not fit the {spec.model} permutation spec; entries differ: "
                        f"{sorted(floating ^ spec.axes.keys())[:6]}")
    for name, groups in spec.axes.items():
        shape = state[name].shape
        if len(shape) != len(groups) or any(g is not None and n % spec.sizes[g] for n, g in zip(shape, groups)):
            raise UserError(f"{name} has shape {tuple(shape)}, which does not fit the {spec.model} permutation spec")


def _check_pair(spec: PermutationSpec, state_a: State, state_b: State) -> None:
    _check_state(spec, state_a)
    _check_state(spec, state_b)
    for name in spec.axes:
        if state_a[name].shape != state_b[name].shape:
            raise UserError(f"{name} has shape {tuple(state_a[name].shape)} in one state and "
                            f"{tuple(state_b[name].shape)} in the other")


def _permute_axis(tensor: torch.Tensor, axis: int, perm: torch.Tensor) -> torch.Tensor:
    """``tensor`` with its units along ``axis`` reordered: unit i of the result is unit
    ``perm[i]`` of the input (a unit = ``len(axis) / len(perm)`` consecutive entries)."""
    block = tensor.shape[axis] // len(perm)
    index = (perm.to(tensor.device)[:, None] * block + torch.arange(block, device=tensor.device)).reshape(-1)
    return tensor.index_select(axis, index)


def _check_perms(spec: PermutationSpec, perms: Perms) -> None:
    if perms.keys() != spec.sizes.keys():
        raise UserError(f"permutations do not fit the {spec.model} spec; groups differ: "
                        f"{sorted(perms.keys() ^ spec.sizes.keys())}")
    for group, perm in perms.items():
        if perm.shape != (spec.sizes[group],) or not torch.equal(perm.sort().values.cpu(), torch.arange(len(perm))):
            raise UserError(f"perms[{group!r}] is not a permutation of {spec.sizes[group]} units")


def _permuted(spec: PermutationSpec, name: str, tensor: torch.Tensor, perms: Perms,
              skip_axis: int | None = None) -> torch.Tensor:
    for axis, group in enumerate(spec.axes[name]):
        if group is not None and axis != skip_axis:
            tensor = _permute_axis(tensor, axis, perms[group])
    return tensor


def permute_state(spec: PermutationSpec, state: State, perms: Perms) -> State:
    """A new state with ``perms`` applied to every floating entry (module docstring for the
    convention); other entries (num_batches_tracked) are copied."""
    _check_state(spec, state)
    _check_perms(spec, perms)
    return {name: _permuted(spec, name, tensor, perms) if name in spec.axes else tensor.clone()
            for name, tensor in state.items()}


def permute_mask(spec: PermutationSpec, mask: State, perms: Perms) -> State:
    """A pruning mask (name -> bool tensor, over a subset of the weights) moved with its
    weights: ``permute_mask(spec, m, p)[k] * permute_state(spec, s, p)[k]`` equals the
    permuted ``m[k] * s[k]``."""
    _check_perms(spec, perms)
    unknown = sorted(set(mask) - spec.axes.keys())
    if unknown:
        raise UserError(f"the mask has entries the {spec.model} spec does not know: {unknown[:6]}")
    return {name: _permuted(spec, name, tensor, perms) for name, tensor in mask.items()}


def identity_perms(spec: PermutationSpec) -> Perms:
    """Every group left in place (``perms[g] = arange(size)``)."""
    return {group: torch.arange(size) for group, size in spec.sizes.items()}


def matching_objective(spec: PermutationSpec, state_a: State, state_b: State, perms: Perms) -> float:
    """Weight matching's objective ``sum_k <A_k, pi(B)_k>`` over the parameters ``k`` that
    any group acts on (float64; running statistics excluded)."""
    _check_pair(spec, state_a, state_b)
    _check_perms(spec, perms)
    total = 0.0
    for name in _matched(spec):
        aligned = _permuted(spec, name, state_b[name], perms)
        total += float((state_a[name].double() * aligned.double()).sum())
    return total


def _matched(spec: PermutationSpec) -> list[str]:
    return [name for name, groups in spec.axes.items()
            if name in spec.parameters and any(g is not None for g in groups)]


def _assign(similarity: torch.Tensor) -> torch.Tensor:
    """The permutation maximising ``sum_i similarity[i, perm[i]]`` (Hungarian algorithm)."""
    rows, cols = linear_sum_assignment(similarity.cpu().numpy(), maximize=True)
    return torch.as_tensor(cols[np.argsort(rows)], dtype=torch.long)


def weight_matching(spec: PermutationSpec, state_a: State, state_b: State, *, max_iter: int = 100,
                    seed: int = 0) -> Perms:
    """Permutations of B that bring its weights close to A's: Git Re-Basin (Ainsworth et al.
    2023), Algorithm 1.

    Maximises ``sum_k <A_k, pi(B)_k>`` over the parameters k (weights, biases, BatchNorm
    affine parameters; not running statistics) by coordinate descent from the identity:
    each pass visits the groups in a random order (``torch.randperm`` drawn from a
    generator seeded by ``seed``); for group g, with every other group's current
    permutation applied, the objective is linear in g's permutation P,
    ``sum_k <A_k, P B'_k>`` over the entries k that g acts on (along g's axis, the other
    axes flattened), so the best P is a linear assignment of the similarity
    ``S = sum_k A_k B'_k^T`` (float64, ``linear_sum_assignment(maximize=True)``). The new
    P is kept only if it raises g's term by more than ``1e-12 * (1 + |old|)``, so the
    objective never falls and ties cannot cycle. Stops after a pass that changes no
    permutation (a fixed point) or after ``max_iter`` passes. Returns ``perms`` in the
    module's convention: ``permute_state(spec, state_b, perms)`` is B aligned to A.
    """
    _check_pair(spec, state_a, state_b)
    if max_iter < 1:
        raise UserError(f"max_iter must be positive, got {max_iter}")
    names = _matched(spec)
    a = {name: state_a[name].detach().double().cpu() for name in names}
    b = {name: state_b[name].detach().double().cpu() for name in names}
    touching = {g: [(name, axis) for name in names for axis, h in enumerate(spec.axes[name]) if h == g]
                for g in spec.sizes}
    perms = identity_perms(spec)
    groups = list(spec.sizes)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(max_iter):
        changed = False
        for index in torch.randperm(len(groups), generator=generator).tolist():
            g, n = groups[index], spec.sizes[groups[index]]
            similarity = torch.zeros(n, n, dtype=torch.float64)
            for name, axis in touching[g]:
                other = _permuted(spec, name, b[name], perms, skip_axis=axis)
                similarity += a[name].movedim(axis, 0).reshape(n, -1) @ other.movedim(axis, 0).reshape(n, -1).T
            candidate = _assign(similarity)
            old = float(similarity[torch.arange(n), perms[g]].sum())
            new = float(similarity[torch.arange(n), candidate].sum())
            if new > old + 1e-12 * (1 + abs(old)):
                perms[g], changed = candidate, True
        if not changed:
            break
    return perms


class _CrossMoments:
    """Per-point sums for the correlation of two networks' activations (float64)."""

    def __init__(self) -> None:
        self.count, self.sum_a, self.sum_b, self.sum_aa, self.sum_bb, self.sum_ab = 0, 0.0, 0.0, 0.0, 0.0, 0.0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """``a``, ``b``: activations with the channel on axis 1."""
        a, b = (t.movedim(1, -1).reshape(-1, t.shape[1]).double() for t in (a, b))
        self.count += len(a)
        self.sum_a, self.sum_b = self.sum_a + a.sum(0), self.sum_b + b.sum(0)
        self.sum_aa, self.sum_bb = self.sum_aa + (a * a).sum(0), self.sum_bb + (b * b).sum(0)
        self.sum_ab = self.sum_ab + a.T @ b

    def correlation(self) -> torch.Tensor:
        mean_a, mean_b = self.sum_a / self.count, self.sum_b / self.count
        std_a = (self.sum_aa / self.count - mean_a ** 2).clamp_min(0).sqrt()
        std_b = (self.sum_bb / self.count - mean_b ** 2).clamp_min(0).sqrt()
        covariance = self.sum_ab / self.count - mean_a[:, None] * mean_b[None, :]
        return covariance / (std_a[:, None] * std_b[None, :] + CORRELATION_EPS)


def _activations(model: nn.Module, state: State, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """ReLU of the outputs of the modules ``names`` on inputs ``x``, for ``state``."""
    modules = dict(model.named_modules())
    found: dict[str, torch.Tensor] = {}
    hooks = [modules[name].register_forward_hook(
        lambda module, inputs, output, name=name: found.__setitem__(name, torch.relu(output)))
        for name in names]
    try:
        functional_call(model, state, (x,))
    finally:
        for hook in hooks:
            hook.remove()
    return found


@torch.no_grad()
def activation_matching(model: nn.Module, spec: PermutationSpec, state_a: State, state_b: State,
                        x: torch.Tensor, batch_size: int = 512) -> Perms:
    """Permutations of B that line its units up with A's by their activations on ``x``.

    For each group, the activations are the group's points after the ReLU (as in Git
    Re-Basin, Ainsworth et al. 2023 §3.1): a hidden layer's ReLU output (after its
    BatchNorm, if any), a ResNet block's inner ReLU output, and for a residual stream
    every point that carries it (the stem's ReLU output and each block's output). At each
    point, with every example and spatial position one sample (eval mode), the Pearson
    correlation ``C[i, j] = cov(a_i, b_j) / (std(a_i) std(b_j) + 1e-8)`` of unit i of A
    and unit j of B is pooled over ``x`` in chunks of ``batch_size`` (float64); a group's
    similarity is the sum of its points' correlation matrices, and its permutation one
    linear assignment maximising it (Jordan et al. 2023 use the correlation; Git
    Re-Basin the uncentred inner product). Dead units (std 0 on ``x``) correlate 0
    with everything, so they are matched among themselves arbitrarily. ``model`` is run
    with each state by ``torch.func.functional_call`` and left as it was. Returns ``perms`` in the module's convention.
    """
    _check_pair(spec, state_a, state_b)
    names = [name for points in spec.activations.values() for name in points]
    moments = {name: _CrossMoments() for name in names}
    with preserved(model):
        model.eval()
        for chunk in x.split(batch_size):
            found_a = _activations(model, state_a, chunk, names)
            found_b = _activations(model, state_b, chunk, names)
            for name in names:
                moments[name].add(found_a[name], found_b[name])
    return {group: _assign(sum(moments[name].correlation() for name in points))
            for group, points in spec.activations.items()}
