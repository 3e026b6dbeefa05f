"""The training data path: bytes on the device with epoch-drawn augmentation vs the earlier path.

Times what a training step does to get its minibatch, and nothing else, two ways, side
by side in one process on one device, over ``--epochs`` epochs of CIFAR-10-shaped data
(50,000 random byte images of (3, 32, 32), batch 128, flip-and-crop) and of
MNIST-shaped data (60,000 of (1, 28, 28), no augmentation):

- toolkit: ``Split.pixels`` (uint8) on the device, each minibatch gathered and
  normalised there (:meth:`imp.data.Split.batch`), flip-and-crop with the numbers drawn
  once per epoch (:class:`imp.data.Augmentation`);
- previous: the split normalised once into float32 on the device, each minibatch
  sliced from it, and flip-and-crop drawing its numbers per step on the CPU and copying
  them to the device (:func:`imp.data.flip_crop`), which makes the host wait for the
  device every step.

A third column times what training on the CPU does now: the float32 split with the
epoch-drawn augmentation (``cpu default``; imp.data.BYTES_ON_CPU is False). All three give
the same minibatches (checked bit for bit on the first epoch's first steps
before timing). Each timing is the median of ``--repeats`` after one warm-up, with the
device synchronised at the end; on the CPU there is no device to wait for, so the
earlier path's per-step copy costs little there and the ratio says what normalising
per batch costs. ``ratio (previous / toolkit seconds)`` above 1 means the toolkit is faster.

    PYTHONPATH=. python -m runs.bench.data_path [--device cpu] [--threads 1] [--epochs 1] [--repeats 3] [--fraction 1]
"""

import argparse
import statistics
import time

import numpy as np
import torch

from imp.base.runtime import choose_device, set_threads
from imp.base.seeds import generator
from imp.data import Augmentation, Batches, Normalisation, Split, flip_crop
from runs.bench.train_throughput import machine_facts

CASES = {"CIFAR-10-shaped": ((3, 32, 32), 50_000, True), "MNIST-shaped": ((1, 28, 28), 60_000, False)}
BATCH = 128


def byte_split(shape: tuple[int, int, int], count: int, device: torch.device) -> Split:
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (count, *shape), dtype=np.uint8))
    channels = shape[0]
    norm = Normalisation(255.0, torch.full((channels,), 0.47), torch.full((channels,), 0.25))
    return Split(None, torch.zeros(count, dtype=torch.long, device=device), torch.arange(count),
                 pixels.to(device), norm.to(device))


def toolkit(split: Split, augment: bool, fill: torch.Tensor, epochs: int):
    batches = Batches(len(split), BATCH, 1, split.device)
    augmentation = Augmentation(2, batches, fill) if augment else None

    def run(steps: int | None = None) -> list[torch.Tensor]:
        out = []
        for step in range(steps or epochs * batches.iterations_per_epoch):
            x = split.batch(batches.at(step))
            out.append(augmentation(x, step) if augment else x)
        return out
    return run


def previous(x: torch.Tensor, augment: bool, fill: torch.Tensor, epochs: int):
    batches = Batches(len(x), BATCH, 1, x.device)

    def run(steps: int | None = None) -> list[torch.Tensor]:
        out = []
        for step in range(steps or epochs * batches.iterations_per_epoch):
            batch = x[batches.at(step)]
            out.append(flip_crop(batch, fill, generator(2, "augment", step)) if augment else batch)
        return out
    return run


def seconds(run, device: torch.device, repeats: int) -> float:
    def once() -> float:
        began = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - began
    once()
    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fraction", type=float, default=1.0, help="of the examples (a smaller epoch, for tests)")
    args = parser.parse_args()
    set_threads(args.threads)
    device = choose_device(args.device)
    print("\n".join(machine_facts(args.threads)) + f"\ndevice: {device}")
    print("\n| data | toolkit s/epoch | previous s/epoch | cpu default s/epoch | previous / toolkit |\n"
          "|---|---|---|---|---|")
    ratios = []
    for name, (shape, count, augment) in CASES.items():
        split = byte_split(shape, max(BATCH, round(args.fraction * count)), device)
        fill = split.normalisation(torch.zeros(1, *shape, dtype=torch.uint8, device=device))[0, :, 0, 0]
        x = split.normalisation(split.pixels)
        ours, theirs = toolkit(split, augment, fill, args.epochs), previous(x, augment, fill, args.epochs)
        held = toolkit(Split(x, split.y, split.index), augment, fill, args.epochs)
        if not all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(ours(5), theirs(5), held(5))):
            raise SystemExit(f"{name}: the paths gave different minibatches")
        a, b, c = (seconds(run, device, args.repeats) / args.epochs for run in (ours, theirs, held))
        ratios.append(b / a)
        print(f"| {name} | {a:.3f} | {b:.3f} | {c:.3f} | {b / a:.2f} |")
    print(f"\nratio (previous / toolkit seconds): {ratios[0]:.2f} (CIFAR-10-shaped; MNIST-shaped {ratios[1]:.2f})")


if __name__ == "__main__":
    main()
