"""Several networks of one architecture trained at once: stacked weights under ``vmap``.

What is batched: R networks of one architecture on one schedule from one start step (the
replicates of a run at the same level, the baselines of a level of one or more
replicates, the sibling copies of a level; each called a replicate below) are trained in
lockstep as one computation. Their parameters *and* buffers
(BatchNorm ``running_mean``, ``running_var``, ``num_batches_tracked``) are stacked along a
new leading replicate dimension (:func:`torch.func.stack_module_state`) and the forward
pass is ``torch.vmap`` of :func:`torch.func.functional_call` over that dimension, so each
replicate's BatchNorm uses its own batch statistics and updates its own running
statistics in place. Everything else stays per replicate: data order (``seeds.order``),
augmentation (``seeds.augment``), mask (a stacked 0/1 mask multiplied into the weights
after every update, as :class:`~imp.pruning.MaskEnforcer` does), optimiser state (the
toolkit's SGD or Adam runs on the stacked tensors; their updates are elementwise and
the step count is shared, so this is R independent optimisers), and loss (the mean
cross-entropy over the replicate's own batch; the sum over replicates is
back-propagated, so each replicate receives exactly its own gradient). All replicates
share the batch size and the learning-rate schedule. Hooks see the replicate's own
``nn.Module``, loaded with its current state at the steps they are due, so
:class:`~imp.train.EvaluationLog` and :class:`~imp.train.Snapshots` work unchanged.

What equals what: :func:`train_batched` equals :func:`imp.train.train` per replicate with
``after_step=MaskEnforcer(model, mask)``, and :func:`train_levels_batched` equals
:func:`imp.level.train_level` per replicate (same tree layout), up to the order of
floating-point operations that ``vmap`` chooses. In float64 every parameter, buffer and
loss agrees to 1e-6 relative (tests/imp/test_batched.py; measured 1e-15 on the states of
a ResNet-20 after 16 steps, ~1e-7 where the float32 loss of ``train`` rounds differently).
In float32 the rounding differences (~1e-6 after one step) grow as fast as the training
dynamics amplify any perturbation: a small MLP on digits agreed to 1e-6 after 120 steps
and a whole 3-level IMP run to 5e-7, LeNet-300-100 to 3e-4 after 120 steps, but a
BatchNorm ResNet-20 drifted to 4e-2 after 8 steps (as it does between float32 and
float64, or with ``channels_last``). Float32 equality is a rounding-level claim, not bit
equality. :func:`prune_batched` gives exactly :func:`imp.pruning.magnitude_prune`'s
masks, ties included.

``train.precision = "bf16"`` autocasts like :func:`train`, BatchNorm and the loss in
fp32; bf16 rounding then dominates any difference (a BatchNorm bias after one step
differs from float64 training by as much as from sequential bf16 training).

Not supported: ``train.channels_last`` and ``train.compile`` are ignored (the stacked
inputs are 5-d). Hooks must only read the model: what they change is not written back.
Modules that draw random numbers (dropout) or BatchNorm with ``momentum=None`` (a
cumulative average read from ``num_batches_tracked`` in Python) cannot run under
``vmap``; no model of :mod:`imp.models` has either. ``on_batch`` and a general
``after_step`` of :func:`train` have no counterpart. On an uncontended CPU core stacking
gains nothing (DESIGN §5); it is meant for GPUs, where small networks leave the device idle.
"""

import copy
import dataclasses
import itertools
import time
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from imp.base.config import Config, TrainConfig
from imp.base.progress import tqdm
from imp.data import Augmentation, Batches, Dataset
from imp.level import LevelRecord, Start, State, finite, start_model
from imp.base.record import TrainedLevel
from imp.pruning import Mask, Weights, groups, magnitude_prune, round_half_up
from imp.base.seeds import Seeds
from imp.train import (FINITE_CHECK_EVERY, Hook, autocast, check_finite, check_weights, learning_rate,
                       make_optimizer, total_iterations, training_forward)


def train_batched(
    models: Sequence[nn.Module],
    data: Dataset,
    config: TrainConfig,
    batch_size: int,
    seeds_list: Sequence[Seeds],
    *,
    start_step: int = 0,
    end_step: int | None = None,
    masks: Sequence[Mask] | None = None,
    hooks_list: Sequence[Sequence[Hook]] | None = None,
    iterations_per_epoch: int | None = None,
    progress: bool = False,
    label: str = "",
) -> torch.Tensor:
    """Train the R ``models`` in place, replicate r as ``train(models[r], ..., seeds_list[r],
    hooks=hooks_list[r], after_step=MaskEnforcer(models[r], masks[r]))`` would.

    As with :func:`~imp.train.train`, pruned weights are zeroed by the caller before the
    first step (:func:`~imp.pruning.apply_mask`) and after every update here. Returns the
    training losses, shape ``[R, end_step - start_step]``, on the data's device.
    """
    count = len(models)
    for name, given in (("seeds_list", seeds_list), ("masks", masks), ("hooks_list", hooks_list)):
        if given is not None and len(given) != count:
            raise ValueError(f"{name} has {len(given)} entries for {count} models")
    iterations_per_epoch = iterations_per_epoch or data.iterations_per_epoch(batch_size)
    end_step = total_iterations(config, iterations_per_epoch) if end_step is None else end_step
    if not 0 <= start_step <= end_step:
        raise ValueError(f"need 0 <= start_step ({start_step}) <= end_step ({end_step})")
    device = data.train.device
    hooks_list = [list(hooks) for hooks in hooks_list] if hooks_list is not None else [[] for _ in models]
    for model in models:
        model.train()

    params, buffers = stack_module_state(list(models))  # name -> [R, ...]; params are new leaves
    keep = _stacked_masks(masks, params) if masks is not None else {}
    optimizer = make_optimizer(params.values(), config)
    # A weightless copy to call functionally, set up for bf16 like train()'s model.
    template = copy.deepcopy(models[0]).to("meta")
    forward = training_forward(template, dataclasses.replace(config, channels_last=False, compile=False,
                                                             compile_mode="default"))

    def replicate_logits(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(forward, (p, b), (x,))

    def replicate_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y)  # as train(): the loss in fp32

    stacked_logits, stacked_loss = torch.vmap(replicate_logits), torch.vmap(replicate_loss)
    batches = [Batches(len(data.train), batch_size, seeds.order, device) for seeds in seeds_list]
    augmentations = [Augmentation(seeds.augment, order, data.fill) if data.augment else None
                     for seeds, order in zip(seeds_list, batches)]
    losses = torch.zeros(count, end_step - start_step, device=device)
    bar = tqdm(total=end_step - start_step, disable=not progress, unit="it", leave=False,
               desc=label or None)
    for step in range(start_step, end_step):
        _run_hooks(models, hooks_list, step, params, buffers)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config, iterations_per_epoch)
        x, y = _stacked_batch(data, batches, augmentations, step)  # [R, B, ...], [R, B]
        with autocast(config, device):
            logits = stacked_logits(params, buffers, x)
        loss = stacked_loss(logits, y)  # [R]
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # d(sum)/d(loss_r) = 1: replicate r gets exactly its own gradient
        optimizer.step()
        with torch.no_grad():
            for name, factor in keep.items():
                params[name].mul_(factor)
        losses[:, step - start_step] = loss.detach()
        bar.update()
        if progress and (step + 1) % 50 == 0:
            bar.set_postfix(loss=f"{loss.mean().item():.3f}", refresh=False)
        if (step + 1 - start_step) % FINITE_CHECK_EVERY == 0:
            _check_replicates(losses, start_step, step + 1, config, label)
    bar.close()
    _check_replicates(losses, start_step, end_step, config, label)
    check_weights(params.values(), end_step, config, label)  # the last update is in no loss
    _run_hooks(models, hooks_list, end_step, params, buffers)
    for replicate, model in enumerate(models):
        _load(model, params, buffers, replicate)
    return losses


def _stacked_masks(masks: Sequence[Mask], params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per tensor, the replicates' masks as 0/1 factors of the weights' dtype, ``[R, ...]``;
    tensors no replicate prunes are left out (multiplying by 1 changes nothing)."""
    out = {}
    for name in masks[0]:
        stacked = torch.stack([mask[name].to(params[name].device) for mask in masks])
        if not bool(stacked.all()):
            out[name] = stacked.to(params[name].dtype)
    return out


def _stacked_batch(data: Dataset, batches: list[Batches], augmentations: list[Augmentation | None],
                   step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each replicate's minibatch of ``step`` in its own data order and augmentation."""
    xs, ys = [], []
    for order, augmentation in zip(batches, augmentations):
        positions = order.at(step)
        x = data.train.batch(positions)
        xs.append(x if augmentation is None else augmentation(x, step))
        ys.append(data.train.y[positions])
    return torch.stack(xs), torch.stack(ys)


def _run_hooks(models: Sequence[nn.Module], hooks_list: list[list[Hook]], step: int,
               params: dict, buffers: dict) -> None:
    for replicate, (model, hooks) in enumerate(zip(models, hooks_list)):
        due = [hook for hook in hooks if hook.due(step)]
        if due:
            _load(model, params, buffers, replicate)
            for hook in due:
                hook.fn(step, model)


@torch.no_grad()
def _load(model: nn.Module, params: dict, buffers: dict, replicate: int) -> None:
    """Copy replicate ``replicate``'s slice of the stacked state into ``model``'s own tensors."""
    stacked = params | buffers
    for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers()):
        tensor.copy_(stacked[name][replicate])


# ------------------------------------------------------------------ pruning


def prune_batched(weights: Sequence[Weights] | Mapping[str, torch.Tensor], masks: Sequence[Mask],
                  fraction: float, strategy: str = "global",
                  layer_fractions: Mapping[str, float] | None = None) -> list[Mask]:
    """:func:`imp.pruning.magnitude_prune` for R replicates at once: the same masks.

    ``weights`` is a list of R weight dicts or one dict of stacked ``[R, ...]`` tensors.
    Per group, the magnitudes of all replicates form an ``[R, N]`` matrix; two stable
    sorts order each row by (pruned already, ``|w|`` as float32, position), so every
    replicate removes its own ``round_half_up(rate * remaining)`` smallest weights with
    the earlier position first among ties, exactly as the per-replicate function does.
    """
    names = list(masks[0])
    if strategy in ("erk", "lamp"):  # per-replicate allocations: one replicate at a time
        each = ([{n: weights[n][r] for n in names} for r in range(len(masks))] if isinstance(weights, Mapping)
                else weights)
        return [magnitude_prune(w, m, fraction, strategy, layer_fractions) for w, m in zip(each, masks)]
    if isinstance(weights, Mapping):
        stacked = {name: weights[name] for name in names}
    else:
        stacked = {name: torch.stack([w[name].detach().cpu() for w in weights]) for name in names}
    count = len(masks)
    out: list[Mask] = [{} for _ in range(count)]
    for group, rate in groups(names, strategy, fraction, layer_fractions):
        keep = torch.cat([torch.stack([m[n].reshape(-1).cpu() for m in masks]) for n in group], 1)
        # magnitude_prune compares float32 magnitudes on the CPU; so do we.
        magnitude = torch.cat([stacked[n].detach().reshape(count, -1).abs().cpu().float() for n in group], 1)
        remaining = keep.sum(1)
        remove = torch.tensor([round_half_up(rate * int(r)) for r in remaining])
        if bool((remove > remaining).any()):
            raise ValueError(f"cannot remove {remove.tolist()} of {remaining.tolist()} kept weights")
        # By magnitude, then (stably) kept weights first: each row's order is then that of
        # magnitude_prune's candidates, followed by the weights pruned already.
        order = torch.argsort(magnitude, dim=1, stable=True)
        order = order.gather(1, torch.argsort((~keep).gather(1, order).to(torch.uint8), dim=1, stable=True))
        first = torch.arange(keep.shape[1]).unsqueeze(0) < remove.unsqueeze(1)  # [R, N], in sorted order
        new = keep & ~torch.zeros_like(keep).scatter_(1, order, first)
        start = 0
        for name in group:
            size = masks[0][name].numel()
            for replicate, mask in enumerate(masks):
                like = mask[name]
                out[replicate][name] = new[replicate, start:start + size].reshape(like.shape).to(like.device)
            start += size
    return [{name: mask[name] for name in names} for mask in out]


# ------------------------------------------------------------------ levels


def _check_replicates(losses: torch.Tensor, start_step: int, upto: int, config: TrainConfig, label: str) -> None:
    """:func:`imp.train.check_finite` for each replicate's row of ``losses``."""
    for replicate, row in enumerate(losses):
        check_finite(row, start_step, upto, config, f"{label} (replicate {replicate} of the batch)")


def train_levels_batched(
    config: Config,
    data: Dataset,
    seeds_list: Sequence[Seeds],
    starts: Sequence[Start],
    masks: Sequence[Mask],
    *,
    train_config: TrainConfig | None = None,
    snapshot_at: int | None = None,
    progress: bool = False,
    label: str = "",
) -> list[tuple[TrainedLevel, State | None]]:
    """:func:`imp.level.train_level` for R networks at once (:func:`train_batched`).

    All starts must share their step. Returns one (record, snapshot) per network, as
    ``train_level`` does; each record's ``train_seconds`` is its 1/R share of the
    batched training time, so summing them over replicates gives the time spent.
    """
    steps = {start.step for start in starts}
    if len(steps) != 1:
        raise ValueError(f"batched levels must share their start step, got {sorted(steps)}")
    if not len(seeds_list) == len(starts) == len(masks):
        raise ValueError(f"{len(seeds_list)} seeds, {len(starts)} starts and {len(masks)} masks")
    train_config = train_config or config.train
    step = steps.pop()
    models = [start_model(config, data, seeds, start, mask)
              for seeds, start, mask in zip(seeds_list, starts, masks)]
    records = [LevelRecord.at(config, data, step, snapshot_at) for _ in models]
    started = time.perf_counter()
    losses = train_batched(models, data, train_config, config.data.batch_size, seeds_list,
                           start_step=step, end_step=records[0].iterations, masks=masks,
                           hooks_list=[record.hooks for record in records], progress=progress, label=label)
    share = (time.perf_counter() - started) / len(models)
    return [(finite(record.trained(seeds, start, mask, model, loss.clone(), share), train_config,
                    f"{label} (replicate {i} of the batch)"), record.snapshot())
            for i, (record, seeds, start, mask, model, loss)
            in enumerate(zip(records, seeds_list, starts, masks, models, losses))]
