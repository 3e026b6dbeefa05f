"""GraNd speed: per-example gradient norms by the toolkit's ghost norms vs a naive loop and vmap.

Times ``imp.pergrad.grad_norms`` on the CPU, side by side in one run, and prints examples
per second of each method and their ratios:

- toolkit: ``method="auto"`` (ghost norms: one backward pass per chunk, then per layer the
  norm from its inputs and output gradients; DESIGN §5);
- naive:   ``naive_grad_norms``, one forward and backward per example (the test reference);
- vmap:    ``method="vmap"``, ``torch.func.vmap(grad(...))`` over ``functional_call``.

Two models, at initialisation (t = 0, as for GraNd at init), on random inputs:
LeNet-300-100 on MNIST-shaped (1, 28, 28) examples, and ResNet-20 (width 16, BatchNorm
with running statistics from a few train-mode batches) on CIFAR-shaped (3, 32, 32) ones.
The naive loop is timed on fewer examples (it costs the same per example at any count),
and the toolkit's norms on those examples are checked against it. Each timing is the
median of ``--repeats`` calls after one untimed warm-up call; the table also gives how
many cores other processes kept busy while each method ran (from /proc/stat).

    PYTHONPATH=. python -m runs.bench.grand_speed [--threads 1] [--repeats 3]
        [--examples 2048] [--naive-examples 256] [--conv-examples 256]
        [--conv-naive-examples 32] [--batch-size 256]
"""

import argparse
import statistics
from collections import Counter

import torch

from imp.models import build_model
from imp.pergrad import conv_form_for, grad_norms, naive_grad_norms
from imp.base.runtime import set_threads
from runs.bench.train_throughput import machine_facts, timed


def inputs(shape: tuple[int, int, int], count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, *shape, generator=g), torch.randint(0, 10, (count,), generator=g)


def conv_forms(model: torch.nn.Module, shape: tuple[int, int, int]) -> Counter:
    """How many Conv2d layers the toolkit's auto rule materialises and how many take the Gram form."""
    forms = Counter()
    hooks = [m.register_forward_hook(lambda m, i, o: forms.update([conv_form_for(m, o.shape[2] * o.shape[3])]))
             for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *shape))
    for hook in hooks:
        hook.remove()
    return forms


def compare(name, model, shape, rows: dict[str, tuple[int, dict]], repeats: int) -> dict[str, float]:
    """Time each row (label -> (examples, grad_norms keywords, or None for the naive loop)) and
    print it; then the toolkit's agreement with the naive loop. Returns examples per second by label."""
    x, y = inputs(shape, max(count for count, _ in rows.values()))
    rate, results = {}, {}
    for label, (count, keywords) in rows.items():
        def run():
            if keywords is None:
                return naive_grad_norms(model, x[:count], y[:count])
            return grad_norms(model, x[:count], y[:count], **keywords)
        runs, load, results[label] = timed(run, repeats)
        seconds = statistics.median(runs)
        rate[label] = count / seconds
        print(f"| {name} | {label} | {count:,} | {seconds:.3f} | {rate[label]:,.0f} | {load:.1f} |")
    naive = results["naive"]
    error = (results["toolkit"][:len(naive)] - naive).abs() / naive
    print(f"| {name} | toolkit vs naive, relative difference on {len(naive)} examples: "
          f"max {error.max():.1e}, median {error.median():.1e} | | | | |")
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0 = one per core)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--examples", type=int, default=2048, help="LeNet examples for toolkit and vmap")
    parser.add_argument("--naive-examples", type=int, default=256, help="LeNet examples for the naive loop")
    parser.add_argument("--conv-examples", type=int, default=256, help="ResNet-20 examples for the toolkit")
    parser.add_argument("--conv-naive-examples", type=int, default=32, help="ResNet-20 examples, naive loop")
    parser.add_argument("--batch-size", type=int, default=256, help="chunk size of grad_norms")
    args = parser.parse_args()
    threads = set_threads(args.threads)

    lenet = build_model("lenet_300_100", (1, 28, 28), 10)
    resnet = build_model("resnet20", (3, 32, 32), 10, width=16)
    with torch.no_grad():  # non-trivial running statistics
        for seed in range(3):
            resnet.train()(inputs((3, 32, 32), 64, seed=100 + seed)[0])
    resnet.eval()
    forms = conv_forms(resnet, (3, 32, 32))
    print(f"per-example gradient norms, float32, chunks of {args.batch_size}, median of {args.repeats} "
          f"timed calls after a warm-up; ResNet-20 conv layers under the auto rule: "
          f"{forms['materialise']} materialise, {forms['gram']} Gram\n")
    print("| model | method | examples | s (median) | examples/s | other load (cores) |")
    print("|---|---|---|---|---|---|")
    chunks = {"batch_size": args.batch_size}
    mlp = compare("LeNet-300-100", lenet, (1, 28, 28), {
        "toolkit": (args.examples, chunks),
        "naive": (args.naive_examples, None),
        "vmap": (args.examples, {**chunks, "method": "vmap"}),
    }, args.repeats)
    conv = compare("ResNet-20 (w16)", resnet, (3, 32, 32), {
        "toolkit": (args.conv_examples, chunks),
        "toolkit, chunks of 64": (args.conv_examples, {"batch_size": 64}),
        "naive": (args.conv_naive_examples, None),
    }, args.repeats)
    print(f"\nLeNet-300-100 ratios: toolkit / naive {mlp['toolkit'] / mlp['naive']:.1f}, "
          f"toolkit / vmap {mlp['toolkit'] / mlp['vmap']:.1f}")
    print(f"ResNet-20 ratio: toolkit / naive {conv['toolkit'] / conv['naive']:.1f} "
          f"({conv['toolkit, chunks of 64'] / conv['naive']:.1f} in chunks of 64)\n")
    print("\n".join(machine_facts(threads)))


if __name__ == "__main__":
    main()
