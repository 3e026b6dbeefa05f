"""Hessian speed: top-5 eigenvalues by the toolkit's Lanczos vs PyHessian's power iteration.

Counts Hessian-vector products (HVPs) and times, side by side in one run on the CPU, the
top-``k`` eigenvalues of the mean cross-entropy Hessian of LeNet-300-100 on the same
``--examples`` inputs (one batch), two ways:

- toolkit: ``landscape.hessian.lanczos`` on a ``HessianOperator`` (Lanczos with full
  reorthogonalisation, stopped when every top-k Ritz pair has relative residual <= tol;
  DESIGN §4), at several ``tol``;
- PyHessian 0.1: ``hessian(model, criterion, data=(x, y), cuda=False).eigenvalues(top_n=k,
  tol=..., maxIter=100)``, power iteration with deflation, stopped when successive
  estimates change by less than tol (relative), at several ``tol``; its HVPs are counted
  by wrapping ``pyhessian.hessian.hessian_vector_product``; torch's global RNG is seeded
  (``--seed``) before each call because PyHessian draws its start vectors from it.

Two networks: the dense one, and the same one pruned by one-shot global magnitude
pruning (``--prune``), where the toolkit uses the mask (the restricted Hessian) and
PyHessian sees the pruned weights through ``torch.nn.utils.prune.custom_from_mask``
(its parameters become ``weight_orig``, whose Hessian is the restricted one). The
reference is the toolkit's Lanczos at tol 1e-10. A result "reaches 1e-3" when every one
of its k eigenvalues (sorted descending) is within 1e-3 relative of the reference's.

LeNet-300-100 (float32) is first trained for ``--steps`` SGD steps (lr 0.05, batch 128)
on random MNIST-shaped inputs labelled by a fixed random linear teacher (learnable, so the
spectrum has outliers). Seconds are one call each, setup (forward, first-order graph)
included, after one untimed warm-up; the table also gives how many cores other
processes kept busy (from /proc/stat).

    PYTHONPATH=. python -m runs.bench.hessian_speed [--threads 1] [--examples 1000] [--k 5]
        [--steps 500] [--prune 0.8] [--seed 0]
"""

import argparse
import copy
import importlib
import time
import warnings

import numpy as np
import pyhessian
import torch
import torch.nn.functional as F
from torch.nn.utils import prune

from imp.models import build_model
from imp.pruning import apply_mask, density, full_mask, magnitude_prune, prunable_tensors
from imp.base.runtime import set_threads
from landscape.hessian import HessianOperator, lanczos
from runs.bench.train_throughput import cpu_seconds, machine_facts

SHAPE = (1, 28, 28)
OUR_TOLS = (1e-1, 3e-2, 1e-2, 1e-3)
PYHESSIAN_TOLS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
ACCURACY = 1e-3


def teacher_data(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random inputs labelled by the argmax of a fixed random linear map."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(count, *SHAPE, generator=g)
    teacher = torch.randn(SHAPE[1] * SHAPE[2], 10, generator=torch.Generator().manual_seed(1234))
    return x, (x.flatten(1) @ teacher).argmax(1)


def trained_lenet(steps: int, seed: int) -> torch.nn.Module:
    model = build_model("lenet_300_100", SHAPE, 10, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = teacher_data(128 * steps, seed + 1)
    for xb, yb in zip(x.split(128), y.split(128)):
        optimizer.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return model


def reparametrised(model: torch.nn.Module, mask: dict) -> torch.nn.Module:
    copied = copy.deepcopy(model)
    modules = dict(copied.named_modules())
    for name, keep in mask.items():
        prune.custom_from_mask(modules[name.rsplit(".", 1)[0]], "weight", keep)
    return copied


def ours(model, x, y, mask, k: int, tol: float) -> tuple[np.ndarray, int]:
    result = lanczos(HessianOperator(model, x, y, mask), k, tol=tol, max_iter=300)
    return result["eigenvalues"], result["products"]


def theirs(model, x, y, k: int, tol: float, seed: int) -> tuple[np.ndarray, int]:
    """PyHessian's top-k with its HVPs counted; ``.grad`` cleared and modes restored after."""
    count = [0]
    module = importlib.import_module("pyhessian.hessian")  # the attribute pyhessian.hessian is the class
    product = module.hessian_vector_product

    def counted(*args, **kwargs):
        count[0] += 1
        return product(*args, **kwargs)

    modes = [(m, m.training) for m in model.modules()]
    module.hessian_vector_product = counted
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # its create_graph=True backward
            torch.manual_seed(seed)
            h = pyhessian.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
            values, _ = h.eigenvalues(top_n=k, tol=tol, maxIter=100)
    finally:
        module.hessian_vector_product = product
        for p in model.parameters():
            p.grad = None
        for module, training in modes:
            module.training = training
    return np.sort(np.array(values))[::-1], count[0]


def timed(fn) -> tuple[float, float, tuple]:
    """Seconds of one call, other processes' mean load (cores) during it, and its result."""
    (busy, own), start = cpu_seconds(), time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    busy_after, own_after = cpu_seconds()
    return wall, max(0.0, (busy_after - busy) - (own_after - own)) / wall, result


def cheapest(rows: list[dict]) -> dict | None:
    reached = [row for row in rows if row["error"] <= ACCURACY]
    return min(reached, key=lambda row: row["products"]) if reached else None


def compare(label: str, model, pyhessian_model, x, y, mask, args) -> None:
    reference, reference_products = ours(model, x, y, mask, args.k, 1e-10)
    print(f"\n**{label}**: reference top-{args.k} (Lanczos, tol 1e-10, {reference_products} products): "
          + ", ".join(f"{v:.6g}" for v in reference) + "\n")
    print("| method | tol | HVPs | s | ms per HVP | max rel. error | reaches 1e-3 | other load (cores) |")
    print("|---|---|---|---|---|---|---|---|")
    ours(model, x, y, mask, args.k, 1e-1)  # warm-up
    rows = {"toolkit Lanczos": [], "PyHessian power iteration": []}
    runs = [("toolkit Lanczos", tol, lambda tol=tol: ours(model, x, y, mask, args.k, tol)) for tol in OUR_TOLS]
    runs += [("PyHessian power iteration", tol,
              lambda tol=tol: theirs(pyhessian_model, x, y, args.k, tol, args.seed)) for tol in PYHESSIAN_TOLS]
    for method, tol, run in runs:
        seconds, load, (values, products) = timed(run)
        error = float(np.max(np.abs(values - reference) / np.abs(reference)))
        rows[method].append({"tol": tol, "products": products, "seconds": seconds, "error": error})
        print(f"| {method} | {tol:g} | {products} | {seconds:.2f} | {1000 * seconds / products:.1f} | "
              f"{error:.1e} | {'yes' if error <= ACCURACY else 'no'} | {load:.1f} |")
    default = {method: next(row for row in found if row["tol"] == 1e-3) for method, found in rows.items()}
    ours_default, theirs_default = default["toolkit Lanczos"], default["PyHessian power iteration"]
    print(f"\nat tol 1e-3 (both defaults): PyHessian / toolkit HVPs "
          f"{theirs_default['products'] / ours_default['products']:.1f}x, seconds "
          f"{theirs_default['seconds'] / ours_default['seconds']:.1f}x; PyHessian's error "
          f"{theirs_default['error'] / ACCURACY:.1f}x the 1e-3 target")
    best = {method: cheapest(found) for method, found in rows.items()}
    if all(best.values()):
        a, b = best["toolkit Lanczos"], best["PyHessian power iteration"]
        print(f"cheapest setting reaching 1e-3: toolkit tol {a['tol']:g} ({a['products']} HVPs, "
              f"{a['seconds']:.2f} s), PyHessian tol {b['tol']:g} ({b['products']} HVPs, {b['seconds']:.2f} s): "
              f"{b['products'] / a['products']:.1f}x the HVPs, {b['seconds'] / a['seconds']:.1f}x the seconds")
    else:
        print("cheapest setting reaching 1e-3: " + ", ".join(
            f"{method}: {'none of those tried' if row is None else f'tol {row['tol']:g}, {row['products']} HVPs'}"
            for method, row in best.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0 = one per core)")
    parser.add_argument("--examples", type=int, default=1000, help="examples in the Hessian's loss (one batch)")
    parser.add_argument("--k", type=int, default=5, help="number of top eigenvalues")
    parser.add_argument("--steps", type=int, default=500, help="SGD training steps before measuring")
    parser.add_argument("--prune", type=float, default=0.8, help="fraction pruned for the masked network")
    parser.add_argument("--seed", type=int, default=0, help="model seed, and PyHessian's global seed")
    args = parser.parse_args()
    threads = set_threads(args.threads)

    model = trained_lenet(args.steps, args.seed)
    x, y = teacher_data(args.examples, 99)
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    weights = dict(model.named_parameters())
    mask = magnitude_prune(weights, full_mask(weights, prunable_tensors(model)), args.prune)
    pruned = copy.deepcopy(model)
    apply_mask(pruned, mask)
    print(f"LeNet-300-100, float32, after {args.steps} SGD steps (accuracy {accuracy:.3f} on the "
          f"{args.examples:,} measured examples, one batch); top-{args.k} eigenvalues; eval mode")
    compare("dense", model, model, x, y, None, args)
    compare(f"pruned to density {density(mask):.3f} (restricted Hessian)", pruned, reparametrised(pruned, mask),
            x, y, mask, args)
    print()
    print("\n".join(machine_facts(threads)))


if __name__ == "__main__":
    main()
