"""Data held as tensors on the training device, seeded batches and batched augmentation.

No DataLoader: each split is one tensor on the device (DESIGN §5). Images stored as bytes
(MNIST, CIFAR, an image folder) stay bytes on an accelerator (``Split.pixels``, uint8): a
minibatch is gathered from them and normalised on the device (:meth:`Split.batch`), and
the whole split is normalised into ``Split.x`` (float32) only when something reads ``x``.
On the CPU splits are normalised once at loading (:data:`BYTES_ON_CPU`).
Minibatches are slices of a seeded permutation per epoch; the permutation of epoch ``e``
depends only on ``(order_seed, e)``, so training can start at any step (a rewind point)
with exactly the data order an uninterrupted run would have seen. Flip-and-crop's random
numbers are drawn for a whole epoch at once (:class:`Augmentation`), one copy to the
device per epoch, so a training step does no host work besides launching kernels.
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
class Normalisation:
    """``x = (pixels / scale - mean) / std`` per channel, in float32, in that order of
    operations (so a batch normalised on its own equals the same rows of the whole split)."""

    scale: float
    mean: torch.Tensor  # float32 (C,)
    std: torch.Tensor  # float32 (C,)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        mean = self.mean.to(pixels.device).view(1, -1, 1, 1)
        std = self.std.to(pixels.device).view(1, -1, 1, 1)
        x = pixels.to(torch.float32)
        x = x.clone() if x is pixels else x  # never in place on the caller's tensor
        return x.div_(self.scale).sub_(mean).div_(std)

    def to(self, device: str | torch.device) -> "Normalisation":
        return Normalisation(self.scale, self.mean.to(device), self.std.to(device))


class _Inputs:
    """``Split.x``: given, or normalised from ``Split.pixels`` on first use and kept."""

    def __get__(self, split: "Split | None", owner: type | None = None) -> torch.Tensor | None:
        if split is None:  # the dataclass asks for the field's default
            return None
        x = split.__dict__.get("_x")
        if x is None:
            if split.pixels is None:
                raise ValueError("a Split needs x or pixels")
            x = split.__dict__["_x"] = split.normalisation(split.pixels)
        return x

    def __set__(self, split: "Split", x: torch.Tensor | None) -> None:
        split.__dict__["_x"] = x


@dataclass(frozen=True, eq=False)
class Split:
    """Examples of one split: ``x`` float32 (N, C, H, W) normalised, ``y`` int64 (N,).

    ``index`` (int64, N) is each example's position in its original split (the training
    set before a validation split or subset), so results can always be traced back.
    ``pixels`` (uint8, N, C, H, W), when the data set is stored as bytes, are the inputs
    as read, and ``x = normalisation(pixels)``, computed on first use; ``x = None`` with
    pixels given leaves it to then. Training reads :meth:`batch`, which never needs ``x``.
    """

    x: torch.Tensor | None = _Inputs()
    y: torch.Tensor | None = None
    index: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    normalisation: Normalisation | None = None

    def __len__(self) -> int:
        return len(self.y)

    @property
    def device(self) -> torch.device:
        return self.y.device

    @property
    def shape(self) -> tuple[int, ...]:
        """(N, C, H, W) of the inputs, without normalising them."""
        return tuple((self.pixels if self._lazy() else self.x).shape)

    def _lazy(self) -> bool:
        return self.__dict__.get("_x") is None and self.pixels is not None

    def batch(self, positions: torch.Tensor | slice) -> torch.Tensor:
        """``x[positions]`` (positions on the device, or a slice), normalised from the
        bytes while ``x`` is not held: the same numbers either way."""
        return self.normalisation(self.pixels[positions]) if self._lazy() else self.x[positions]

    def chunks(self, size: int):
        """``(x, y)`` of consecutive slices of ``size`` examples, in order (normalised
        slice by slice while ``x`` is not held)."""
        for start in range(0, len(self), size):
            chunk = slice(start, start + size)
            yield self.batch(chunk), self.y[chunk]

    def relabelled(self, y: torch.Tensor) -> "Split":
        """The same inputs with labels ``y``."""
        return Split(self.__dict__.get("_x"), y, self.index, self.pixels, self.normalisation)

    def subset(self, positions: torch.Tensor | np.ndarray | list[int]) -> "Split":
        """The examples at ``positions`` (positions in this split, not original indices)."""
        positions = _positions(positions)
        if len(positions) and (positions.min() < 0 or positions.max() >= len(self)):
            raise UserError(f"subset positions must lie in [0, {len(self)})")
        on_device = positions.to(self.device)
        index = self.index[positions.to(self.index.device)]
        if self._lazy():
            return Split(None, self.y[on_device], index, self.pixels[on_device], self.normalisation)
        return Split(self.x[on_device], self.y[on_device], index)


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
        return tuple(self.train.shape[1:])

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
    normalisation = Normalisation(float(raw.scale), torch.as_tensor(mean, dtype=torch.float32),
                                  torch.as_tensor(std, dtype=torch.float32))
    train = _split(raw.x_train, raw.y_train, normalisation)
    test = _split(raw.x_test, raw.y_test, normalisation)

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
    train = train.relabelled(noisy_labels)

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


def _split(x: np.ndarray, y: np.ndarray, normalisation: Normalisation) -> Split:
    """A split as read: bytes kept as ``pixels`` (normalised when used), anything else
    normalised now."""
    labels, index = torch.from_numpy(y.copy()), torch.arange(len(y))
    if x.dtype == np.uint8:
        pixels = np.ascontiguousarray(x)
        pixels = pixels if pixels.flags.writeable else pixels.copy()  # torch wants writable memory
        return Split(None, labels, index, torch.from_numpy(pixels), normalisation)
    return Split(normalisation(torch.from_numpy(np.array(x, dtype=np.float32))), labels, index)


BYTES_ON_CPU = False  # keep bytes on the CPU too (the tests of the device path set it)


def _to_device(split: Split, device: str | torch.device) -> Split:
    """Examples move to the training device; ``index`` stays on the CPU for bookkeeping.
    Bytes stay bytes on an accelerator (a quarter of the memory, normalised per batch);
    on the CPU the split is normalised once, since slicing floats is faster there (a
    LeNet-300-100 epoch on MNIST 5-10% faster) and memory is not what is scarce."""
    if split._lazy() and (torch.device(device).type != "cpu" or BYTES_ON_CPU):
        return Split(None, split.y.to(device), split.index, split.pixels.to(device), split.normalisation.to(device))
    return Split(split.x.to(device), split.y.to(device), split.index)


def _channel_stats(raw: RawData) -> tuple[np.ndarray, np.ndarray]:
    x = raw.x_train.astype(np.float64) / raw.scale
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3))
    # A constant channel's std rounds to ~1e-17, not 0: test constancy exactly instead.
    constant = x.min(axis=(0, 2, 3)) == x.max(axis=(0, 2, 3))
    return mean, np.where(constant, 1.0, std)


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


PADDING = 4  # flip-and-crop's padding on each side (Zagoruyko & Komodakis; He et al. 2016)


def flip_crop_draw(count: int, generator: torch.Generator, padding: int = PADDING) -> tuple[torch.Tensor, torch.Tensor]:
    """The random numbers of flip-and-crop for ``count`` examples, from ``generator`` (CPU):
    ``shifts`` (2, count) in [0, 2 * padding] (row, column offsets of the crop), then
    ``flips`` (count,) bool, each with probability 1/2."""
    shifts = torch.randint(0, 2 * padding + 1, (2, count), generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    return shifts, flips


def flip_crop(x: torch.Tensor, fill: torch.Tensor, generator: torch.Generator,
              padding: int = PADDING) -> torch.Tensor:
    """Random crop after ``padding`` pixels of ``fill`` on each side, then a random
    horizontal flip with probability 1/2, for a whole batch at once on its device.

    Equivalent to torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip``
    applied per example; randomness comes from ``generator`` (CPU) only
    (:func:`flip_crop_draw`).
    """
    shifts, flips = flip_crop_draw(len(x), generator, padding)
    return crop_flip(x, fill, shifts.to(x.device), flips.to(x.device), padding)


def crop_flip(x: torch.Tensor, fill: torch.Tensor, shifts: torch.Tensor, flips: torch.Tensor,
              padding: int = PADDING) -> torch.Tensor:
    """Flip-and-crop with given random numbers (:func:`flip_crop_draw`'s, on ``x``'s
    device): example b is cropped at ``shifts[:, b]`` of its padded image, then mirrored
    if ``flips[b]``. Every operation runs on the device."""
    batch, channels, height, width = x.shape
    wide = width + 2 * padding
    padded = fill.view(1, -1, 1, 1).expand(batch, channels, height + 2 * padding, wide).clone()
    padded[:, :, padding:padding + height, padding:padding + width] = x
    rows = shifts[0].view(-1, 1) + torch.arange(height, device=x.device)  # (B, H)
    cols = shifts[1].view(-1, 1) + torch.arange(width, device=x.device)  # (B, W)
    cols = torch.where(flips.view(-1, 1), cols.flip(1), cols)
    # one gather of flat positions in the padded image (3x faster on a CPU than indexing by four tensors)
    flat = (rows.view(batch, height, 1) * wide + cols.view(batch, 1, width)).view(batch, 1, height * width)
    out = padded.view(batch, channels, -1).gather(2, flat.expand(batch, channels, height * width))
    return out.view(batch, channels, height, width)


class Augmentation:
    """Flip-and-crop of training step ``s`` with the numbers :func:`flip_crop` would draw
    from ``generator(seed, "augment", s)``, drawn for a whole epoch of ``batches`` at once
    and copied to the device in one go: the same augmentation, no per-step host work."""

    def __init__(self, seed: int, batches: Batches, fill: torch.Tensor):
        self.seed, self.batches, self.fill = seed, batches, fill
        self._epoch, self._drawn = -1, None

    def _draw(self, epoch: int) -> None:
        per_epoch, size, batch = self.batches.iterations_per_epoch, self.batches.size, self.batches.batch_size
        draws = [flip_crop_draw(min(batch, size - position * batch),
                                seeds.generator(self.seed, "augment", epoch * per_epoch + position))
                 for position in range(per_epoch)]
        shifts, flips = torch.cat([d[0] for d in draws], 1), torch.cat([d[1] for d in draws])
        device = self.batches.device
        if device.type == "cuda":  # pinned, so the copy does not wait for the device
            shifts, flips = shifts.pin_memory(), flips.pin_memory()
        self._epoch = epoch
        self._drawn = (shifts.to(device, non_blocking=True), flips.to(device, non_blocking=True))

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Step ``step``'s minibatch ``x`` (on the device), augmented."""
        epoch, position = divmod(step, self.batches.iterations_per_epoch)
        if epoch != self._epoch:
            self._draw(epoch)
        first = position * self.batches.batch_size
        shifts, flips = self._drawn
        return crop_flip(x, self.fill, shifts[:, first:first + len(x)], flips[first:first + len(x)])
