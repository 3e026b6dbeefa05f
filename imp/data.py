"""Data held as tensors on the training device, seeded batches and batched augmentation.

No DataLoader: each split is one preprocessed float tensor on the device (DESIGN §5).
Minibatches are slices of a seeded permutation per epoch; the permutation of epoch ``e``
depends only on ``(order_seed, e)``, so training can start at any step (a rewind point)
with exactly the data order an uninterrupted run would have seen.
"""

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from imp.base import seeds
from imp.base.config import DataConfig
from imp.datasets import READERS, RawData, check_root, resolve_root  # noqa: F401 (resolve_root: imp.data's API)
from imp.base.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Split:
    """Examples of one split: ``x`` float32 (N, C, H, W) normalised, ``y`` int64 (N,).

    ``index`` (int64, N) is each example's position in its original split (the training
    set before a validation split or subset), so results can always be traced back.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, positions: torch.Tensor | np.ndarray | list[int]) -> "Split":
        """The examples at ``positions`` (positions in this split, not original indices)."""
        positions = _positions(positions)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise UserError(f"subset positions must lie in [0, {len(self)})")
        on_device = positions.to(self.x.device)
        return Split(self.x[on_device], self.y[on_device], self.index[positions.to(self.index.device)])


@dataclass(frozen=True)
class Dataset:
    """A data set ready for training: splits on the device plus what was done to them.

    ``noisy`` (bool, len(train)) marks the training examples whose labels were permuted
    among themselves by label noise; ``clean_labels`` are their labels before that.
    ``fill`` is the normalised value of a black pixel per channel (the padding value).
    """

    name: str
    train: Split
    test: Split
    validation: Split | None
    num_classes: int
    augment: bool
    fill: torch.Tensor
    noisy: torch.Tensor
    clean_labels: torch.Tensor
    fingerprint: str = ""  # of the files read (:func:`fingerprint`); "" for a data set built by hand
    epoch_examples: int = 0  # the examples an epoch of the schedule counts; 0 = len(train)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])

    def iterations_per_epoch(self, batch_size: int) -> int:
        """Iterations of an epoch of the schedule: ``ceil(epoch_examples / batch_size)``, where
        ``epoch_examples`` is the training set's size unless a subset keeps the full set's."""
        return math.ceil((self.epoch_examples or len(self.train)) / batch_size)

    def train_subset(self, positions: torch.Tensor | np.ndarray | list[int],
                     full_epochs: bool = False) -> "Dataset":
        """The same data set training only on the examples at ``positions`` of ``train``;
        with ``full_epochs`` the schedule's epochs still count this training set's size."""
        positions = _positions(positions)
        epoch_examples = (self.epoch_examples or len(self.train)) if full_epochs else 0
        return replace(self, train=self.train.subset(positions), noisy=self.noisy[positions],
                       clean_labels=self.clean_labels[positions], epoch_examples=epoch_examples)


def _positions(positions: torch.Tensor | np.ndarray | list[int]) -> torch.Tensor:
    """Positions as a CPU int64 tensor, whatever device or container they came in."""
    if isinstance(positions, torch.Tensor):
        return positions.detach().to("cpu", torch.long)
    return torch.as_tensor(np.asarray(positions), dtype=torch.long)


def load_dataset(config: DataConfig, root: Path, device: str | torch.device = "cpu") -> Dataset:
    """Read, normalise, split and corrupt a data set as ``config`` says; tensors on ``device``.

    Normalisation uses the per-channel mean and standard deviation of the whole original
    training set. The validation split (``config.validation`` examples, seeded by
    ``split_seed``) is carved out before label noise, which touches only training labels.
    """
    if config.dataset not in READERS:
        raise UserError(f"unknown data set {config.dataset!r}" + did_you_mean(config.dataset, READERS))
    root = Path(root)
    check_root(config.dataset, root)
    raw = READERS[config.dataset](root)
    mean, std = _channel_stats(raw)
    train_x = _normalise(raw.x_train, raw.scale, mean, std)
    test_x = _normalise(raw.x_test, raw.scale, mean, std)
    train = Split(train_x, torch.from_numpy(raw.y_train.copy()), torch.arange(len(raw.y_train)))
    test = Split(test_x, torch.from_numpy(raw.y_test.copy()), torch.arange(len(raw.y_test)))

    validation = None
    if config.validation:
        if config.validation >= len(train):
            raise UserError(f"data.validation = {config.validation} leaves no training examples "
                            f"(the training set has {len(train)})")
        order = torch.randperm(len(train), generator=seeds.generator(config.split_seed, "validation"))
        validation = train.subset(order[: config.validation].sort().values)
        train = train.subset(order[config.validation:].sort().values)

    clean_labels = train.y.clone()
    noisy_labels, noisy = permute_labels(train.y, config.label_noise, config.noise_seed)
    train = replace(train, y=noisy_labels)

    augment = raw.natural_images if config.augment == "auto" else config.augment == "flip_crop"
    fill = torch.as_tensor(-mean / std, dtype=torch.float32)
    return Dataset(config.dataset, _to_device(train, device), _to_device(test, device),
                   None if validation is None else _to_device(validation, device), raw.num_classes,
                   augment, fill.to(device), noisy, clean_labels, fingerprint(raw))


FINGERPRINT_SAMPLE = 64  # inputs hashed per split, at evenly spaced positions


def fingerprint(raw: RawData) -> str:
    """16 hex digits of sha256 over what identifies a data set as read: the shapes, every
    training and test label, and :data:`FINGERPRINT_SAMPLE` inputs of each split at evenly
    spaced positions, as stored (before normalisation, so every device agrees). Another
    folder of the same files gives the same fingerprint; other images or labels do not."""
    digest = hashlib.sha256()
    for x, y in ((raw.x_train, raw.y_train), (raw.x_test, raw.y_test)):
        digest.update(repr((x.shape, str(x.dtype), y.shape)).encode())
        digest.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
        positions = np.unique(np.linspace(0, len(x) - 1, FINGERPRINT_SAMPLE).round().astype(int))
        digest.update(np.ascontiguousarray(x[positions]).tobytes())
    return digest.hexdigest()[:16]


def _to_device(split: Split, device: str | torch.device) -> Split:
    """Examples move to the training device; ``index`` stays on the CPU for bookkeeping."""
    return Split(split.x.to(device), split.y.to(device), split.index)


def _channel_stats(raw: RawData) -> tuple[np.ndarray, np.ndarray]:
    x = raw.x_train.astype(np.float64) / raw.scale
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    # A constant channel's std rounds to ~1e-17, not 0: test constancy exactly instead.
    constant = x.min(axis=(0, 2, 3)) == x.max(axis=(0, 2, 3))
    return mean, np.where(constant, 1.0, std)


def _normalise(x: np.ndarray, scale: float, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.array(x, dtype=np.float32)).div_(scale)
    mean = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(mean).div_(std)


def permute_labels(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Label noise: permute the labels of a seeded random ``fraction`` of examples among themselves.

    Returns the new labels and a boolean mask of the chosen examples (a chosen example can
    keep its label by chance; ``new != old`` tells which labels actually changed). The
    multiset of labels is unchanged, as in Paul et al. (2021).
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"label noise fraction must be in [0, 1), got {fraction}")
    count = round(fraction * len(labels))
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    labels = labels.clone()
    if count == 0:
        return labels, chosen
    generator = seeds.generator(seed, "label_noise")
    picked = torch.randperm(len(labels), generator=generator)[:count]
    shuffled = picked[torch.randperm(count, generator=generator)]
    labels[picked.to(labels.device)] = labels[shuffled.to(labels.device)]
    chosen[picked] = True
    return labels, chosen


def fixed_subset(split: Split, count: int, seed: int) -> Split:
    """The same ``count`` examples every time (seeded); the whole split when count is 0."""
    if count == 0 or count >= len(split):
        return split
    order = torch.randperm(len(split), generator=seeds.generator(seed, "eval_subset"))
    return split.subset(order[:count].sort().values)


class Batches:
    """Minibatch positions for any training step, from seeded per-epoch permutations.

    Step ``s`` lies in epoch ``s // iterations_per_epoch``; every epoch is a fresh
    permutation seeded by ``(seed, epoch)``; the last batch of an epoch may be short.
    """

    def __init__(self, size: int, batch_size: int, seed: int, device: str | torch.device = "cpu"):
        if size <= 0:
            raise UserError("the training set is empty")
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.device = torch.device(device)
        self.iterations_per_epoch = math.ceil(size / batch_size)
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.long)

    def order(self, epoch: int) -> torch.Tensor:
        generator = seeds.generator(self.seed, "order", epoch)
        return torch.randperm(self.size, generator=generator).to(self.device)

    def at(self, step: int) -> torch.Tensor:
        epoch, position = divmod(step, self.iterations_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._order = epoch, self.order(epoch)
        return self._order[position * self.batch_size: (position + 1) * self.batch_size]


def flip_crop(x: torch.Tensor, fill: torch.Tensor, generator: torch.Generator,
              padding: int = 4) -> torch.Tensor:
    """Random crop after ``padding`` pixels of ``fill`` on each side, then a random
    horizontal flip with probability 1/2, for a whole batch at once on its device.

    Equivalent to torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip``
    applied per example; randomness comes from ``generator`` (CPU) only.
    """
    batch, channels, height, width = x.shape
    shifts = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator).to(x.device)
    flips = (torch.rand(batch, generator=generator) < 0.5).to(x.device)
    padded = fill.view(1, -1, 1, 1).expand(batch, channels, height + 2 * padding,
                                           width + 2 * padding).clone()
    padded[:, :, padding:padding + height, padding:padding + width] = x
    rows = shifts[0].view(-1, 1) + torch.arange(height, device=x.device)  # (B, H)
    cols = shifts[1].view(-1, 1) + torch.arange(width, device=x.device)  # (B, W)
    cols = torch.where(flips.view(-1, 1), cols.flip(1), cols)
    b = torch.arange(batch, device=x.device).view(-1, 1, 1, 1)
    c = torch.arange(channels, device=x.device).view(1, -1, 1, 1)
    return padded[b, c, rows.view(batch, 1, height, 1), cols.view(batch, 1, 1, width)]
