"""Barrier speed: a 25-point LMC curve by the toolkit's ``evaluate_path`` vs a naive per-point loop.

Times, side by side in one run on the CPU, the curve of train and test loss and error
along ``w(a) = (1 - a) w_A + a w_B`` between two LeNet-300-100 networks:

- toolkit: ``landscape.lmc.evaluate_path(method="auto")``, which for an MLP is the exact
  first-layer shortcut (``z_A = x W_A^T + b_A`` and ``z_B`` once per split, then
  ``(1 - a) z_A + a z_B`` and only the rest of the network at each point; DESIGN §5);
- naive: for each a, build the interpolated state, ``load_state_dict``, and
  ``imp.train.evaluate`` on each split;
- also ``method="plain"`` (the toolkit's own per-point loop, the tests' reference) and,
  with ``--vmap``, ``method="vmap"`` (several points per call, meant for GPUs; about 20 s
  more on a CPU), for comparison.

The two networks start from different seeded initialisations and each takes a few SGD
steps on its own random batches (so neither is at initialisation); then 80% of B's
weights are pruned by global magnitude (zeros in its state, as IMP stores them). Inputs
are random MNIST-shaped (1, 28, 28) tensors with random labels: ``--examples`` for the
train split and as many again for the test split. Each time is the median of
``--repeats`` calls after one untimed warm-up call; the table also gives how many cores
other processes kept busy (from /proc/stat). The curves are checked against the naive
loop's.

    PYTHONPATH=. python -m runs.bench.barrier_speed [--threads 1] [--repeats 3] [--points 25]
        [--examples 10000] [--batch-size 2048] [--steps 20] [--vmap]
"""

import argparse
import statistics

import numpy as np
import torch
import torch.nn.functional as F

from imp.data import Split
from imp.models import build_model
from imp.pruning import apply_mask, density, full_mask, magnitude_prune, prunable_tensors
from imp.base.runtime import set_threads
from imp.train import evaluate
from landscape.lmc import alphas, curve_barriers, evaluate_path
from runs.bench.train_throughput import machine_facts, timed

SHAPE = (1, 28, 28)


def random_split(count: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randn(count, *SHAPE, generator=g), torch.randint(0, 10, (count,), generator=g),
                 torch.arange(count))


def perturbed_lenet(init_seed: int, steps: int, data_seed: int) -> torch.nn.Module:
    """LeNet-300-100 at a seeded initialisation after ``steps`` SGD steps (lr 0.05, batch 128)
    on its own random batches."""
    model = build_model("lenet_300_100", SHAPE, 10, generator=torch.Generator().manual_seed(init_seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = random_split(128 * steps, data_seed)
    for x, y in zip(batches.x.split(128), batches.y.split(128)):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval()


def naive_curve(model, state_a, state_b, splits, points: int, batch_size: int) -> dict[str, np.ndarray]:
    """For each a: the interpolated state, load_state_dict, imp.train.evaluate on each split."""
    curve = {"alpha": alphas(points), **{f"{name}_{kind}": np.zeros(points)
                                         for name in splits for kind in ("loss", "error")}}
    for i, alpha in enumerate(curve["alpha"].tolist()):
        model.load_state_dict({k: (1 - alpha) * v + alpha * state_b[k] if v.is_floating_point() else v
                               for k, v in state_a.items()})
        for name, split in splits.items():
            result = evaluate(model, split, batch_size)
            curve[f"{name}_loss"][i], curve[f"{name}_error"][i] = result["loss"], 1 - result["accuracy"]
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0 = one per core)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", type=int, default=25)
    parser.add_argument("--examples", type=int, default=10_000, help="examples per split (train and test)")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20, help="SGD steps applied to each network")
    parser.add_argument("--vmap", action="store_true", help='also time method="vmap"')
    args = parser.parse_args()
    threads = set_threads(args.threads)

    network_a = perturbed_lenet(0, args.steps, data_seed=10)
    network_b = perturbed_lenet(1, args.steps, data_seed=11)
    weights = dict(network_b.named_parameters())
    mask = magnitude_prune(weights, full_mask(weights, prunable_tensors(network_b)), 0.8)
    apply_mask(network_b, mask)
    state_a = {k: v.detach().clone() for k, v in network_a.state_dict().items()}
    state_b = {k: v.detach().clone() for k, v in network_b.state_dict().items()}
    splits = {"train": random_split(args.examples, 1), "test": random_split(args.examples, 2)}
    model = build_model("lenet_300_100", SHAPE, 10).eval()

    print(f"LeNet-300-100, float32, {args.points}-point curve, train and test splits of "
          f"{args.examples:,} random MNIST-shaped examples each, batches of {args.batch_size}; "
          f"B pruned to density {density(mask):.3f}; median of {args.repeats} timed calls after a warm-up\n")
    print("| method | s per curve (median) | ms per point | all runs (s) | other load (cores) |")
    print("|---|---|---|---|---|")
    rows = {
        "naive loop": lambda: naive_curve(model, state_a, state_b, splits, args.points, args.batch_size),
        "toolkit (auto = mlp shortcut)": lambda: evaluate_path(model, state_a, state_b, splits, points=args.points,
                                                              batch_size=args.batch_size, method="auto"),
        "toolkit plain": lambda: evaluate_path(model, state_a, state_b, splits, points=args.points,
                                               batch_size=args.batch_size, method="plain"),
    }
    if args.vmap:
        rows["toolkit vmap"] = lambda: evaluate_path(model, state_a, state_b, splits, points=args.points,
                                                     batch_size=args.batch_size, method="vmap")
    seconds, curves = {}, {}
    for label, run in rows.items():
        runs, load, curves[label] = timed(run, args.repeats)
        seconds[label] = statistics.median(runs)
        print(f"| {label} | {seconds[label]:.3f} | {1000 * seconds[label] / args.points:.1f} | "
              f"{', '.join(f'{t:.3f}' for t in runs)} | {load:.1f} |")

    naive = curves["naive loop"]
    print()
    for label, curve in curves.items():
        if label == "naive loop":
            continue
        loss = max(np.abs(curve[k] - naive[k]).max() for k in curve if k.endswith("_loss"))
        error = max(np.abs(curve[k] - naive[k]).max() for k in curve if k.endswith("_error"))
        print(f"{label} vs naive: max |loss difference| {loss:.1e}, max |error difference| {error:.1e}")
    found = curve_barriers(curves["toolkit (auto = mlp shortcut)"])
    print("barriers (interpolated / mean): " + ", ".join(
        f"{key} {value['interpolated']:.4f} / {value['mean']:.4f}" for key, value in found.items()))
    auto = seconds["toolkit (auto = mlp shortcut)"]
    others = ", ".join(f"{label.removeprefix('toolkit ')} {seconds['naive loop'] / seconds[label]:.2f}"
                       for label in rows if label.startswith("toolkit ") and not label.endswith(")"))
    print(f"\nratio naive / toolkit auto: {seconds['naive loop'] / auto:.2f} ({others})\n")
    print("\n".join(machine_facts(threads)))


if __name__ == "__main__":
    main()
