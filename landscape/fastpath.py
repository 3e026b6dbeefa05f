"""Fast ways to evaluate a linear path between two networks (DESIGN §5, "Barriers").

Each function returns, per split, the summed cross-entropy (float64) and the number of
misclassified examples at every interpolation coefficient of a grid, in eval mode. They
compute exactly what :func:`landscape.lmc.evaluate_path`'s per-point loop computes (up to
floating-point rounding), and the tests hold them to it:

- :func:`mlp_sums`: for a network that starts with ``nn.Flatten()`` then ``nn.Linear``, the
  first layer's output is linear in its weights, ``x W(a)^T + b(a) = (1-a) z_A + a z_B``
  with ``z = x W^T + b``; so ``z_A`` and ``z_B`` are computed once per split and only the
  rest of the network runs at each point (about 88% of LeNet-300-100's multiply-adds are
  in its first layer).
- :func:`vmap_sums`: several points at once, ``torch.func.vmap`` over parameters stacked
  along a new leading axis; eval mode only (no BatchNorm re-estimation). Meant for GPUs.

Interpolation is ``torch.lerp(a, b, alpha)`` everywhere (equal to ``(1-alpha) a + alpha b``
up to rounding, and exact at both endpoints).
"""

from collections.abc import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from imp.models import MLP

State = dict[str, torch.Tensor]
Sums = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (loss sum (P,), misclassified (P,))

VMAP_POINTS = 8  # interpolation points per vmap call: memory is this many copies of the model
                 # and of a batch's activations


def mix(a: torch.Tensor, b: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """``(1 - alpha) a + alpha b`` (by ``torch.lerp``: exact at alpha = 0 and 1)."""
    return torch.lerp(a, b, alpha)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy ``logsumexp_k z_k - z_y`` in float64, logits (..., B, K), y (B,).

    (About 4x faster than ``F.cross_entropy`` for ten classes on the CPU; the same value.)
    """
    logits = logits.double()
    picked = logits.gather(-1, y.expand(*logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return torch.logsumexp(logits, -1) - picked


def loss_and_wrong(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy (float64) and misclassified count over the example axis.

    ``logits`` (..., B, K), ``y`` (B,); the sums keep the leading axes (...). An example
    counts as right when its label is ``argmax`` (ties go to the first class, as in
    ``imp.train.evaluate``).
    """
    return cross_entropy(logits, y).sum(-1), (logits.argmax(-1) != y).sum(-1)


def forward_sums(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 batch_size: int) -> tuple[float, int]:
    """Summed cross-entropy and misclassified count of ``forward`` over (x, y) in batches."""
    loss = torch.zeros((), dtype=torch.float64, device=x.device)
    wrong = torch.zeros((), dtype=torch.int64, device=x.device)
    for start in range(0, len(y), batch_size):
        batch_loss, batch_wrong = loss_and_wrong(forward(x[start:start + batch_size]),
                                                 y[start:start + batch_size])
        loss += batch_loss
        wrong += batch_wrong
    return loss.item(), int(wrong.item())


def mlp_applies(model: nn.Module) -> bool:
    """Whether ``model`` is imp.models' :class:`~imp.models.MLP` ("mlp", "lenet_300_100"), or
    an ``nn.Sequential`` starting with ``nn.Flatten()`` (over all but the batch axis) then
    ``nn.Linear``."""
    return isinstance(model, MLP) or (
        isinstance(model, nn.Sequential) and len(model) >= 2
        and isinstance(model[0], nn.Flatten) and (model[0].start_dim, model[0].end_dim) == (1, -1)
        and isinstance(model[1], nn.Linear))


def _first_layer_and_rest(model: nn.Module) -> tuple[nn.Module, str, nn.Module]:
    """The flatten module, the first Linear layer's name, and the rest of the network (from
    that layer's output to the logits, a module with the model's parameter names)."""
    if isinstance(model, MLP):
        return model.flatten, "fc1", model.after_first()
    return model[0], list(model._modules)[1], model[2:]  # a slice keeps the parameter names


def _on(state: Mapping[str, torch.Tensor], device: torch.device) -> State:
    return {name: tensor.to(device) for name, tensor in state.items()}


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def mlp_sums(model: nn.Module, state_a: State, state_b: State, splits: Mapping, grid: np.ndarray,
             batch_size: int) -> Sums:
    """The first-layer shortcut (module docstring) for a model where :func:`mlp_applies`.

    Holds ``z_A`` and ``z_B`` (N x first-layer width, each) per split in memory. The rest
    of the network (after the first Linear layer) runs by ``functional_call`` with
    interpolated weights and, if it has BatchNorm layers, interpolated running statistics,
    in eval mode.
    """
    model.eval()
    a, b = _on(state_a, _device(model)), _on(state_b, _device(model))
    flatten, first_name, rest = _first_layer_and_rest(model)
    first = f"{first_name}."
    rest_names = [k for k in a if not k.startswith(first) and a[k].is_floating_point()]

    # z_A and z_B by one product with both weight matrices stacked (faster than two).
    width = a[first + "weight"].shape[0]
    weight = torch.cat([a[first + "weight"], b[first + "weight"]])
    bias = torch.cat([a[first + "bias"], b[first + "bias"]]) if first + "bias" in a else None

    def first_layer(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = F.linear(flatten(x), weight, bias)  # (B, 2 x width)
        return z[:, :width].contiguous(), z[:, width:].contiguous()

    outputs = {name: [first_layer(x) for x in split.x.split(batch_size)] for name, split in splits.items()}
    loss = {name: np.zeros(len(grid)) for name in splits}
    wrong = {name: np.zeros(len(grid)) for name in splits}
    for i, alpha in enumerate(grid.tolist()):
        parameters = {k: mix(a[k], b[k], alpha) for k in rest_names}
        for name, split in splits.items():
            total, count = torch.zeros((), dtype=torch.float64, device=split.device), 0
            for (z_a, z_b), y in zip(outputs[name], split.y.split(batch_size)):
                logits = functional_call(rest, parameters, (mix(z_a, z_b, alpha),))
                batch_loss, batch_wrong = loss_and_wrong(logits, y)
                total += batch_loss
                count += batch_wrong
            loss[name][i], wrong[name][i] = total.item(), int(count)
    return {name: (loss[name], wrong[name]) for name in splits}


@torch.no_grad()
def vmap_sums(model: nn.Module, state_a: State, state_b: State, splits: Mapping, grid: np.ndarray,
              batch_size: int) -> Sums:
    """Up to :data:`VMAP_POINTS` points per call, by ``vmap`` over stacked interpolated states.

    Every floating entry of the state (weights, biases, BatchNorm running statistics) is
    stacked; the model runs in eval mode, so BatchNorm uses the interpolated statistics.
    Memory: VMAP_POINTS copies of the state and of one batch's activations.
    """
    model.eval()
    a, b = _on(state_a, _device(model)), _on(state_b, _device(model))
    names = [k for k in a if a[k].is_floating_point()]
    batched = vmap(lambda state, x: functional_call(model, state, (x,)), in_dims=(0, None))
    loss = {name: np.zeros(len(grid)) for name in splits}
    wrong = {name: np.zeros(len(grid)) for name in splits}
    for start in range(0, len(grid), VMAP_POINTS):
        chunk = grid[start:start + VMAP_POINTS]
        stacked = {}
        for k in names:
            weight = torch.as_tensor(chunk, dtype=a[k].dtype, device=a[k].device)
            stacked[k] = mix(a[k].unsqueeze(0), b[k].unsqueeze(0), weight.view(-1, *[1] * a[k].dim()))
        for name, split in splits.items():
            total = torch.zeros(len(chunk), dtype=torch.float64, device=split.device)
            count = torch.zeros(len(chunk), dtype=torch.int64, device=split.device)
            for x, y in zip(split.x.split(batch_size), split.y.split(batch_size)):
                batch_loss, batch_wrong = loss_and_wrong(batched(stacked, x), y)  # logits (C, B, K)
                total += batch_loss
                count += batch_wrong
            loss[name][start:start + len(chunk)] = total.cpu().numpy()
            wrong[name][start:start + len(chunk)] = count.cpu().numpy()
    return {name: (loss[name], wrong[name]) for name in splits}
