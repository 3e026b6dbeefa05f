"""Replicate batching: R replicates trained at once by ``train_batched`` vs one after another.

Trains R replicates of one architecture for a fixed number of steps two ways, side by
side in one process on one device, and prints the seconds of each and their ratio:

- sequential: ``imp.train.train`` once per replicate, with
  ``after_step=MaskEnforcer(model, mask)`` (what a run does without
  ``train.batch_replicates``);
- batched:    ``imp.batched.train_batched`` on all R at once (parameters, BatchNorm
  buffers, optimiser state and masks stacked along a replicate dimension, the forward
  pass under ``torch.vmap``; DESIGN §5).

Two cases: LeNet-300-100 on MNIST-shaped (1, 28, 28) inputs and ResNet-20 of width 16 on
CIFAR-shaped (3, 32, 32) inputs, both random tensors with random labels over 10 classes
(the cost of a step does not depend on the pixels), no augmentation. Every replicate has
its own seeded initialisation and data order, and its own mask: global magnitude
pruning of its initial weights to density 0.5 (Conv/Linear weights; biases and
BatchNorm not pruned). Both sides use SGD with momentum 0.9, lr 0.01, constant schedule,
float32, from the same initial states. Each timing is the median of ``--repeats`` calls
after one untimed warm-up call; a call copies the R initial models and trains them
(the copies cost milliseconds). On CUDA the device is synchronised at the start and end
of every call. The table gives how many cores other processes kept busy (from
/proc/stat). The final weights of the two sides (the last timed call of each) are
compared per replicate and tensor as ``max |batched - sequential| / max |sequential|``;
in float32 they agree only to rounding that training amplifies (``imp/batched.py``), so
the difference is printed, not checked.

    PYTHONPATH=. python -m runs.bench.batched_replicates [--device cpu] [--threads 1]
        [--replicates 4] [--repeats 2] [--lenet-steps 300] [--resnet-steps 3]
        [--lenet-batch 128] [--resnet-batch 128] [--examples 4096] [--width 16]
"""

import argparse
import copy
import statistics

import torch

from imp.batched import train_batched
from imp.base.config import TrainConfig
from imp.data import Dataset, Split
from imp.base.duration import Duration
from imp.models import build_model
from imp.pruning import MaskEnforcer, apply_mask, density, full_mask, magnitude_prune, prunable_tensors
from imp.base.runtime import choose_device, set_threads
from imp.base.seeds import Seeds
from imp.train import train
from runs.bench.train_throughput import machine_facts, timed

LR, MOMENTUM, DENSITY = 0.01, 0.9, 0.5


def random_data(shape: tuple[int, int, int], count: int, device: torch.device, seed: int = 0) -> Dataset:
    """``count`` random float32 examples of ``shape`` with random labels (train = test), on ``device``."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(count, *shape, generator=g), torch.randint(0, 10, (count,), generator=g)
    split = Split(x.to(device), y.to(device), torch.arange(count))
    return Dataset("random", split, split, None, 10, False, torch.zeros(shape[0], device=device),
                   torch.zeros(count, dtype=torch.bool), y.clone())


def replicates(name: str, shape: tuple[int, int, int], count: int, width: int,
               device: torch.device) -> tuple[list[torch.nn.Module], list[dict], list[Seeds]]:
    """``count`` models with their own initialisation (seed r), pruned to density 0.5 by
    global magnitude, their masks, and their seeds (init r, order 100 + r)."""
    models, masks, seeds = [], [], []
    for r in range(count):
        model = build_model(name, shape, 10, width=width, generator=torch.Generator().manual_seed(r))
        weights = dict(model.named_parameters())
        mask = magnitude_prune(weights, full_mask(weights, prunable_tensors(model)), 1 - DENSITY)
        apply_mask(model, mask)
        models.append(model.to(device))
        masks.append({k: v.to(device) for k, v in mask.items()})
        seeds.append(Seeds(r, 100 + r, 200 + r))
    return models, masks, seeds


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_sequential(initial, masks, seeds, data, config, batch_size, steps, device):
    """Fresh copies of ``initial`` trained one after another by ``train``; the trained models."""
    synchronise(device)
    models = [copy.deepcopy(model) for model in initial]
    for model, mask, replicate_seeds in zip(models, masks, seeds):
        train(model, data, config, batch_size, replicate_seeds, end_step=steps,
              after_step=MaskEnforcer(model, mask))
    synchronise(device)
    return models


def run_batched(initial, masks, seeds, data, config, batch_size, steps, device):
    """Fresh copies of ``initial`` trained together by ``train_batched``; the trained models."""
    synchronise(device)
    models = [copy.deepcopy(model) for model in initial]
    train_batched(models, data, config, batch_size, seeds, end_step=steps, masks=masks)
    synchronise(device)
    return models


def relative_difference(batched, sequential) -> tuple[float, float | None]:
    """The largest ``max |a - b| / max |b|`` over replicates and float tensors: (parameters,
    buffers); buffers None for a model without any. An integer buffer (BatchNorm's
    ``num_batches_tracked``) that differs counts as infinitely different."""
    worst = {"parameters": 0.0, "buffers": 0.0 if any(True for _ in sequential[0].buffers()) else None}
    for ours, theirs in zip(batched, sequential):
        named = {"parameters": (dict(ours.named_parameters()), dict(theirs.named_parameters())),
                 "buffers": (dict(ours.named_buffers()), dict(theirs.named_buffers()))}
        for kind, (a, b) in named.items():
            for key, reference in b.items():
                if reference.is_floating_point():
                    scale = reference.abs().max().item() or 1.0
                    worst[kind] = max(worst[kind], (a[key] - reference).abs().max().item() / scale)
                elif not torch.equal(a[key], reference):  # num_batches_tracked
                    worst[kind] = float("inf")
    return worst["parameters"], worst["buffers"]


def compare(label: str, name: str, shape, width: int, steps: int, batch_size: int, args,
            device: torch.device) -> float:
    """Time both sides on one case and print their rows and agreement; returns sequential / batched."""
    data = random_data(shape, args.examples, device)
    initial, masks, seeds = replicates(name, shape, args.replicates, width, device)
    config = TrainConfig(epochs=Duration(iterations=steps), lr=LR, momentum=MOMENTUM)
    sides = {"sequential": run_sequential, "batched": run_batched}
    median, trained = {}, {}
    for side, run in sides.items():
        runs, load, trained[side] = timed(
            lambda: run(initial, masks, seeds, data, config, batch_size, steps, device), args.repeats)
        median[side] = statistics.median(runs)
        rate = args.replicates * steps / median[side]
        print(f"| {label} | {side} | {args.replicates} x {steps} | {median[side]:.2f} | "
              f"{', '.join(f'{t:.2f}' for t in runs)} | {rate:.1f} | {load:.1f} |")
    parameters, buffers = relative_difference(trained["batched"], trained["sequential"])
    kept = statistics.mean(density(mask) for mask in masks)
    shown = "none in the model" if buffers is None else f"{buffers:.1e}"
    print(f"| {label} | batched vs sequential final state (density {kept:.3f}), max relative "
          f"difference: parameters {parameters:.1e}, buffers {shown} | | | | | |")
    return median["sequential"] / median["batched"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0 = one per core)")
    parser.add_argument("--replicates", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lenet-steps", type=int, default=300, help="SGD steps per replicate, LeNet-300-100")
    parser.add_argument("--resnet-steps", type=int, default=3, help="SGD steps per replicate, ResNet-20")
    parser.add_argument("--lenet-batch", type=int, default=128)
    parser.add_argument("--resnet-batch", type=int, default=128)
    parser.add_argument("--examples", type=int, default=4096, help="random training examples per case")
    parser.add_argument("--width", type=int, default=16, help="ResNet-20 base width")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    device = choose_device(args.device)

    print(f"{args.replicates} replicates, masks at density {DENSITY} (global magnitude), SGD lr {LR} "
          f"momentum {MOMENTUM}, float32, on {device}; median of {args.repeats} timed calls after a "
          "warm-up; sequential = imp.train.train per replicate, batched = imp.batched.train_batched\n")
    print("| model | side | replicates x steps | s (median) | all runs (s) | replicate-steps/s "
          "| other load (cores) |")
    print("|---|---|---|---|---|---|---|")
    lenet = compare("LeNet-300-100", "lenet_300_100", (1, 28, 28), 0, args.lenet_steps, args.lenet_batch,
                    args, device)
    resnet = compare(f"ResNet-20 (w{args.width})", "resnet20", (3, 32, 32), args.width, args.resnet_steps,
                     args.resnet_batch, args, device)
    print(f"\nratio sequential / batched: LeNet-300-100 {lenet:.2f}x, ResNet-20 {resnet:.2f}x\n")
    facts = machine_facts(threads)
    if device.type == "cuda":
        facts.insert(0, f"device: {device} ({torch.cuda.get_device_name(device)})")
    print("\n".join(facts))


if __name__ == "__main__":
    main()
