"""Training throughput: the toolkit's resident-tensor pipeline vs a standard DataLoader.

Trains LeNet-300-100 on MNIST (or, when the real files are missing, a synthetic
MNIST-shaped set of 60,000 random uint8 images) two ways, on the CPU with the same
intra-op thread count, and prints examples per second of each and their ratio:

- toolkit:  ``imp.data.load_dataset`` (one normalised float tensor) + ``imp.train.train``;
- baseline: a ``torch.utils.data.Dataset`` of uint8 images that, per item, makes a PIL
  image and applies ``ToTensor()`` + ``Normalize(mean, std)`` (as torchvision's MNIST and
  OpenLTH do), ``DataLoader(batch_size, shuffle=True, num_workers=0)`` and a plain loop.

Both use plain SGD lr 0.1 and the same initial weights. Each timed run trains a fresh
model for ``--epochs`` epochs after an untimed warm-up on a throwaway model; runs are
interleaved (toolkit, baseline, toolkit, ...) and the median per pipeline is reported,
to damp the effect of other load on the machine. Test accuracy is measured untimed.

    PYTHONPATH=. python -m runs.bench.train_throughput [--data-root DIR] [--epochs N]
        [--threads T] [--batch-size 128] [--repeats 2]

The data root defaults to ``$LTH_DATA``, else ``../shared/data`` beside the repository.
Linux only (reads /proc): each run also reports how many cores other processes kept busy.
"""

import argparse
import datetime
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from imp.base.config import DataConfig, TrainConfig
from imp.data import load_dataset
from imp.datasets import READERS
from imp.base.duration import Duration
from imp.models import build_model
from imp.base.runtime import available_cores, set_threads
from imp.base.seeds import Seeds
from imp.train import evaluate, train

LR = 0.1
DEFAULT_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


class TorchvisionStyleMNIST(torch.utils.data.Dataset):
    """uint8 images (N, 28, 28); per item: PIL image, then the transform (torchvision's MNIST)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.data, self.targets = torch.from_numpy(np.array(images)), torch.from_numpy(np.array(labels))
        self.transform = transform  # np.array: writable copies, as torch wants

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.data[index].numpy())  # mode "L"
        return self.transform(image), int(self.targets[index])


def write_synthetic_mnist(root: Path, seed: int = 0) -> Path:
    """Random uint8 images and labels in MNIST's idx layout (60,000 train, 10,000 test) under ``root``."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 60_000), ("t10k", 10_000)):
        for stem, array in ((f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28), np.uint8)),
                            (f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, count, np.uint8))):
            header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
            (raw / stem).write_bytes(header + array.tobytes())
    return root


def fresh_model() -> torch.nn.Module:
    return build_model("lenet_300_100", (1, 28, 28), 10, generator=torch.Generator().manual_seed(0))


def run_toolkit(data, epochs: int, batch_size: int, warmup: int) -> tuple[float, float]:
    """Seconds for ``epochs`` epochs of ``imp.train.train``, and the test accuracy reached."""
    config = TrainConfig(epochs=Duration(epochs=epochs), lr=LR)
    train(fresh_model(), data, config, batch_size, Seeds(0, 0, 0), end_step=warmup)
    model = fresh_model()
    start = time.perf_counter()
    train(model, data, config, batch_size, Seeds(0, 0, 0))
    seconds = time.perf_counter() - start
    return seconds, evaluate(model, data.test)["accuracy"]


def loader_steps(model, loader, optimizer, limit: int | None = None) -> None:
    """The standard loop: zero_grad, forward, cross_entropy, backward, step."""
    model.train()
    for x, y in itertools.islice(loader, limit):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()


def run_baseline(train_set, test_set, epochs: int, batch_size: int, warmup: int, seed: int):
    """Seconds for ``epochs`` epochs through a DataLoader, and the test accuracy reached."""
    def loader():
        return torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=0,
                                           generator=torch.Generator().manual_seed(seed))
    model = fresh_model()
    loader_steps(model, loader(), torch.optim.SGD(model.parameters(), lr=LR), limit=warmup)
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    start = time.perf_counter()
    for _ in range(epochs):
        loader_steps(model, loader(), optimizer)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item()
                      for x, y in torch.utils.data.DataLoader(test_set, batch_size=1000))
    return seconds, correct / len(test_set)


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used by all processes since boot (from /proc/stat), and by this one."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK"), os.times().user + os.times().system


def timed(fn, repeats: int) -> tuple[list[float], float, object]:
    """Seconds of each of ``repeats`` calls after one warm-up call, other processes' mean load
    (cores) over the timed calls, and the last result."""
    fn()
    seconds, (busy, own), start = [], cpu_seconds(), time.perf_counter()
    for _ in range(repeats):
        begin = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - begin)
    (busy_after, own_after), wall = cpu_seconds(), time.perf_counter() - start
    return seconds, max(0.0, (busy_after - busy) - (own_after - own)) / wall, result


def machine_facts(threads: int) -> list[str]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                if line.startswith("model name")), "unknown")
    return [f"cpu: {cpu}", f"cores: {os.cpu_count()} ({available_cores()} available)",
            f"torch: {torch.__version__}", f"intra-op threads: {threads}",
            f"date: {datetime.datetime.now().isoformat(timespec='seconds')}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("LTH_DATA") or DEFAULT_ROOT))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (0 = one per core)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before each timed run")
    args = parser.parse_args()
    threads = set_threads(args.threads)

    real = any((args.data_root / "MNIST" / "raw" / name).is_file()
               for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte"))
    with tempfile.TemporaryDirectory() as scratch:
        root = args.data_root if real else write_synthetic_mnist(Path(scratch))
        raw = READERS["mnist"](root)
        data = load_dataset(DataConfig(dataset="mnist", batch_size=args.batch_size), root)
    scaled = raw.x_train.astype(np.float64) / 255
    transform = transforms.Compose([transforms.ToTensor(),
                                    transforms.Normalize((scaled.mean(),), (scaled.std(),))])
    train_set = TorchvisionStyleMNIST(raw.x_train[:, 0], raw.y_train, transform)
    test_set = TorchvisionStyleMNIST(raw.x_test[:, 0], raw.y_test, transform)

    source = f"real MNIST from {args.data_root}" if real else "synthetic MNIST-shaped data (random images)"
    print(f"data: {source}; {len(train_set):,} train / {len(test_set):,} test examples")
    print(f"LeNet-300-100, SGD lr {LR}, batch {args.batch_size}, {args.epochs} epoch(s), "
          f"{args.repeats} interleaved repeats, {args.warmup} warm-up steps")
    pipelines = {
        "toolkit": lambda repeat: run_toolkit(data, args.epochs, args.batch_size, args.warmup),
        "baseline": lambda repeat: run_baseline(train_set, test_set, args.epochs, args.batch_size,
                                                args.warmup, seed=repeat),
    }
    times, others, accuracy = {name: [] for name in pipelines}, {name: [] for name in pipelines}, {}
    for repeat in range(args.repeats):
        for name, run in pipelines.items():
            (busy, own), start = cpu_seconds(), time.perf_counter()
            seconds, accuracy[name] = run(repeat)
            (busy_after, own_after), wall = cpu_seconds(), time.perf_counter() - start
            times[name].append(seconds)
            others[name].append(max(0.0, (busy_after - busy) - (own_after - own)) / wall)
        print(f"  repeat {repeat + 1}: " + ", ".join(f"{name} {times[name][-1]:.2f} s (other load "
                                                  f"{others[name][-1]:.1f} cores)" for name in pipelines))

    examples = len(train_set) * args.epochs
    rate = {name: examples / statistics.median(runs) for name, runs in times.items()}
    print("\n| pipeline | s per epoch (median) | examples/s (median) | all runs (s) | test accuracy |")
    print("|---|---|---|---|---|")
    for name, runs in times.items():
        print(f"| {name} | {statistics.median(runs) / args.epochs:.2f} | {rate[name]:,.0f} | "
              f"{', '.join(f'{t:.2f}' for t in runs)} | {100 * accuracy[name]:.2f}% |")
    worst = max(max(loads) for loads in others.values())
    if worst > 0.25:
        print(f"\nwarning: other processes kept up to {worst:.1f} cores busy during a run; "
              "the machine was contended, so rerun when it is idle")
    print(f"\nratio (toolkit / baseline examples per second): {rate['toolkit'] / rate['baseline']:.2f}\n")
    print("\n".join(machine_facts(threads)))


if __name__ == "__main__":
    main()
