"""The training loop: optimiser, schedule counted in iterations, hooks at chosen steps.

Steps count iterations. "The state at step s" means after s optimiser updates: a hook
due at step s sees the weights before update s+1, so a snapshot at step 0 is the
initialisation and a snapshot at step k is the rewind point ``w_k``. Hooks due at the
last step run after the last update.
"""

import contextlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from imp.base.config import TrainConfig
from imp.base.progress import tqdm
from imp.base.errors import Diverged
from imp.base.seeds import Seeds
from imp.data import Augmentation, Batches, Dataset, Split


def total_iterations(config: TrainConfig, iterations_per_epoch: int) -> int:
    return config.epochs.iterations_at(iterations_per_epoch)


def learning_rate(step: int, config: TrainConfig, iterations_per_epoch: int) -> float:
    """The learning rate for update ``step`` (0-based), all durations converted to iterations.

    Linear warm-up from ``lr / warmup`` to ``lr`` over the first ``warmup`` iterations, then
    ``constant``; ``step``: times ``gamma`` for every milestone reached; ``cosine``: from
    ``lr`` down to 0 at the end of training (Loshchilov & Hutter 2017, no restarts).
    """
    rate = config.lr
    if config.schedule == "step":
        reached = sum(step >= m.iterations_at(iterations_per_epoch) for m in config.milestones)
        rate *= config.gamma ** reached
    elif config.schedule == "cosine":
        total = total_iterations(config, iterations_per_epoch)
        rate *= 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    warmup = config.warmup.iterations_at(iterations_per_epoch)
    if step < warmup:
        rate *= (step + 1) / warmup
    return rate


COMPILE_BACKEND = "inductor"  # torch.compile backend of train.compile (tests use "eager")


def training_forward(model: nn.Module, config: TrainConfig) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model as the training loop calls it, set up for the config's GPU options:
    channels-last memory format, BatchNorm kept in fp32 under bf16 autocast, and
    ``torch.compile`` (DESIGN §5). Weights and state dict stay those of ``model``.

    Compiled with static shapes (``dynamic=False``): an epoch's short last batch (80 of
    CIFAR-10's 50,000 at batch 128) is kept, as the standard recipe keeps it, and gets a
    graph of its own, so there are two graphs, not one with a symbolic batch size. With
    ``compile_mode = "reduce-overhead"`` each of them is replayed as a CUDA graph (one
    launch for the forward and one for the backward instead of one per kernel); on the
    CPU that mode compiles as the default one."""
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.precision == "bf16":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not getattr(module, "_lth_fp32", False):
                module.forward = _fp32(module.forward)
                module._lth_fp32 = True
    if not config.compile:
        return model
    mode = None if config.compile_mode == "default" or COMPILE_BACKEND != "inductor" else config.compile_mode
    return torch.compile(model, backend=COMPILE_BACKEND, mode=mode, dynamic=False)


def graph_step(config: TrainConfig) -> Callable[[], None]:
    """Called at the start of every update: with CUDA graphs, tells them a new step began
    (the previous step's graph outputs may then be overwritten); else nothing."""
    if config.compile and config.compile_mode == "reduce-overhead":
        return torch.compiler.cudagraph_mark_step_begin
    return lambda: None


def _fp32(forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return forward(x.float())
    return run


def autocast(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision = "bf16"``, else nothing."""
    if config.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_optimizer(parameters: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (with momentum and Nesterov as configured) or Adam, with L2 weight decay."""
    parameters = [p for p in parameters if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov, weight_decay=config.weight_decay)
    return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)


@dataclass
class Hook:
    """``fn(step, model)`` called at the steps in ``steps`` and at every multiple of ``every``."""

    fn: Callable[[int, nn.Module], None]
    steps: frozenset[int] = frozenset()
    every: int = 0

    def due(self, step: int) -> bool:
        return step in self.steps or (self.every > 0 and step % self.every == 0)


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 2048) -> dict[str, float]:
    """Mean cross-entropy loss and accuracy (a fraction) of ``model`` in eval mode on ``split``.

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=split.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.device)
    for x, y in split.chunks(batch_size):
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    count = max(len(split), 1)
    return {"loss": loss_sum.item() / count, "accuracy": correct.item() / count}


@dataclass
class EvaluationLog:
    """Rows of evaluations: ``step`` and ``<split>_loss`` / ``<split>_accuracy`` per split."""

    splits: dict[str, Split]
    batch_size: int = 2048
    rows: dict[str, list[float]] = field(default_factory=dict)

    def __call__(self, step: int, model: nn.Module) -> None:
        self.rows.setdefault("step", []).append(step)
        for name, split in self.splits.items():
            for metric, value in evaluate(model, split, self.batch_size).items():
                self.rows.setdefault(f"{name}_{metric}", []).append(value)

    def last(self) -> dict[str, float]:
        return {key: values[-1] for key, values in self.rows.items()}


@dataclass
class Snapshots:
    """Copies of the full state (weights and BatchNorm buffers) at chosen steps, on the CPU."""

    states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def __call__(self, step: int, model: nn.Module) -> None:
        self.states[step] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    batch_size: int,
    seeds: Seeds,
    *,
    start_step: int = 0,
    end_step: int | None = None,
    hooks: Iterable[Hook] = (),
    after_step: Callable[[nn.Module], None] | None = None,
    on_batch: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    iterations_per_epoch: int | None = None,
    progress: bool = False,
    label: str = "",
) -> torch.Tensor:
    """Train ``model`` in place from ``start_step`` to ``end_step`` (default: the config's length).

    The data order and schedule continue from ``start_step`` exactly as an uninterrupted
    run would have them; the optimiser state always starts fresh. ``after_step(model)``
    runs after every update (e.g. to re-apply a pruning mask).
    ``on_batch(step, positions, logits, labels)`` sees every minibatch's training-mode
    logits (detached), e.g. to count forgetting events. ``iterations_per_epoch`` overrides
    the conversion of the schedule's epochs, so training on a subset can follow the full
    data set's schedule. ``label`` names the progress bar. Returns the training loss
    of every update, ``end_step - start_step`` values on the model's device.
    """
    iterations_per_epoch = iterations_per_epoch or data.iterations_per_epoch(batch_size)
    end_step = total_iterations(config, iterations_per_epoch) if end_step is None else end_step
    if not 0 <= start_step <= end_step:
        raise ValueError(f"need 0 <= start_step ({start_step}) <= end_step ({end_step})")
    hooks = list(hooks)
    device = data.train.device
    batches = Batches(len(data.train), batch_size, seeds.order, device)
    augmentation = Augmentation(seeds.augment, batches, data.fill) if data.augment else None
    optimizer = make_optimizer(model.parameters(), config)
    forward = training_forward(model, config)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    losses = torch.zeros(end_step - start_step, device=device)
    model.train()
    bar = tqdm(total=end_step - start_step, disable=not progress, unit="it", leave=False,
               desc=label or None)
    new_step = graph_step(config)
    for step in range(start_step, end_step):
        _run_hooks(hooks, step, model)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config, iterations_per_epoch)
        new_step()
        positions = batches.at(step)
        x, y = data.train.batch(positions), data.train.y[positions]
        if augmentation is not None:
            x = augmentation(x, step)
        if x.dim() == 4:
            x = x.contiguous(memory_format=memory_format)
        with autocast(config, device):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y)  # the loss in fp32 whatever the autocast
        if on_batch is not None:
            on_batch(step, positions, logits.detach(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(model)
        losses[step - start_step] = loss.detach()
        bar.update()
        if progress and (step + 1) % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if (step + 1 - start_step) % FINITE_CHECK_EVERY == 0:
            check_finite(losses, start_step, step + 1, config, label)
    bar.close()
    check_finite(losses, start_step, end_step, config, label)
    check_weights(model.parameters(), end_step, config, label)  # the last update is in no loss
    _run_hooks(hooks, end_step, model)
    return losses


FINITE_CHECK_EVERY = 100  # updates between checks for a diverged loss (each check syncs a GPU once)


def check_weights(parameters: Iterable[torch.Tensor], step: int, config: TrainConfig, label: str) -> None:
    """Stop with :class:`~imp.base.errors.Diverged` if a weight is NaN or infinite after
    training (the update after the last loss can still diverge)."""
    if not all(bool(torch.isfinite(p).all()) for p in parameters):
        raise Diverged(f"{label or 'training'}: the weights became non-finite by step {step}; "
                       f"lower train.lr (now {config.lr:g}) or check the data")


def check_finite(losses: torch.Tensor, start_step: int, upto: int, config: TrainConfig, label: str) -> None:
    """Stop with :class:`~imp.base.errors.Diverged` if a loss before step ``upto`` is not
    finite: a diverged network is never stored, pruned or measured."""
    seen = losses[: upto - start_step]
    finite = torch.isfinite(seen)
    if bool(finite.all()):
        return
    first = int((~finite).nonzero()[0])
    raise Diverged(f"{label or 'training'}: the training loss became {float(seen[first])} at step "
                   f"{start_step + first}; lower train.lr (now {config.lr:g}) or check the data")


def _run_hooks(hooks: list[Hook], step: int, model: nn.Module) -> None:
    for hook in hooks:
        if hook.due(step):
            hook.fn(step, model)

