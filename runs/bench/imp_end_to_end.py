"""End-to-end IMP: a whole small run by the toolkit's ``run_imp`` vs a plain-PyTorch IMP loop.

Runs iterative magnitude pruning of LeNet-300-100 on MNIST, levels 0..L (``--levels`` L
pruning levels after the dense level 0), ``--epochs`` epochs per level, two ways, one
after the other in one process on the CPU with the same intra-op thread count, and
prints each level's test accuracy, the seconds of each and their ratio:

- toolkit: ``imp.trunk.run_imp`` on the config ``data.dataset=mnist``,
  ``model.name=lenet_300_100``, ``train.epochs``, ``train.eval_every`` = the length of a
  level, ``prune.levels`` = L (global magnitude pruning of 20% per level, rewinding to
  the initialisation, SGD lr 0.1, batch 128: the config's defaults), written to a
  temporary folder. Timed from the call to its return: data loading, every level's
  training and evaluation (train and test sets at the start and end of each level),
  pruning and the HDF5 files of every stage.
- plain: the loop a user would write without the toolkit, in :func:`plain_imp`. The
  idx ``.gz`` files are read by gzip + ``numpy.frombuffer`` into a ``TensorDataset`` of
  uint8 images; a ``Dataset`` subclass converts one image per ``__getitem__`` to float
  and normalises it; ``DataLoader(batch_size=128, shuffle=True, num_workers=0)``; the same
  LeNet as ``nn.Sequential`` (PyTorch's default initialisation); SGD lr 0.1; the masks
  multiplied into the weights after every step; global magnitude pruning of 20% of the
  remaining weights (all three weight matrices, as the toolkit's global strategy; biases
  are never pruned) by ``topk`` over the concatenated unpruned magnitudes; rewinding to
  the saved initial state; test accuracy at the end of each level. Timed from reading
  the files to the last evaluation; nothing is written to disk.

With no real MNIST under the data root, both fall back to scikit-learn's 8x8 digits
(the toolkit's ``digits`` data set; the same split on both sides) and say so: the
numbers then show only that the script runs.

    PYTHONPATH=. python -m runs.bench.imp_end_to_end [--data-root DIR] [--levels 4]
        [--epochs 2] [--threads 1]

The data root defaults to ``$LTH_DATA``, else ``../shared/data`` beside the repository.
Linux only (reads /proc): each side also reports how many cores other processes kept busy.
"""

import argparse
import copy
import gzip
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imp.base.config import Config, load_config
from imp.base.results import level_rows
from imp.base.runtime import set_threads
from imp.trunk import run_imp
from runs.bench.train_throughput import DEFAULT_ROOT, cpu_seconds, machine_facts


def toolkit_config(dataset: str, levels: int, epochs: int) -> Config:
    return load_config(None, [f"data.dataset={dataset}", "model.name=lenet_300_100",
                              f"train.epochs='{epochs}ep'", f"train.eval_every='{epochs}ep'",
                              f"prune.levels={levels}"])


def run_toolkit(config: Config, data_root: Path) -> tuple[float, list[dict]]:
    """Wall seconds of ``run_imp`` into a fresh temporary folder, and its trunk level rows."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        run = run_imp(config, out, data_root, torch.device("cpu"))
        seconds = time.perf_counter() - start
        rows = [row for row in level_rows(run) if row["baseline"] is None]
    return seconds, rows


# ---------------------------------------------------------------- the plain implementation


def read_idx_gz(path: Path) -> np.ndarray:
    """An idx file (MNIST format): zero bytes, type 0x08, ndim, big-endian int32 sizes, uint8 data."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_plain(dataset: str, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """uint8 images (N, H, W) and labels of the train and test sets, and the pixel scale."""
    if dataset == "mnist":
        raw = root / "MNIST" / "raw"
        return (read_idx_gz(raw / "train-images-idx3-ubyte.gz"), read_idx_gz(raw / "train-labels-idx1-ubyte.gz"),
                read_idx_gz(raw / "t10k-images-idx3-ubyte.gz"), read_idx_gz(raw / "t10k-labels-idx1-ubyte.gz"),
                255.0)
    from sklearn.datasets import load_digits  # the toolkit's digits split: numpy seed 0, 360 test images

    bunch = load_digits()
    images, labels = bunch.images.astype(np.uint8), bunch.target.astype(np.uint8)  # pixels 0..16
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[:360], order[360:]
    return images[train], labels[train], images[test], labels[test], 16.0


def pixel_stats(images: np.ndarray, scale: float) -> tuple[float, float]:
    """Mean and standard deviation of ``images / scale`` over all pixels, from a histogram of
    the byte values (exact, without a float copy of the whole training set)."""
    counts = np.bincount(images.ravel(), minlength=256)
    values = np.arange(len(counts)) / scale
    mean = float((counts * values).sum() / counts.sum())
    return mean, float(np.sqrt((counts * (values - mean) ** 2).sum() / counts.sum()))


class NormalisedImages(torch.utils.data.Dataset):
    """uint8 images in a TensorDataset; each item converted to a normalised (1, H, W) float image."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, scale: float, mean: float, std: float):
        self.items = torch.utils.data.TensorDataset(torch.from_numpy(images.copy()),
                                                    torch.from_numpy(labels.astype(np.int64)))
        self.scale, self.mean, self.std = scale, mean, std

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        image, label = self.items[index]
        return ((image.float() / self.scale - self.mean) / self.std).unsqueeze(0), label


def plain_lenet(pixels: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(pixels, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, 10))


def prune_global(model: nn.Module, masks: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Remove ``fraction`` of the still-unpruned weights, smallest |w| over all masked tensors together."""
    weights = dict(model.named_parameters())
    alive = torch.cat([weights[name].detach().abs()[mask] for name, mask in masks.items()])
    keep = len(alive) - round(fraction * len(alive))
    threshold = alive.topk(keep).values[-1]
    return {name: mask & (weights[name].detach().abs() >= threshold) for name, mask in masks.items()}


@torch.no_grad()
def test_accuracy(model: nn.Module, loader) -> float:
    model.eval()
    correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loader)
    model.train()
    return correct / len(loader.dataset)


def plain_imp(dataset: str, root: Path, levels: int, epochs: int, lr: float, batch_size: int, fraction: float,
              seed: int = 0) -> tuple[float, list[dict]]:
    """The whole plain IMP run: wall seconds and, per level, density, test accuracy and seconds."""
    start = time.perf_counter()
    x_train, y_train, x_test, y_test, scale = read_plain(dataset, root)
    mean, std = pixel_stats(x_train, scale)
    train_set = NormalisedImages(x_train, y_train, scale, mean, std)
    test_set = NormalisedImages(x_test, y_test, scale, mean, std)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=0,
                                               generator=torch.Generator().manual_seed(seed))
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000)

    model = plain_lenet(x_train[0].size, seed)
    initial = copy.deepcopy(model.state_dict())
    masks = {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()
             if name.endswith("weight")}
    rows = []
    for level in range(levels + 1):
        began = time.perf_counter()
        if level > 0:
            masks = prune_global(model, masks, fraction)
        model.load_state_dict(initial)  # rewind to the initialisation
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, mask in masks.items():
                parameters[name].mul_(mask)
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        for _ in range(epochs):
            for x, y in train_loader:
                optimizer.zero_grad()
                F.cross_entropy(model(x), y).backward()
                optimizer.step()
                with torch.no_grad():
                    for name, mask in masks.items():
                        parameters[name].mul_(mask)
        accuracy = test_accuracy(model, test_loader)
        kept = sum(int(mask.sum()) for mask in masks.values())
        rows.append({"level": level, "density": kept / sum(mask.numel() for mask in masks.values()),
                     "test_accuracy": accuracy, "seconds": time.perf_counter() - began})
    return time.perf_counter() - start, rows


# ---------------------------------------------------------------- the comparison


def with_load(fn):
    """``fn()``'s result and the mean number of cores other processes kept busy meanwhile."""
    (busy, own), start = cpu_seconds(), time.perf_counter()
    result = fn()
    (busy_after, own_after), wall = cpu_seconds(), time.perf_counter() - start
    return result, max(0.0, (busy_after - busy) - (own_after - own)) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("LTH_DATA") or DEFAULT_ROOT))
    parser.add_argument("--levels", type=int, default=4, help="pruning levels after the dense level 0")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per level")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0 = one per core)")
    args = parser.parse_args()
    threads = set_threads(args.threads)

    real = (args.data_root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file()
    dataset = "mnist" if real else "digits"
    if real:
        print(f"data: real MNIST from {args.data_root}")
    else:
        print(f"data: NO MNIST under {args.data_root}/MNIST/raw; falling back to scikit-learn's 8x8 digits "
              "(1,437 train / 360 test): the timings and accuracies below say nothing about MNIST")
    config = toolkit_config(dataset, args.levels, args.epochs)
    lr, batch_size, fraction = config.train.lr, config.data.batch_size, config.prune.fraction  # the plain loop's too
    print(f"IMP of LeNet-300-100, levels 0..{args.levels}, {args.epochs} epoch(s) per level, "
          f"{config.prune.strategy} magnitude pruning {fraction:.0%} per level, rewind to init, "
          f"{config.train.optimizer.upper()} lr {lr}, batch {batch_size}; toolkit first, then plain, one run each\n")

    (toolkit_seconds, toolkit_rows), toolkit_load = with_load(lambda: run_toolkit(config, args.data_root))
    (plain_seconds, plain_rows), plain_load = with_load(
        lambda: plain_imp(dataset, args.data_root, args.levels, args.epochs, lr, batch_size, fraction))

    print("| level | density (toolkit / plain) | test accuracy toolkit | test accuracy plain "
          "| s toolkit (train_level) | s plain (level) |")
    print("|---|---|---|---|---|---|")
    for ours, theirs in zip(toolkit_rows, plain_rows, strict=True):
        print(f"| {ours['level']} | {ours['density']:.3f} / {theirs['density']:.3f} | "
              f"{100 * ours['test_accuracy']:.2f}% | {100 * theirs['test_accuracy']:.2f}% | "
              f"{ours['train_seconds']:.2f} | {theirs['seconds']:.2f} |")
    in_levels = sum(row["train_seconds"] for row in toolkit_rows)
    print(f"\ntoolkit: {toolkit_seconds:.2f} s in all, {in_levels:.2f} s of it training and evaluating "
          f"(the rest: data loading, pruning, HDF5 writes); other load {toolkit_load:.1f} cores")
    print(f"plain:   {plain_seconds:.2f} s in all, {sum(row['seconds'] for row in plain_rows):.2f} s of it "
          f"in the levels (the rest: data loading); other load {plain_load:.1f} cores")
    if max(toolkit_load, plain_load) > 0.25:
        print(f"warning: other processes kept up to {max(toolkit_load, plain_load):.1f} cores busy; "
              "the machine was contended")
    print(f"\nratio (plain / toolkit seconds): {plain_seconds / toolkit_seconds:.2f}\n")
    print("\n".join(machine_facts(threads)))


if __name__ == "__main__":
    main()
