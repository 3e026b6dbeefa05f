"""Data-diet checks on real data: do the example scores behave as the papers report?

    python -m runs.diet_mnist --data-root ../shared/data [--dataset mnist] [--out results/diet_mnist]

On LeNet-300-100 (SGD 0.1, batch 128), it measures:

1. With 10% of the training labels permuted, the ROC-AUC of EL2N (after 1 and 2 epochs)
   for finding the permuted examples (Paul et al. 2021 report noisy examples at the top).
2. Spearman correlations between EL2N and GraNd at the same step, GraNd at
   initialisation and the input norm, and EL2N and forgetting events (clean labels).
3. Test accuracy after training on the 50% highest-EL2N examples, a random 50%, the 50%
   lowest, and all examples, each for the same number of iterations.

Scores are cached under ``--out/scores`` like any `lth scores` output, so a rerun only
retrains the subset networks.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from imp.base.config import load_config
from imp.data import load_dataset
from imp.base.duration import Duration
from imp.models import build_initial_model
from imp.scores import ScoreSpec, load_or_compute, roc_auc, spearman
from imp.subsets import select
from imp.base.seeds import Seeds
from imp.train import evaluate, total_iterations, train

BASE = ["model.name=lenet_300_100", "data.batch_size=128", "train.lr=0.1", "train.epochs='10ep'"]


def scores(config, data, out, score, step, runs):
    tree, _ = load_or_compute(config, data, ScoreSpec(score, Duration.parse(step), runs), out, progress=True)
    return tree["mean"], tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist"])
    parser.add_argument("--out", type=Path, default=Path("results/diet_mnist"))
    parser.add_argument("--runs", type=int, default=2, help="R, score runs averaged (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    base = BASE + [f"data.dataset={args.dataset}"]

    noisy_config = load_config(None, base + ["data.label_noise=0.1"])
    noisy = load_dataset(noisy_config.data, args.data_root)
    print(f"1. {args.dataset}, 10% permuted labels ({int(noisy.noisy.sum())} examples), R = {args.runs}")
    for step in ("1ep", "2ep"):
        el2n, _ = scores(noisy_config, noisy, args.out, "el2n", step, args.runs)
        print(f"   ROC-AUC of EL2N after {step} for the permuted labels: {roc_auc(el2n, noisy.noisy.numpy()):.3f}")

    config = load_config(None, base)
    data = load_dataset(config.data, args.data_root)
    el2n, tree = scores(config, data, args.out, "el2n", "2ep", args.runs)
    grand, _ = scores(config, data, args.out, "grand", "2ep", args.runs)
    grand_init, _ = scores(config, data, args.out, "grand", "0ep", args.runs)
    forgetting, _ = scores(config, data, args.out, "forgetting", "10ep", args.runs)
    print("2. Spearman correlations (clean labels)")
    print(f"   EL2N@2ep vs GraNd@2ep:        {spearman(el2n, grand):.3f}")
    print(f"   GraNd@init vs input norm:     {spearman(grand_init, tree['input_norm']):.3f}")
    print(f"   EL2N@2ep vs forgetting@10ep:  {spearman(el2n, forgetting):.3f}"
          f"  ({int(np.isinf(forgetting).sum())} examples never learned)")

    iterations = total_iterations(config.train, data.iterations_per_epoch(128))
    half = len(data.train) // 2
    labels = data.train.y.numpy()
    print(f"3. test accuracy after {iterations} iterations on a subset (EL2N@2ep, {half} of {len(data.train)})")
    for name, mode, size in [("hardest 50%", "hard", half), ("random 50%", "random", half),
                             ("easiest 50%", "easy", half), ("all", "all", 0)]:
        positions = select(el2n, labels, mode, size)
        accuracies = []
        for replicate in range(2):
            seeds = Seeds.from_config(config.train, replicate)
            model = build_initial_model(config, data, seeds.init)
            train(model, data.train_subset(positions), config.train, 128, seeds, end_step=iterations,
                  iterations_per_epoch=data.iterations_per_epoch(128))
            accuracies.append(evaluate(model, data.test)["accuracy"])
        print(f"   {name:12s} {100 * np.mean(accuracies):.2f}% (replicates: "
              + ", ".join(f"{100 * a:.2f}%" for a in accuracies) + ")")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
