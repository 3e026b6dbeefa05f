"""What every section of the device check shares: sizes, the data, stages, the machine."""

import datetime
import os
import platform
import sys
import time
import traceback
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from imp.base.config import DataConfig
from imp.base.errors import UserError
from imp.data import Dataset, load_dataset

ZIP_NAME = "cifar10-jpeg.zip"
ZIP_PREFIX = "cifar10-jpeg/"  # members are cifar10-jpeg/{train,test}/<class>/<index>.jpg
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
EPOCH_ITERATIONS = 391  # ceil(50,000 / 128): one CIFAR-10 epoch at batch 128


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is; :data:`FULL` on a GPU, :data:`TINY` for the CPU test."""

    per_class: tuple[int, int] | None  # (train, test) JPEGs unpacked per class; None = all
    width: int  # ResNet-20 base width (16 = standard)
    batch: int
    warmup: int  # untimed iterations before each timing
    timed: int  # timed iterations per variant
    replicates: tuple[int, ...]  # batched replicate counts timed
    level_epochs: str  # train.epochs of the IMP run
    rewind: str  # prune.rewind of the IMP run
    score_step: str  # EL2N after this much training
    hessian_examples: int
    landscape_examples: int  # examples per interpolation curve
    check_steps: int  # training steps of each correctness check
    check_replicates: int  # replicates compared batched vs sequential
    compile_backend: str  # torch.compile backend of train.compile


FULL = Sizes(None, 16, 128, 10, 60, (1, 4, 8), "2ep", "500it", "1ep", 1024, 2000, 20, 4, "inductor")
TINY = Sizes((20, 5), 4, 32, 1, 2, (1, 4, 8), "2ep", "3it", "2it", 16, 50, 3, 2, "eager")


def check_data(folder: Path) -> bool:
    """Refuse, in one line, a data folder without the CIFAR-10 zip; whether it holds
    MNIST's four files too (optional: the zip alone, 61 MiB, is what fits beside the
    checkout in a 64 MiB transfer to a device machine)."""
    if not (folder / ZIP_NAME).is_file():
        raise UserError(f"--data {folder} lacks {ZIP_NAME} (see /work/shared/data/README.md "
                        "or the README, section Performance)")
    return all((folder / "MNIST" / "raw" / name).is_file() for name in MNIST_FILES)


def unpack_cifar(folder: Path, cache: Path, per_class: tuple[int, int] | None) -> Path:
    """The ImageFolder root (``train/``, ``test/``) unpacked from ``folder``'s zip under
    ``cache``, once: a ``.complete`` marker says a previous unpacking finished. With
    ``per_class`` only the first (lowest-numbered) files of each class and split."""
    target = cache / ("cifar10-jpeg" if per_class is None else f"cifar10-jpeg-{per_class[0]}-{per_class[1]}")
    root, marker = target / "cifar10-jpeg", target / ".complete"
    if marker.is_file():
        return root
    with zipfile.ZipFile(folder / ZIP_NAME) as archive:
        members = sorted(name for name in archive.namelist()
                         if name.startswith(ZIP_PREFIX) and name.lower().endswith((".jpg", ".jpeg", ".png")))
        if per_class is not None:
            chosen, counts = [], {}
            for name in members:  # sorted: class, then file number
                split, label = name.split("/")[1:3]
                limit = per_class[0 if split == "train" else 1]
                if counts.get((split, label), 0) < limit:
                    counts[(split, label)] = counts.get((split, label), 0) + 1
                    chosen.append(name)
            members = chosen
        if not members:
            raise UserError(f"{folder / ZIP_NAME} holds no {ZIP_PREFIX}{{train,test}}/<class>/*.jpg")
        archive.extractall(target, members)
    marker.write_text("ok\n")
    return root


def cifar_config(root: Path, batch: int) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=str(root), batch_size=batch)


def load_cifar(root: Path, batch: int, device: torch.device) -> Dataset:
    """CIFAR-10 (the JPEG re-encoding) through the toolkit's reader, on ``device``: flip
    and crop augmentation on the device, decoded once into ``<root>/.lth-cache.npz``."""
    return load_dataset(cifar_config(root, batch), root, device)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine(device: torch.device) -> dict:
    facts = {"torch": torch.__version__, "device": str(device), "cpu_count": os.cpu_count(),
             "python": platform.python_version(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
             "cuda": torch.version.cuda, "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
             "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    facts["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return facts


class Stages:
    """Runs each stage once, records its seconds, result or error, and never lets one
    failing stage stop the others; stages after the time budget are recorded as skipped."""

    def __init__(self, budget_seconds: float):
        self.started = time.perf_counter()
        self.budget = budget_seconds
        self.records: dict[str, dict] = {}

    def run(self, name: str, fn: Callable[[], dict], budget: bool = True) -> dict | None:
        """``fn()``, or None when it failed or (``budget``) the budget was spent; a line on
        stderr for each stage, so a run's log shows how far it got."""
        if budget and time.perf_counter() - self.started > self.budget:
            self.records[name] = {"ok": False, "seconds": 0.0, "error": "skipped: the time budget was spent"}
            self._say(name)
            return None
        began = time.perf_counter()
        try:
            result = fn()
        except Exception as error:  # noqa: BLE001 (recorded; the other stages still run)
            self.records[name] = {"ok": False, "seconds": time.perf_counter() - began,
                                  "error": f"{type(error).__name__}: {error}",
                                  "traceback": traceback.format_exc(limit=6)}
            self._say(name)
            return None
        self.records[name] = {"ok": True, "seconds": time.perf_counter() - began, "result": result}
        self._say(name)
        return result

    def _say(self, name: str) -> None:
        record = self.records[name]
        state = "ok" if record["ok"] else record["error"].splitlines()[0][:160]
        print(f"gpu_check: [{self.elapsed():6.1f} s] {name}: {state} ({record['seconds']:.1f} s)",
              file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
