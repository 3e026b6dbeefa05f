"""Epoch time of ResNet-20 on CIFAR-10 with the toolkit's own trainers.

Each variant trains a fresh ResNet-20 with :func:`imp.train.train` (or R of them with
:func:`imp.batched.train_batched`) for ``warmup + timed`` iterations on the resident,
device-augmented data; a hook reads the clock (after synchronising the device) at step
``warmup`` and at the end, so compilation and first-call costs fall in the warm-up,
which is recorded apart. One epoch is extrapolated as 391 iterations (50,000 / 128).
"""

import dataclasses
import time

import torch

from imp.base.config import TrainConfig
from imp.base.duration import Duration
from imp.base.seeds import Seeds
from imp.batched import train_batched
from imp.data import Dataset
from imp.models import build_model
from imp.train import Hook, train
from runs.gpu_check.common import EPOCH_ITERATIONS, Sizes, synchronise

# The standard ResNet-20 recipe's optimiser (the schedule does not change a step's cost).
RECIPE = TrainConfig(epochs=Duration(epochs=160), lr=0.1, momentum=0.9, weight_decay=1e-4)
VARIANTS = {"fp32": {}, "bf16": {"precision": "bf16"}, "channels_last": {"channels_last": True},
            "compiled": {"compile": True}}
# Timed after everything else (each compiles again): CUDA graphs, and every option at once.
LATER_VARIANTS = {"compiled_cudagraphs": {"compile": True, "compile_mode": "reduce-overhead"},
                  "all": {"precision": "bf16", "channels_last": True, "compile": True, "compile_mode": "reduce-overhead"}}
ALL_VARIANTS = VARIANTS | LATER_VARIANTS


class Clock:
    """A hook function: the time at each step it is called at, after the device finishes."""

    def __init__(self, device: torch.device):
        self.device, self.times = device, {}

    def __call__(self, step: int, model: torch.nn.Module) -> None:
        synchronise(self.device)
        self.times[step] = time.perf_counter()


def resnet(sizes: Sizes, data: Dataset, seed: int) -> torch.nn.Module:
    model = build_model("resnet20", data.input_shape, data.num_classes, width=sizes.width,
                        generator=torch.Generator().manual_seed(seed))
    return model.to(data.train.device)


def row(variant: str, replicates: int, clock: Clock, began: float, sizes: Sizes) -> dict:
    end = sizes.warmup + sizes.timed
    seconds = clock.times[end] - clock.times[sizes.warmup]
    per_iteration = seconds / sizes.timed
    return {"variant": variant, "replicates": replicates, "batch": sizes.batch, "width": sizes.width,
            "warmup_iterations": sizes.warmup, "warmup_seconds": clock.times[sizes.warmup] - began,
            "iterations_timed": sizes.timed, "seconds": seconds, "seconds_per_iteration": per_iteration,
            "epoch_seconds": per_iteration * EPOCH_ITERATIONS,
            "epoch_seconds_per_replicate": per_iteration * EPOCH_ITERATIONS / replicates}


def time_variant(variant: str, sizes: Sizes, data: Dataset) -> dict:
    """One replicate trained by :func:`imp.train.train` with the variant's settings."""
    device = data.train.device
    config = dataclasses.replace(RECIPE, **ALL_VARIANTS[variant])
    clock = Clock(device)
    end = sizes.warmup + sizes.timed
    model = resnet(sizes, data, 0)
    synchronise(device)
    began = time.perf_counter()
    train(model, data, config, sizes.batch, Seeds(0, 100, 200), end_step=end,
          hooks=[Hook(clock, steps=frozenset({sizes.warmup, end}))])
    return row(variant, 1, clock, began, sizes)


def time_batched(replicates: int, sizes: Sizes, data: Dataset) -> dict:
    """``replicates`` ResNet-20s trained together by :func:`imp.batched.train_batched` (fp32)."""
    device = data.train.device
    clock = Clock(device)
    end = sizes.warmup + sizes.timed
    models = [resnet(sizes, data, r) for r in range(replicates)]
    seeds = [Seeds(r, 100 + r, 200 + r) for r in range(replicates)]
    hooks = [[Hook(clock, steps=frozenset({sizes.warmup, end}))]] + [[] for _ in range(replicates - 1)]
    synchronise(device)
    began = time.perf_counter()
    train_batched(models, data, RECIPE, sizes.batch, seeds, end_step=end, hooks_list=hooks)
    return row(f"batched x{replicates}", replicates, clock, began, sizes)


def fastest(rows: list[dict]) -> dict | None:
    """The one-replicate (not batched) row with the shortest epoch, or None."""
    single = [row for row in rows if row["replicates"] == 1 and not row["variant"].startswith("batched")]
    return min(single, key=lambda row: row["epoch_seconds"], default=None)


def batching_ratio(sequential: dict, batched: dict) -> dict:
    """Throughput of R replicates batched over R trained one after another (the fp32 row
    times R), both in replicate-iterations per second; > 1 means batching is faster."""
    replicates = batched["replicates"]
    ratio = replicates * sequential["seconds_per_iteration"] / batched["seconds_per_iteration"]
    return {"replicates": replicates, "ratio_batched_over_sequential": ratio, "target": 4.0 if replicates == 8 else None}
