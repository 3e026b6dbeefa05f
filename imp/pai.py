"""Pruning at initialisation, as baselines of IMP: SNIP, GraSP and SynFlow.

Each baseline of level L prunes the network at the rewind point (the weights w_k, every
weight kept) in one go to the trunk's kept count of level L, in the groups the run prunes
by (all prunable tensors together for ``prune.allocation = "global"``, each tensor on its
own for ``"uniform"``, ``"erk"`` and ``"lamp"`` (the trunk's count per tensor), and each
``prune.layer_fractions`` pattern apart), keeping the
weights of highest importance (ties to the earlier position). The network then trains
exactly as the trunk's level does. Importances, for the prunable weights w:

* **SNIP** (Lee et al. 2019, "SNIP: single-shot network pruning based on connection
  sensitivity"): ``|g * w|``, g the gradient of the mean cross-entropy on a batch of
  :data:`PER_CLASS` training examples of every class.
* **GraSP** (Wang et al. 2020, "Picking winning tickets before training by preserving
  gradient flow"): ``w * (H g)``, with g and the Hessian H of the mean cross-entropy on
  such a batch over the weights of every convolution and linear layer, the logits
  divided by :data:`TEMPERATURE` as in the paper's code. The
  paper's score ``S = -w * (H g)`` removes the highest; keeping the highest ``w * H g`` is
  the same.
* **SynFlow** (Tanaka et al. 2020, "Pruning neural network without any data by
  iteratively conserving synaptic flow"): data-free. Every parameter is replaced by its
  absolute value (float64, BatchNorm in eval mode), the input is all ones, and
  ``R = sum of the outputs``; the importance is ``|dR/dw * w|``. It prunes in
  :data:`SYNFLOW_ROUNDS` rounds, round r keeping ``round(n (k/n)^(r/R))`` of the n weights
  of each group (k the target), re-scoring the masked network every round. Without biases
  the flow through every layer is the same (the paper's conservation law), so no layer is
  emptied before the others; biases and BatchNorm shifts add flow past a layer, and then
  that guarantee holds only approximately.

Batches are chosen with a generator seeded by the run's initialisation seed and the
level, so a baseline is the same every time it is computed.
"""

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imp.data import Dataset
from imp.pruning import Mask, groups, round_half_up, split_flat

PER_CLASS = 10  # examples of every class in the batch of SNIP and GraSP
TEMPERATURE = 200.0  # GraSP: logits / T (Wang et al. 2020's code)
SYNFLOW_ROUNDS = 100
METHODS = ("snip", "grasp", "synflow")


def batch(data: Dataset, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """:data:`PER_CLASS` training examples of every class (fewer where a class has fewer),
    chosen at random by ``generator``, in position order."""
    labels = data.train.y.cpu()
    chosen = []
    for label in labels.unique():
        positions = (labels == label).nonzero().squeeze(1)
        chosen.append(positions[torch.randperm(len(positions), generator=generator)[:PER_CLASS]])
    positions = torch.cat(chosen).sort().values.to(data.train.device)
    return data.train.batch(positions), data.train.y[positions]


def _weights(model: nn.Module, names: list[str]) -> list[torch.Tensor]:
    parameters = dict(model.named_parameters())
    return [parameters[name] for name in names]


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """``|g * w|`` of the prunable tensors ``names`` (float64)."""
    model = copy.deepcopy(model).double()
    weights = _weights(model, names)
    grads = torch.autograd.grad(F.cross_entropy(model(x.double()), y), weights)
    return {name: (g * w).abs().detach() for name, g, w in zip(names, grads, weights)}


def grasp(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """``w * (H g)`` of the prunable tensors ``names`` (float64), with g and H over the
    weights of every convolution and linear layer (pruned or not, as the paper's code
    does), so leaving a layer unpruned does not change the others' scores."""
    model = copy.deepcopy(model).double()
    every = [name for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1]
    weights = _weights(model, every)
    loss = F.cross_entropy(model(x.double()) / TEMPERATURE, y)
    grads = torch.autograd.grad(loss, weights, create_graph=True)
    fixed = [g.detach() for g in grads]
    hessian_g = dict(zip(every, torch.autograd.grad(sum((g * f).sum() for g, f in zip(grads, fixed)), weights)))
    parameters = dict(model.named_parameters())
    return {name: (parameters[name] * hessian_g[name]).detach() for name in names}


def synflow_scores(model: nn.Module, input_shape: tuple[int, ...], mask: Mask) -> dict[str, torch.Tensor]:
    """``|dR/dw * w|`` of the masked tensors of ``mask`` in the linearised network (every
    parameter and buffer positive, float64, eval mode), R the sum of its outputs on ones."""
    model = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.abs_()
            if name in mask:
                parameter.mul_(mask[name].to(parameter.device, parameter.dtype))
    weights = _weights(model, list(mask))
    device = weights[0].device
    total = model(torch.ones(1, *input_shape, dtype=torch.float64, device=device)).sum()
    grads = torch.autograd.grad(total, weights)
    return {name: (g * w).abs().detach() for name, g, w in zip(mask, grads, weights)}


def group_counts(start: Mask, target: Mask, strategy: str, layer_fractions=None) -> list[tuple[list[str], int]]:
    """The groups of ``strategy`` (as :func:`imp.pruning.oneshot_prune`) and ``target``'s
    kept count in each; under the ERK and LAMP allocations every tensor is a group, so a
    baseline keeps the trunk's count per tensor."""
    strategy = "layerwise" if strategy in ("erk", "lamp") else strategy
    return [(names, sum(int(target[n].sum()) for n in names))
            for names, _rate in groups(start, strategy, 0.5, layer_fractions)]


def keep_highest(importance: dict[str, torch.Tensor], among: Mask, counts: list[tuple[list[str], int]]) -> Mask:
    """The mask keeping, in each group of ``counts``, its count of the weights of highest
    ``importance`` among those ``among`` keeps (ties to the earlier position)."""
    out: Mask = {}
    for names, want in counts:
        allowed = torch.cat([among[n].reshape(-1).cpu() for n in names])
        score = torch.cat([importance[n].reshape(-1).cpu().double() for n in names])
        score = torch.where(allowed, score, torch.tensor(-np.inf, dtype=torch.float64))
        flat = torch.zeros_like(allowed)
        flat[torch.argsort(-score, stable=True)[:want]] = True
        out.update(split_flat(flat, names, among))
    return {name: out[name] for name in among}


def synflow(model: nn.Module, input_shape: tuple[int, ...], start: Mask, counts: list[tuple[list[str], int]]) -> Mask:
    """SynFlow's mask with each group's count of ``counts``, pruned iteratively from ``start``."""
    mask = {name: keep.clone() for name, keep in start.items()}
    have = {tuple(names): sum(int(start[n].sum()) for n in names) for names, _ in counts}
    for round_ in range(1, SYNFLOW_ROUNDS + 1):
        now = [(names, want if round_ == SYNFLOW_ROUNDS else
                round_half_up(have[tuple(names)] * (want / have[tuple(names)]) ** (round_ / SYNFLOW_ROUNDS)))
               for names, want in counts]
        mask = keep_highest(synflow_scores(model, input_shape, mask), mask, now)
    return mask


def pai_mask(method: str, model: nn.Module, data: Dataset, start: Mask, target: Mask, strategy: str,
             layer_fractions, generator: torch.Generator) -> Mask:
    """The mask of baseline ``method`` for ``model`` (at the rewind point, unpruned)."""
    counts = group_counts(start, target, strategy, layer_fractions)
    if method == "synflow":
        return synflow(model, tuple(data.input_shape), start, counts)
    x, y = batch(data, generator)
    importance = (snip if method == "snip" else grasp)(model, x, y, list(start))
    return keep_highest(importance, start, counts)
