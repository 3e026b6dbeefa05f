"""Tests for imp.data: normalisation, splits and subsets, label noise, seeded batches,
flip-and-crop augmentation, fixed evaluation subsets and the data root."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from imp.base import seeds
from imp.base.config import DataConfig
from imp.data import (Augmentation, Batches, Dataset, Split, fixed_subset, flip_crop, load_dataset, permute_labels,
                      resolve_root)
from imp.base.errors import UserError

N_DIGITS_TRAIN = 1437


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("digits-root")  # digits reads nothing from its root


@pytest.fixture(scope="module")
def digits(digits_root) -> Dataset:
    return load_dataset(DataConfig(dataset="digits"), root=digits_root)


@pytest.fixture(scope="module")
def noisy_digits(digits_root) -> Dataset:
    return load_dataset(DataConfig(dataset="digits", label_noise=0.2, noise_seed=3), root=digits_root)


def write_mnist(root: Path, x_train: np.ndarray, y_train: np.ndarray,
                x_test: np.ndarray, y_test: np.ndarray) -> None:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for stem, array in (("train-images-idx3-ubyte", x_train), ("train-labels-idx1-ubyte", y_train),
                        ("t10k-images-idx3-ubyte", x_test), ("t10k-labels-idx1-ubyte", y_test)):
        header = b"\x00\x00\x08" + bytes([array.ndim])
        header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
        with gzip.open(raw / f"{stem}.gz", "wb") as handle:
            handle.write(header + array.astype(np.uint8).tobytes())


# --- load_dataset -------------------------------------------------------------------------


def test_digits_train_is_normalised_per_channel(digits):
    x = digits.train.x
    assert x.dtype == torch.float32 and x.shape == (N_DIGITS_TRAIN, 1, 8, 8)
    assert abs(x.mean(dim=(0, 2, 3)).item()) < 1e-5
    assert abs(x.std(dim=(0, 2, 3)).item() - 1.0) < 1e-3
    assert digits.test.x.shape == (360, 1, 8, 8)
    # The test set is normalised with the training statistics, so it is close to but not
    # exactly standardised.
    assert abs(digits.test.x.mean().item()) < 0.1
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    assert digits.name == "digits" and digits.validation is None
    assert digits.augment is False  # digits are not natural images
    assert digits.train.index.tolist() == list(range(N_DIGITS_TRAIN))
    assert not digits.noisy.any()
    assert torch.equal(digits.clean_labels, digits.train.y)
    assert digits.iterations_per_epoch(128) == 12  # ceil(1437 / 128)


def test_normalisation_and_fill_known_values(tmp_path):
    # Training pixels are 0 or 255 in equal numbers: mean 0.5, std 0.5 (of x / 255), so a
    # black pixel becomes -1, a white one +1, and fill (a black pixel) is -1.
    x_train = np.zeros((4, 2, 3), np.uint8)
    x_train[:2] = 255
    x_test = np.full((1, 2, 3), 51, np.uint8)  # 0.2 -> (0.2 - 0.5) / 0.5 = -0.6
    write_mnist(tmp_path, x_train, np.array([1, 2, 3, 4]), x_test, np.array([7]))
    data = load_dataset(DataConfig(dataset="mnist"), root=tmp_path)
    assert data.train.x.shape == (4, 1, 2, 3)
    expected = torch.tensor([1.0, 1.0, -1.0, -1.0]).view(4, 1, 1, 1).expand(4, 1, 2, 3)
    torch.testing.assert_close(data.train.x, expected)
    torch.testing.assert_close(data.test.x, torch.full((1, 1, 2, 3), -0.6))
    torch.testing.assert_close(data.fill, torch.tensor([-1.0]))
    assert data.train.y.tolist() == [1, 2, 3, 4] and data.test.y.tolist() == [7]
    assert data.train.y.dtype == torch.int64


@pytest.mark.parametrize("n, value", [(3, 128), (1000, 100), (1000, 37)])
def test_constant_channel_has_unit_std(tmp_path, n, value):
    # A constant channel has std 0, taken as 1, so fill = -value / 255. (In floating point
    # np.std of such a channel can come out ~1e-17 rather than 0; it must not be used.)
    x = np.full((n, 4, 4), value, np.uint8)
    write_mnist(tmp_path, x, np.zeros(n, np.uint8), x[:1], np.array([0]))
    data = load_dataset(DataConfig(dataset="mnist"), root=tmp_path)
    torch.testing.assert_close(data.train.x, torch.zeros(n, 1, 4, 4), atol=1e-6, rtol=0)
    torch.testing.assert_close(data.fill, torch.tensor([-value / 255]))


def test_colour_images_are_normalised_per_channel(tmp_path):
    # Synthetic CIFAR-10 pickles whose three channels have different statistics.
    import pickle

    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    def batch(n: int) -> dict:
        data = np.empty((n, 3, 1024), np.uint8)
        data[:, 0] = rng.integers(0, 256, (n, 1024))
        data[:, 1] = rng.integers(0, 51, (n, 1024))
        data[:, 2] = 100  # constant: std 0, taken as 1
        return {b"data": data.reshape(n, 3072), b"labels": list(range(n))}

    train = [batch(2) for _ in range(5)]
    for i, b in enumerate(train, start=1):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(b))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(2)))
    data = load_dataset(DataConfig(dataset="cifar10"), root=tmp_path)

    x = data.train.x
    assert x.shape == (10, 3, 32, 32) and data.augment is True  # auto: natural images
    torch.testing.assert_close(x[:, :2].mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(x[:, :2].std(dim=(0, 2, 3), unbiased=False), torch.ones(2),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(x[:, 2], torch.zeros(10, 32, 32), atol=1e-6, rtol=0)
    pixels = np.concatenate([b[b"data"] for b in train]).reshape(10, 3, -1) / 255.0
    mean, std = pixels.mean(axis=(0, 2)), pixels.std(axis=(0, 2))
    std[2] = 1.0  # np.std gives ~1e-17 here, not 0: the constant channel must still get 1
    torch.testing.assert_close(data.fill, torch.tensor(-mean / std, dtype=torch.float32))
    assert abs(data.fill[2].item() + 100 / 255) < 1e-6


@pytest.mark.parametrize("augment, natural, expected", [
    ("auto", False, False), ("auto", True, True),
    ("none", True, False), ("flip_crop", False, True),
])
def test_augment_setting(tmp_path, monkeypatch, augment, natural, expected):
    import imp.data
    from imp.datasets import RawData

    rng = np.random.default_rng(0)
    raw = RawData(rng.integers(0, 256, (6, 3, 4, 4), dtype=np.uint8), np.arange(6) % 2,
                  rng.integers(0, 256, (2, 3, 4, 4), dtype=np.uint8), np.arange(2),
                  2, 255.0, natural)
    monkeypatch.setitem(imp.data.READERS, "cifar10", lambda root: raw)
    data = load_dataset(DataConfig(dataset="cifar10", augment=augment), root=tmp_path)
    assert data.augment is expected
    assert data.fill.shape == (3,)


def test_unknown_dataset_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="did you mean 'mnist'"):
        load_dataset(DataConfig(dataset="minst"), root=tmp_path)


def test_validation_too_large_is_a_user_error(digits_root):
    with pytest.raises(UserError, match="data.validation"):
        load_dataset(DataConfig(dataset="digits", validation=N_DIGITS_TRAIN), root=digits_root)


# --- subsets ---------------------------------------------------------------------------------


def test_split_subset_keeps_x_y_index_aligned(digits):
    positions = [5, 0, 1436, 5]
    part = digits.train.subset(positions)
    assert len(part) == 4
    assert part.index.tolist() == positions
    assert torch.equal(part.x, digits.train.x[positions])
    assert part.y.tolist() == digits.train.y[positions].tolist()
    # A subset of a subset keeps the original indices, not positions.
    assert part.subset([2, 1]).index.tolist() == [1436, 0]
    for form in (np.array(positions), torch.tensor(positions)):
        assert torch.equal(digits.train.subset(form).index, part.index)
    assert len(digits.train.subset([])) == 0


@pytest.mark.parametrize("bad", [[-1], [N_DIGITS_TRAIN], [0, N_DIGITS_TRAIN + 5]])
def test_split_subset_rejects_positions_out_of_range(digits, bad):
    with pytest.raises(UserError, match="subset positions"):
        digits.train.subset(bad)


def test_train_subset_keeps_noise_records_aligned(noisy_digits):
    positions = torch.randperm(N_DIGITS_TRAIN, generator=torch.Generator().manual_seed(0))[:300]
    part = noisy_digits.train_subset(positions)
    assert len(part.train) == 300
    assert torch.equal(part.train.index, positions)
    assert torch.equal(part.train.x, noisy_digits.train.x[positions])
    assert torch.equal(part.train.y, noisy_digits.train.y[positions])
    assert torch.equal(part.noisy, noisy_digits.noisy[positions])
    assert torch.equal(part.clean_labels, noisy_digits.clean_labels[positions])
    assert part.noisy.any() and not part.noisy.all()  # the subset holds both kinds
    # Untouched: the test split, fill and metadata.
    assert part.test is noisy_digits.test and part.num_classes == noisy_digits.num_classes
    assert part.iterations_per_epoch(128) == 3


# --- validation split --------------------------------------------------------------------


def test_validation_split_sizes_disjoint_and_aligned(digits, digits_root):
    data = load_dataset(DataConfig(dataset="digits", validation=200, split_seed=4), root=digits_root)
    assert len(data.validation) == 200 and len(data.train) == N_DIGITS_TRAIN - 200
    train_index, val_index = data.train.index.tolist(), data.validation.index.tolist()
    assert not set(train_index) & set(val_index)
    assert sorted(train_index + val_index) == list(range(N_DIGITS_TRAIN))
    assert train_index == sorted(train_index) and val_index == sorted(val_index)
    # Carved from the original training set with the same normalisation; the test set untouched.
    for split in (data.train, data.validation):
        assert torch.equal(split.x, digits.train.x[split.index])
        assert torch.equal(split.y, digits.train.y[split.index])
    assert torch.equal(data.test.x, digits.test.x) and torch.equal(data.test.y, digits.test.y)
    assert len(data.noisy) == len(data.clean_labels) == N_DIGITS_TRAIN - 200


def test_validation_split_is_deterministic_per_split_seed(digits_root):
    def val_index(split_seed: int) -> list[int]:
        config = DataConfig(dataset="digits", validation=100, split_seed=split_seed)
        return load_dataset(config, root=digits_root).validation.index.tolist()

    assert val_index(0) == val_index(0)
    assert val_index(0) != val_index(1)
    # The documented derivation: randperm seeded by (split_seed, "validation").
    order = torch.randperm(N_DIGITS_TRAIN, generator=seeds.generator(1, "validation"))
    assert val_index(1) == sorted(order[:100].tolist())


# --- label noise -----------------------------------------------------------------------------


@pytest.mark.parametrize("n, fraction", [(1000, 0.2), (1437, 0.2), (10, 0.25), (7, 0.5), (5, 0.05)])
def test_permute_labels_chooses_round_fraction_and_permutes_them(n, fraction):
    labels = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(n))
    original = labels.clone()
    new, chosen = permute_labels(labels, fraction, seed=7)
    assert torch.equal(labels, original)  # the input is not modified
    assert chosen.dtype == torch.bool and chosen.shape == (n,)
    assert int(chosen.sum()) == round(fraction * n)
    assert torch.equal(new[~chosen], original[~chosen])
    assert sorted(new[chosen].tolist()) == sorted(original[chosen].tolist())
    assert sorted(new.tolist()) == sorted(original.tolist())


def test_permute_labels_actually_moves_labels():
    labels = torch.arange(1000)  # all distinct, so any move shows
    new, chosen = permute_labels(labels, 0.3, seed=0)
    changed = new != labels
    assert not (changed & ~chosen).any()
    assert changed.sum() > 250  # a random permutation of 300 leaves ~1 fixed point
    # A permutation of the chosen positions: each chosen label appears exactly once.
    assert sorted(new[chosen].tolist()) == torch.nonzero(chosen).flatten().tolist()


def test_permute_labels_deterministic_per_seed():
    labels = torch.arange(500) % 10
    a_labels, a_chosen = permute_labels(labels, 0.4, seed=11)
    b_labels, b_chosen = permute_labels(labels, 0.4, seed=11)
    assert torch.equal(a_labels, b_labels) and torch.equal(a_chosen, b_chosen)
    c_labels, c_chosen = permute_labels(labels, 0.4, seed=12)
    assert not torch.equal(a_chosen, c_chosen)
    assert not torch.equal(a_labels, c_labels)


def test_permute_labels_zero_fraction_is_identity():
    labels = torch.arange(50)
    new, chosen = permute_labels(labels, 0.0, seed=0)
    assert torch.equal(new, labels) and not chosen.any()
    new[0] = 99  # a copy, not the input
    assert labels[0] == 0


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_permute_labels_rejects_bad_fraction(fraction):
    with pytest.raises(UserError, match="label noise fraction"):
        permute_labels(torch.arange(10), fraction, seed=0)


def test_load_dataset_label_noise_records(noisy_digits, digits):
    data = noisy_digits
    assert int(data.noisy.sum()) == round(0.2 * N_DIGITS_TRAIN) == 287
    assert torch.equal(data.clean_labels, digits.train.y)  # the labels before noise
    assert torch.equal(data.train.y[~data.noisy], data.clean_labels[~data.noisy])
    assert sorted(data.train.y[data.noisy].tolist()) == sorted(data.clean_labels[data.noisy].tolist())
    assert (data.train.y != data.clean_labels).sum() > 200  # ~90% of 287 move to another class
    assert torch.equal(data.train.x, digits.train.x) and torch.equal(data.test.y, digits.test.y)
    # Exactly what permute_labels gives for noise_seed 3.
    expected, chosen = permute_labels(digits.train.y, 0.2, seed=3)
    assert torch.equal(data.train.y, expected) and torch.equal(data.noisy, chosen)


def test_label_noise_after_validation_split(digits_root, digits):
    config = DataConfig(dataset="digits", validation=300, split_seed=2, label_noise=0.1, noise_seed=1)
    data = load_dataset(config, root=digits_root)
    assert int(data.noisy.sum()) == round(0.1 * (N_DIGITS_TRAIN - 300))
    assert torch.equal(data.clean_labels, digits.train.y[data.train.index])
    assert torch.equal(data.validation.y, digits.train.y[data.validation.index])  # clean
    assert torch.equal(data.train.y[~data.noisy], data.clean_labels[~data.noisy])


# --- Batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n, batch_size", [(10, 4), (12, 4), (37, 8), (5, 16)])
def test_batches_each_epoch_is_a_permutation(n, batch_size):
    batches = Batches(n, batch_size, seed=0)
    per_epoch = -(-n // batch_size)
    assert batches.iterations_per_epoch == per_epoch
    for epoch in range(3):
        steps = [batches.at(epoch * per_epoch + i) for i in range(per_epoch)]
        assert all(len(s) == batch_size for s in steps[:-1])
        assert len(steps[-1]) == (n % batch_size or batch_size)
        assert sorted(torch.cat(steps).tolist()) == list(range(n))
        assert all(s.dtype == torch.int64 for s in steps)


def test_batches_same_seed_same_order_other_seed_or_epoch_differs():
    a, b, c = Batches(100, 32, seed=5), Batches(100, 32, seed=5), Batches(100, 32, seed=6)
    for step in range(12):
        assert torch.equal(a.at(step), b.at(step))
    assert not torch.equal(a.order(0), a.order(1))
    assert not torch.equal(a.order(0), c.order(0))
    # The documented derivation: epoch e's permutation is seeded by (seed, "order", e).
    expected = torch.randperm(100, generator=seeds.generator(5, "order", 2))
    assert torch.equal(a.order(2), expected)
    assert torch.equal(a.at(9), expected[32:64])  # step 9 = epoch 2, batch 1


def test_batches_resume_at_any_step():
    n, batch_size = 53, 8  # 7 steps an epoch, the last one of 5
    walked = Batches(n, batch_size, seed=1)
    sequence = [walked.at(step).clone() for step in range(40)]
    steps = [33, 7, 6, 0, 20, 13, 39, 14, 33]  # jumps forward, back, across epochs
    resumed = Batches(n, batch_size, seed=1)
    for step in steps:
        assert torch.equal(resumed.at(step), sequence[step]), step
    fresh = Batches(n, batch_size, seed=1)
    assert torch.equal(fresh.at(27), sequence[27])  # first call in the middle of epoch 3


def test_batches_reject_empty_training_set():
    with pytest.raises(UserError, match="empty"):
        Batches(0, 8, seed=0)


# --- flip_crop -------------------------------------------------------------------------------


def reference_flip_crop(x: torch.Tensor, fill: torch.Tensor, seed: int, padding: int):
    """Per example: pad with fill (F.pad), crop at the drawn offsets, flip if drawn."""
    batch, channels, height, width = x.shape
    generator = torch.Generator().manual_seed(seed)
    shifts = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator)
    flips = torch.rand(batch, generator=generator) < 0.5
    out = []
    for i in range(batch):
        padded = torch.stack([F.pad(x[i, c], (padding,) * 4, value=float(fill[c]))
                              for c in range(channels)])
        top, left = int(shifts[0, i]), int(shifts[1, i])
        crop = padded[:, top:top + height, left:left + width]
        out.append(crop.flip(-1) if flips[i] else crop)
    return torch.stack(out), shifts, flips


@pytest.mark.parametrize("padding", [4, 1, 0])
def test_flip_crop_matches_per_example_reference(padding):
    batch, channels, height, width = 64, 3, 5, 7  # non-square, so rows and columns differ
    x = torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(0))
    fill = torch.tensor([-1.5, 0.25, 2.0])
    out = flip_crop(x, fill, torch.Generator().manual_seed(123), padding=padding)
    expected, shifts, flips = reference_flip_crop(x, fill, seed=123, padding=padding)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(out, expected)
    # The draws exercise both flips and both extreme offsets.
    assert flips.any() and not flips.all()
    if padding:
        assert {0, 2 * padding} <= set(shifts.flatten().tolist())


def test_flip_crop_known_shift():
    # With padding 1, draw the offsets and check one example by hand.
    x = torch.arange(12.0).view(1, 1, 3, 4)
    fill = torch.tensor([-9.0])
    generator = torch.Generator().manual_seed(0)
    shifts = torch.randint(0, 3, (2, 1), generator=generator)
    flipped = bool(torch.rand(1, generator=generator) < 0.5)
    out = flip_crop(x, fill, torch.Generator().manual_seed(0), padding=1)[0, 0]
    full = torch.full((5, 6), -9.0)
    full[1:4, 1:5] = x[0, 0]
    top, left = int(shifts[0, 0]), int(shifts[1, 0])
    window = full[top:top + 3, left:left + 4]
    assert torch.equal(out, window.flip(-1) if flipped else window)


def test_flip_crop_of_a_fill_image_is_fill():
    fill = torch.tensor([-0.4242, 1.0, 3.5])
    x = fill.view(1, 3, 1, 1).expand(16, 3, 6, 6).clone()
    out = flip_crop(x, fill, torch.Generator().manual_seed(9), padding=4)
    assert torch.equal(out, x)


def test_flip_crop_keeps_input_and_advances_generator():
    x = torch.randn(32, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    before = x.clone()
    generator = torch.Generator().manual_seed(2)
    first = flip_crop(x, torch.zeros(1), generator)
    second = flip_crop(x, torch.zeros(1), generator)
    assert torch.equal(x, before)
    assert not torch.equal(first, second)  # a new draw for every batch


def test_augmentation_drawn_per_epoch_equals_per_step_draws():
    # 50 examples in batches of 16: 4 steps per epoch, the last one 2 examples short of 16.
    # Every step, from a start in the middle of an epoch, across two epoch boundaries,
    # must equal flip_crop with the step's own generator, as training drew it before.
    batches = Batches(50, 16, seed=4)
    fill = torch.tensor([-1.0, 0.5, 2.0])
    x = torch.randn(50, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    augmentation = Augmentation(7, batches, fill)
    lengths = set()
    for step in range(2, 11):
        batch = x[batches.at(step)]
        lengths.add(len(batch))
        expected = flip_crop(batch, fill, seeds.generator(7, "augment", step))
        assert torch.equal(augmentation(batch, step), expected), step
    assert lengths == {16, 2}
    assert augmentation._epoch == 2  # drawn three times, once per epoch
    # A jump backwards (a new level starting at the rewind step) draws that epoch again.
    assert torch.equal(augmentation(x[batches.at(1)], 1), flip_crop(x[batches.at(1)], fill, seeds.generator(7, "augment", 1)))


# --- inputs kept as bytes ----------------------------------------------------------------------


def byte_split(count: int = 40, seed: int = 0) -> tuple[Split, torch.Tensor]:
    """A split held as bytes, and its inputs normalised the way load_dataset did before
    bytes were kept (numpy float32 / 255, minus the mean, over the std), by hand."""
    from imp.data import Normalisation

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (count, 3, 4, 4), dtype=np.uint8)
    mean, std = np.array([0.49, 0.48, 0.45]), np.array([0.25, 0.24, 0.26])
    expected = torch.from_numpy(np.array(pixels, dtype=np.float32)).div_(255.0)
    expected = expected.sub_(torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
    expected = expected.div_(torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
    norm = Normalisation(255.0, torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32))
    split = Split(None, torch.from_numpy(rng.integers(0, 10, count)), torch.arange(count), torch.from_numpy(pixels), norm)
    return split, expected


def test_byte_split_batches_chunks_and_subsets_equal_the_normalised_inputs_without_holding_them():
    split, expected = byte_split()
    positions = torch.tensor([5, 0, 39, 5, 17])
    assert torch.equal(split.batch(positions), expected[positions])
    assert torch.equal(torch.cat([x for x, _ in split.chunks(16)]), expected)
    assert [len(y) for _, y in split.chunks(16)] == [16, 16, 8]
    part = split.subset([3, 1, 30])
    assert part.pixels is not None and part._lazy()  # still bytes
    assert torch.equal(part.batch(torch.tensor([2, 0])), expected[[30, 3]])
    assert torch.equal(part.index, torch.tensor([3, 1, 30]))
    assert split.shape == (40, 3, 4, 4) and split._lazy()  # nothing above normalised the whole split
    assert torch.equal(split.x, expected) and not split._lazy()  # x on first use, then kept
    assert torch.equal(split.batch(positions), expected[positions])
    relabelled = split.relabelled(torch.zeros(40, dtype=torch.long))
    assert relabelled.x is split.x and int(relabelled.y.sum()) == 0


@pytest.fixture
def bytes_on_cpu(monkeypatch):
    """load_dataset keeps bytes on the CPU as it does on an accelerator."""
    import imp.data

    monkeypatch.setattr(imp.data, "BYTES_ON_CPU", True)


def test_load_dataset_keeps_bytes_and_normalises_as_before(tmp_path, bytes_on_cpu, monkeypatch):
    rng = np.random.default_rng(3)
    x_train = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    write_mnist(tmp_path, x_train, rng.integers(0, 10, 30), rng.integers(0, 256, (7, 28, 28)),
                rng.integers(0, 10, 7))
    data = load_dataset(DataConfig(dataset="mnist"), root=tmp_path)
    assert data.train.pixels.dtype == torch.uint8 and data.train._lazy() and data.input_shape == (1, 28, 28)
    scaled = x_train.astype(np.float64) / 255
    mean, std = scaled.mean(), scaled.std()
    expected = (torch.from_numpy(x_train[:, None].astype(np.float32)) / 255 - np.float32(mean)) / np.float32(std)
    assert torch.equal(data.train.x, expected)
    digits = load_dataset(DataConfig(dataset="digits"), root=tmp_path)
    assert digits.train.pixels is None  # floats, not bytes: normalised when read
    import imp.data

    monkeypatch.setattr(imp.data, "BYTES_ON_CPU", False)  # the CPU default: normalised once, the same numbers
    held = load_dataset(DataConfig(dataset="mnist"), root=tmp_path).train
    assert not held._lazy() and torch.equal(held.x, expected)


def test_training_on_bytes_equals_training_on_normalised_floats(tmp_path, bytes_on_cpu):
    # Independent reference: the same data set with x given as floats (the old layout).
    from imp.base.config import TrainConfig
    from imp.base.duration import Duration
    from imp.base.seeds import Seeds
    from imp.models import build_model
    from imp.train import evaluate, train

    rng = np.random.default_rng(5)
    write_mnist(tmp_path, rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), rng.integers(0, 10, 64),
                rng.integers(0, 256, (16, 28, 28)), rng.integers(0, 10, 16))
    data = load_dataset(DataConfig(dataset="mnist", augment="flip_crop"), root=tmp_path)
    floats = Dataset(**{**data.__dict__, "train": Split(data.train.x.clone(), data.train.y, data.train.index)})
    data = load_dataset(DataConfig(dataset="mnist", augment="flip_crop"), root=tmp_path)
    config = TrainConfig(epochs=Duration(iterations=12), lr=0.05, momentum=0.9)
    states = []
    for which in (data, floats):
        model = build_model("lenet_300_100", which.input_shape, 10, generator=torch.Generator().manual_seed(0))
        losses = train(model, which, config, 10, Seeds(1, 2, 3), start_step=3)
        states.append((model.state_dict(), losses, evaluate(model, which.train)))
    assert data.train._lazy()  # training and evaluating never normalised the whole split
    (a, loss_a, eval_a), (b, loss_b, eval_b) = states
    assert all(torch.equal(a[k], b[k]) for k in a) and torch.equal(loss_a, loss_b) and eval_a == eval_b


# --- fixed_subset ----------------------------------------------------------------------------


def test_fixed_subset_same_examples_every_time(digits):
    a = fixed_subset(digits.train, 100, seed=0)
    b = fixed_subset(digits.train, 100, seed=0)
    assert len(a) == 100
    assert torch.equal(a.index, b.index) and torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert len(set(a.index.tolist())) == 100
    assert torch.equal(a.x, digits.train.x[a.index]) and torch.equal(a.y, digits.train.y[a.index])
    assert not torch.equal(a.index, fixed_subset(digits.train, 100, seed=1).index)


def test_fixed_subset_whole_split_for_zero_or_too_many(digits):
    assert fixed_subset(digits.test, 0, seed=0) is digits.test
    assert fixed_subset(digits.test, 360, seed=0) is digits.test
    assert fixed_subset(digits.test, 10_000, seed=0) is digits.test


# --- resolve_root ----------------------------------------------------------------------------


def test_resolve_root_precedence():
    assert resolve_root("/configured", {"LTH_DATA": "/env"}) == Path("/configured")
    assert resolve_root("", {"LTH_DATA": "/env"}) == Path("/env")
    assert resolve_root("", {}) == Path("data")
    assert resolve_root("", {"LTH_DATA": ""}) == Path("data")
    assert resolve_root("rel/dir", {}) == Path("rel/dir")


# --- real data, when present -------------------------------------------------------------


def test_real_mnist_load_dataset(real_data_root):
    raw = real_data_root / "MNIST" / "raw"
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if not all((raw / f"{s}.gz").is_file() or (raw / s).is_file() for s in stems):
        pytest.skip(f"real MNIST files not found under {raw} (set LTH_TEST_DATA)")
    data = load_dataset(DataConfig(dataset="mnist"), root=real_data_root)
    assert len(data.train) == 60_000 and len(data.test) == 10_000
    assert data.num_classes == 10 and data.input_shape == (1, 28, 28)
    for split in (data.train, data.test):
        assert split.y.min() >= 0 and split.y.max() <= 9
        assert set(split.y.unique().tolist()) == set(range(10))
    # The well-known MNIST statistics: mean 0.1307, std 0.3081 of x / 255.
    torch.testing.assert_close(data.fill, torch.tensor([-0.1307 / 0.3081]), atol=1e-3, rtol=0)
    assert data.augment is False
