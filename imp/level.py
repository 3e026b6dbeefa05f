"""Train one network under a mask from a given start point, and describe the result.

Every trained network of a run (the dense level 0, each IMP level, each baseline) is
made by :func:`train_level`: load a start state, zero the pruned weights, train from the
start step to the end of the schedule with the mask enforced after every update, and
evaluate on fixed splits. It returns a :class:`imp.base.record.TrainedLevel`, the typed record
that the store writes and reads (docs/storage.md).
"""

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from imp.base.config import Config, TrainConfig
from imp.base.errors import Diverged
from imp.data import Dataset, fixed_subset
from imp.models import build_initial_model
from imp.pruning import Mask, MaskEnforcer, apply_mask, density, kept, size
from imp.base.record import TrainedLevel
from imp.base.seeds import Seeds
from imp.train import EvaluationLog, Hook, Snapshots, total_iterations, train

State = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Start:
    """Where a training segment begins: a full state (weights and BatchNorm buffers, before
    masking) and the step at which the schedule and the data order pick up."""

    state: State
    step: int


def evaluation_splits(config: Config, data: Dataset) -> dict:
    """The fixed splits evaluated during training: train and test (and validation if any)."""
    count, seed = config.train.eval_examples, config.train.seed
    splits = {"train": fixed_subset(data.train, count, seed), "test": fixed_subset(data.test, count, seed)}
    if data.validation is not None:
        splits["validation"] = fixed_subset(data.validation, count, seed)
    return splits


def copy_state(model: torch.nn.Module) -> State:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def state_from_arrays(arrays: Mapping[str, np.ndarray]) -> State:
    """A state dict from the arrays the store read back."""
    return {k: torch.from_numpy(np.asarray(v)).clone() for k, v in arrays.items()}


def mask_from_arrays(arrays: Mapping[str, np.ndarray]) -> Mask:
    return {k: torch.from_numpy(np.asarray(v, dtype=bool)).clone() for k, v in arrays.items()}


def train_level(
    config: Config,
    data: Dataset,
    seeds: Seeds,
    start: Start,
    mask: Mask,
    *,
    train_config: TrainConfig | None = None,
    snapshot_at: int | None = None,
    progress: bool = False,
    label: str = "",
) -> tuple[TrainedLevel, State | None]:
    """Train ``mask * start.state`` from ``start.step`` to the end of training.

    ``train_config`` replaces ``config.train`` for the schedule (fine-tuning uses a
    constant rate). With ``snapshot_at = k`` the full state at step k is also returned
    (the rewind point). Returns the trained network's record, and that snapshot.
    """
    train_config = train_config or config.train
    model = start_model(config, data, seeds, start, mask)
    record = LevelRecord.at(config, data, start.step, snapshot_at)
    started = time.perf_counter()
    losses = train(model, data, train_config, config.data.batch_size, seeds, start_step=start.step,
                   end_step=record.iterations, hooks=record.hooks, after_step=MaskEnforcer(model, mask),
                   progress=progress, label=label)
    seconds = time.perf_counter() - started
    return finite(record.trained(seeds, start, mask, model, losses, seconds), train_config, label), record.snapshot()


def finite(trained: TrainedLevel, config: TrainConfig, label: str) -> TrainedLevel:
    """``trained``, unless its final evaluation is NaN or infinite (weights so large that the
    outputs overflow): then it diverged, and :class:`~imp.base.errors.Diverged` says so."""
    bad = [key for key, value in trained.final.items() if not math.isfinite(value)]
    if bad:
        raise Diverged(f"{label or 'training'}: the final {bad[0]} is {trained.final[bad[0]]}; the network "
                       f"diverged: lower train.lr (now {config.lr:g}) or check the data")
    return trained


def start_model(config: Config, data: Dataset, seeds: Seeds, start: Start, mask: Mask) -> torch.nn.Module:
    """The config's model holding ``start.state`` with the weights ``mask`` prunes set to zero."""
    model = build_initial_model(config, data, seeds.init)
    model.load_state_dict({k: v.to(data.train.device) for k, v in start.state.items()})
    apply_mask(model, mask)
    return model


@dataclass
class LevelRecord:
    """What training a level records through hooks: evaluations at its start, its end and
    every ``eval_every``, and the snapshot at ``snapshot_at``; then the stored tree."""

    iterations: int
    iterations_per_epoch: int
    log: EvaluationLog
    snapshots: Snapshots
    snapshot_at: int | None
    hooks: list[Hook]

    @classmethod
    def at(cls, config: Config, data: Dataset, start_step: int, snapshot_at: int | None) -> "LevelRecord":
        iterations_per_epoch = data.iterations_per_epoch(config.data.batch_size)
        iterations = total_iterations(config.train, iterations_per_epoch)
        log = EvaluationLog(evaluation_splits(config, data))
        every = config.train.eval_every.iterations_at(iterations_per_epoch)
        hooks = [Hook(log, steps=frozenset({start_step, iterations}), every=every)]
        snapshots = Snapshots()
        if snapshot_at is not None:
            hooks.append(Hook(snapshots, steps=frozenset({snapshot_at})))
        return cls(iterations, iterations_per_epoch, log, snapshots, snapshot_at, hooks)

    def snapshot(self) -> State | None:
        return self.snapshots.states.get(self.snapshot_at)

    def trained(self, seeds: Seeds, start: Start, mask: Mask, model: torch.nn.Module,
                losses: torch.Tensor, seconds: float) -> TrainedLevel:
        """The record of the trained ``model`` (what the store writes for the level)."""
        return TrainedLevel(
            weights=copy_state(model), mask={name: keep.cpu() for name, keep in mask.items()},
            final=self.log.last(),
            eval={key: torch.tensor(values).numpy() for key, values in self.log.rows.items()},
            train_loss=losses.detach().float().cpu().numpy(), seeds=seeds,
            iterations=self.iterations, start_step=start.step, iterations_per_epoch=self.iterations_per_epoch,
            train_seconds=seconds, density=density(mask), kept=kept(mask), prunable=size(mask))
