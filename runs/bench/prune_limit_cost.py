"""Prune-limit cost and accuracy: today's curvature estimator against the earlier one.

Side by side in one run on the CPU:

- **new**: the Gauss-Newton spectrum restricted to the unpruned coordinates, deflated
  Lanczos (``--deflate`` top eigenpairs) plus a 10 x 100 quadrature of the rest
  (:func:`landscape.eigen.deflated_spectrum`), on ``--examples`` training examples, and
  the prediction ``p D <= (D + B) - N_eff(2 eps / l^2(p))`` for random pruning
  (:mod:`landscape.prunelimit`);
- **old**: what the toolkit did before: the Hessian (negative eigenvalues clipped to 0)
  by a 10 x 30 quadrature on 1,000 examples and the fixed point
  ``p = (1/D') sum_i 1 / (1 + max(lambda_i, 0) l(p)^2 / 2 eps)`` over all active
  coordinates.

**Accuracy** on a network small enough for ``eigh``: an MLP 100-30-10 (3,340
parameters; 2,447 active once 30% of its first layer is pruned) trained by 300 full-batch steps on 2,000 inputs labelled by a fixed random
linear teacher. The exact value is the prediction from
the exact Gauss-Newton spectrum on all 2,000 examples; each method's error is the
largest |difference| over the eps grid 1e-3 ... 1.

**Cost** on LeNet-300-100 (random initialisation) at ``--examples`` inputs: products and
seconds of each method's spectrum (the new one's at the size given; per-product time is
linear in the examples, so the full MNIST training set costs 60,000 / examples times
more per product).

    PYTHONPATH=. python -m runs.bench.prune_limit_cost [--threads 1] [--examples 60000] [--deflate 100]
"""

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imp.base.runtime import set_threads
from imp.models import build_model
from landscape.curvature import GGNOperator
from landscape.eigen import Spectrum, deflated_spectrum, restricted_matrix
from landscape.hessian import HessianOperator
from landscape.lanczos import slq_density
from landscape.prunelimit import EPS_GRID, predicted_limits, random_removal
from runs.bench.train_throughput import cpu_seconds, machine_facts


def teacher(count: int, inputs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(count, inputs, generator=g)
    return x, (x @ torch.randn(inputs, 10, generator=g)).argmax(dim=1)


def small_problem(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(100, 30), nn.Tanh(), nn.Linear(30, 10))
    x, y = teacher(2000, 100, seed)
    mask = {"0.weight": torch.rand(30, 100) > 0.3, "2.weight": torch.ones(10, 30, dtype=torch.bool)}
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        optimiser.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimiser.step()
        with torch.no_grad():
            model[0].weight.mul_(mask["0.weight"])
    return model, x, y, mask


def old_prediction(model, x, y, mask, eps_values, seed: int) -> tuple[np.ndarray, int]:
    """The earlier estimator: Hessian, 10 x 30 quadrature on 1,000 examples, old fixed point."""
    operator = HessianOperator(model, x[:1000], y[:1000], mask)
    slq = slq_density(operator, runs=10, steps=30, seed=seed)
    nodes, weights = np.maximum(slq["nodes"], 0.0), slq["weights"]
    squares = np.sort(torch.cat([p.detach()[mask[n]] for n, p in model.named_parameters()
                                 if n in mask]).double().numpy() ** 2)
    cumulative = np.concatenate([[0.0], np.cumsum(squares)])
    out = []
    for eps in eps_values:
        def gap(p):
            l2 = cumulative[min(int(np.floor(p * len(squares) + 0.5)), len(squares))]
            return float(np.mean(np.sum(weights / (1 + nodes * l2 / (2 * eps)), axis=1))) - p
        low, high = 0.0, 1.0
        if gap(1.0) >= 0:
            out.append(1.0)
            continue
        while high - low > 1e-4:
            low, high = ((low + high) / 2, high) if gap((low + high) / 2) > 0 else (low, (low + high) / 2)
        out.append(low)
    return np.array(out), operator.products


def accuracy(args) -> tuple[float, float]:
    model, x, y, mask = small_problem(args.seed)
    operator = GGNOperator(model, x, y, mask)
    eigenvalues = np.maximum(np.linalg.eigvalsh(restricted_matrix(operator)), 0.0)
    squares = torch.cat([p.detach()[mask[n]] for n, p in model.named_parameters() if n in mask]).double() ** 2
    removal = random_removal(squares.numpy())
    exact = predicted_limits(removal, Spectrum(len(eigenvalues), eigenvalues).neff, operator.active, EPS_GRID)
    estimate = deflated_spectrum(GGNOperator(model, x, y, mask), args.deflate, 10, 100, seed=args.seed)
    new = predicted_limits(removal, estimate.mapped(lambda lam: np.maximum(lam, 0.0)).neff, operator.active,
                           EPS_GRID)
    old, _ = old_prediction(model, x, y, mask, EPS_GRID, args.seed)
    print(f"MLP 100-30-10, {operator.active} active coordinates, 2,000 teacher examples "
          "(prediction for random pruning at each eps)\n")
    print("| eps | exact (eigh) | new (deflated GGN) | old (Hessian 10 x 30, 1,000 examples) |")
    print("|---|---|---|---|")
    for eps, a, b, c in zip(EPS_GRID, exact, new, old):
        print(f"| {eps:g} | {a:.3f} | {b:.3f} | {c:.3f} |")
    new_error, old_error = float(np.max(np.abs(new - exact))), float(np.max(np.abs(old - exact)))
    print(f"\nlargest error against exact: new {new_error:.3f} ({estimate.products} products), old {old_error:.3f}")
    return new_error, old_error


def cost(args) -> None:
    model = build_model("lenet_300_100", (1, 28, 28), 10, generator=torch.Generator().manual_seed(args.seed))
    x, y = teacher(args.examples, 784, args.seed)
    x = x.view(-1, 1, 28, 28)
    def new() -> int:
        return deflated_spectrum(GGNOperator(model, x, y, batch_size=2048), args.deflate, 10, 100,
                                 seed=args.seed).products

    def old() -> int:
        operator = HessianOperator(model, x[:1000], y[:1000])
        slq_density(operator, 10, 30, seed=args.seed)
        return operator.products

    rows = []
    for label, run in (("new: GGN, deflated Lanczos + 10 x 100", new), ("old: Hessian 10 x 30 on 1,000 examples", old)):
        (busy, own), start = cpu_seconds(), time.perf_counter()
        products = run()
        seconds = time.perf_counter() - start
        busy_after, own_after = cpu_seconds()
        other = max(0.0, (busy_after - busy) - (own_after - own)) / seconds
        rows.append((label, products, seconds, other))
    examples = f"{args.examples:,}"
    print(f"\nLeNet-300-100 spectrum cost, new on {examples} examples:\n")
    print("| method | products | s | s per product | other load (cores) |")
    print("|---|---|---|---|---|")
    for label, products, seconds, other in rows:
        print(f"| {label} | {products} | {seconds:.1f} | {seconds / products:.3f} | {other:.1f} |")
    print(f"\nseconds new / old: {rows[0][2] / rows[1][2]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--examples", type=int, default=60000, help="LeNet inputs of the new estimator")
    parser.add_argument("--deflate", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    threads = set_threads(args.threads)
    new_error, old_error = accuracy(args)
    cost(args)
    print(f"\nratio (old / new error against exact): {old_error / max(new_error, 1e-4):.1f}")
    print()
    print("\n".join(machine_facts(threads)))


if __name__ == "__main__":
    main()
