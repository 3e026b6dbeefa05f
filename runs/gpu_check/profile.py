"""Where a training step's time goes, so that a missed target says why.

For one variant, :func:`profile_variant` trains ResNet-20 with :func:`imp.train.train` and
profiles ``timed`` steps after ``warmup`` (``torch.profiler``, started and stopped by hooks,
so compilation falls outside). From the trace:

- ``wall_ms_per_step``: wall time of a step;
- ``kernels_per_step``: device activities per step (kernels, and copies and memsets,
  which a trace lists the same way); ``launches_per_step``: the host's
  launch calls (``cudaLaunchKernel``, ``cudaGraphLaunch``, ...), fewer than kernels when
  CUDA graphs replay many kernels in one launch;
- ``device_busy_ms_per_step`` and ``device_busy_fraction``: the summed kernel time of a
  step over its wall time (kernels on one stream do not overlap, so the fraction is at
  most 1); a low fraction means the device waits for the host (launch-bound);
- ``top_kernels``: the five kernels with the most device time.

Separately, with the clock and the device synchronised, the host-side parts a step does
besides the forward and backward pass: ``data_ms_per_step`` (the minibatch's positions,
gathering and normalising it, flip-and-crop) and ``optimizer_ms_per_step`` (the SGD
update and re-applying the mask). On the CPU there are no kernels: those fields are None.
"""

import dataclasses
import time

import torch

from imp.base.seeds import Seeds
from imp.data import Augmentation, Batches, Dataset
from imp.pruning import MaskEnforcer
from imp.train import Hook, make_optimizer, train
from runs.gpu_check.common import Sizes, synchronise
from runs.gpu_check.correctness import pruned_model
from runs.gpu_check.timing import ALL_VARIANTS, RECIPE

LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


def profile_variant(variant: str, sizes: Sizes, data: Dataset) -> dict:
    """The trace summary of ``sizes.timed`` steps of ``variant`` (a key of ``ALL_VARIANTS``)."""
    device = data.train.device
    config = dataclasses.replace(RECIPE, **ALL_VARIANTS[variant])
    model, mask = pruned_model(sizes, data)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    profiler = torch.profiler.profile(activities=activities)
    end = sizes.warmup + sizes.timed
    clock = {}

    def around(step: int, _model) -> None:
        synchronise(device)
        clock[step] = time.perf_counter()
        if step == sizes.warmup:
            profiler.start()
        else:
            profiler.stop()

    enforce = MaskEnforcer(model, mask)
    train(model, data, config, sizes.batch, Seeds(0, 100, 200), end_step=end, after_step=enforce,
          hooks=[Hook(around, steps=frozenset({sizes.warmup, end}))])
    wall = (clock[end] - clock[sizes.warmup]) / sizes.timed
    traced = _trace(profiler, sizes.timed, wall) if device.type == "cuda" else dict.fromkeys(
        ("kernels_per_step", "launches_per_step", "device_busy_ms_per_step", "device_busy_fraction", "top_kernels"))
    found = {"variant": variant, "steps": sizes.timed, "wall_ms_per_step": 1e3 * wall, **traced}
    found.update(host_parts(sizes, data, model, mask, config))
    found["reading"] = reading(found)
    return found


def _trace(profiler: torch.profiler.profile, steps: int, wall: float) -> dict:
    events = profiler.events()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    launches = sum(1 for e in events if e.name in LAUNCHES)
    busy = sum(e.time_range.elapsed_us() for e in kernels) / 1e3 / steps  # microseconds -> ms per step
    by_name: dict[str, float] = {}
    for kernel in kernels:
        by_name[kernel.name] = by_name.get(kernel.name, 0.0) + kernel.time_range.elapsed_us() / 1e3 / steps
    top = sorted(by_name.items(), key=lambda item: -item[1])[:5]
    return {"kernels_per_step": len(kernels) / steps, "launches_per_step": launches / steps,
            "device_busy_ms_per_step": busy, "device_busy_fraction": busy / (1e3 * wall),
            "top_kernels": [{"kernel": name[:80], "ms_per_step": ms} for name, ms in top]}


def host_parts(sizes: Sizes, data: Dataset, model: torch.nn.Module, mask: dict, config) -> dict:
    """Milliseconds per step of the data path and of the optimiser with the mask, each
    timed alone over ``sizes.timed`` steps after ``sizes.warmup`` untimed ones."""
    device = data.train.device
    batches = Batches(len(data.train), sizes.batch, 100, device)
    augmentation = Augmentation(200, batches, data.fill) if data.augment else None

    def data_step(step: int) -> None:
        positions = batches.at(step)
        x = data.train.batch(positions)
        if augmentation is not None:
            augmentation(x, step)
        data.train.y[positions]

    optimizer = make_optimizer(model.parameters(), config)
    enforce = MaskEnforcer(model, mask)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)

    def optimizer_step(_step: int) -> None:
        optimizer.step()
        enforce(model)

    return {"data_ms_per_step": _per_step(data_step, sizes, device),
            "optimizer_ms_per_step": _per_step(optimizer_step, sizes, device)}


def _per_step(fn, sizes: Sizes, device: torch.device) -> float:
    for step in range(sizes.warmup):
        fn(step)
    synchronise(device)
    began = time.perf_counter()
    for step in range(sizes.warmup, sizes.warmup + sizes.timed):
        fn(step)
    synchronise(device)
    return 1e3 * (time.perf_counter() - began) / sizes.timed


def reading(found: dict) -> str:
    """One sentence on what bounds the step, from the numbers above (thresholds stated)."""
    wall = found["wall_ms_per_step"]
    parts = [f"data {found['data_ms_per_step']:.2f} ms and optimiser+mask {found['optimizer_ms_per_step']:.2f} ms "
             f"of a {wall:.2f} ms step"]
    busy = found["device_busy_fraction"]
    if busy is not None:
        bound = "launch/host-bound (device busy < 60% of the step)" if busy < 0.6 else "device-bound"
        parts.append(f"{bound}: device busy {busy:.0%}, {found['kernels_per_step']:.0f} kernels and "
                     f"{found['launches_per_step']:.0f} launches per step")
    return "; ".join(parts)
