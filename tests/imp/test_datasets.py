"""Tests for imp.datasets: the raw readers, on tiny synthetic files written into tmp_path
(idx, CIFAR python pickles, ImageFolder PNG trees), plus scikit-learn's bundled digits and,
when present, the real MNIST and Fashion-MNIST files."""

from __future__ import annotations

import gzip
import pickle
import shutil
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imp.base.config import DatasetName
from imp.datasets import (READERS, DataNotFound, RawData, input_spec, read_cifar10, read_cifar100, read_digits,
                          read_imagefolder, split_sizes)
from imp.base.errors import UserError

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


# --- helpers ------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """The idx encoding of a uint8 array: 0, 0, 0x08 (unsigned byte), ndim, big-endian dims."""
    assert array.dtype == np.uint8
    header = b"\x00\x00\x08" + bytes([array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def synthetic_idx(n_train: int = 5, n_test: int = 3, height: int = 4, width: int = 6,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """Random images (non-square so a transposition would show) and labels 0..9."""
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (n_train, height, width), dtype=np.uint8),
        "y_train": rng.integers(0, 10, n_train).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, height, width), dtype=np.uint8),
        "y_test": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def write_idx(raw: Path, arrays: dict[str, np.ndarray], compressed: bool,
              skip: tuple[str, ...] = ()) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    for key, stem in IDX_FILES.items():
        if key in skip:
            continue
        data = idx_bytes(arrays[key])
        if compressed:
            with gzip.open(raw / f"{stem}.gz", "wb") as handle:
                handle.write(data)
        else:
            (raw / stem).write_bytes(data)


def cifar_batch(n: int, label_key: bytes, rng: np.random.Generator, classes: int) -> dict:
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             label_key: [int(v) for v in rng.integers(0, classes, n)]}
    if label_key == b"fine_labels":  # CIFAR-100 also carries coarse labels; they must be ignored
        batch[b"coarse_labels"] = [int(v) for v in rng.integers(0, 20, n)]
    return batch


def dump(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        pickle.dump(obj, handle)


def write_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="RGB").save(path)


def image_tree(root: Path, rng: np.random.Generator, size: tuple[int, int] = (5, 7),
               counts: dict[str, dict[str, int]] | None = None) -> dict[str, list]:
    """Write root/{train,test}/<class>/<i>.png; return the (pixels HWC, label) per split in
    ImageFolder order (classes sorted, files sorted within a class)."""
    counts = counts or {"train": {"cat": 2, "dog": 3}, "test": {"cat": 1, "dog": 2}}
    written = {}
    for split, per_class in counts.items():
        written[split] = []
        for label, name in enumerate(sorted(per_class)):
            for i in range(per_class[name]):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                write_png(root / split / name / f"{i:03d}.png", pixels)
                written[split].append((pixels, label))
    return written


# --- digits -------------------------------------------------------------------------------


def test_digits_shapes_and_scale(tmp_path):
    raw = read_digits(tmp_path)
    assert raw.x_train.shape == (1437, 1, 8, 8)
    assert raw.x_test.shape == (360, 1, 8, 8)
    assert raw.y_train.shape == (1437,) and raw.y_test.shape == (360,)
    assert raw.y_train.dtype == np.int64 and raw.y_test.dtype == np.int64
    assert raw.num_classes == 10 and raw.scale == 16.0 and raw.natural_images is False
    assert raw.x_train.min() == 0 and raw.x_train.max() == 16  # bundled digits are 0..16
    assert set(np.unique(raw.y_train)) == set(range(10))
    assert set(np.unique(raw.y_test)) == set(range(10))
    assert list(tmp_path.iterdir()) == []  # digits needs nothing and writes nothing


def test_digits_split_is_disjoint_complete_and_deterministic(tmp_path):
    from sklearn.datasets import load_digits

    images = load_digits().images.reshape(1797, -1)
    first, second = read_digits(tmp_path), read_digits(tmp_path)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))

    # Recover each split's original positions by matching images to the bundled array
    # (digits has duplicate images, so match on (image, label) and count multiplicities).
    def keys(x, y):
        return sorted((tuple(row), int(label)) for row, label in zip(x.reshape(len(x), -1), y))

    everything = keys(images, load_digits().target)
    assert sorted(keys(first.x_train, first.y_train) + keys(first.x_test, first.y_test)) == everything
    # The documented split: a fixed permutation (numpy seed 0), its first 360 = test.
    order = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(first.x_test[:, 0].reshape(360, -1), images[order[:360]])
    np.testing.assert_array_equal(first.x_train[:, 0].reshape(1437, -1), images[order[360:]])


# --- MNIST-style idx files --------------------------------------------------------------


@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "uncompressed"])
@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_idx_reader_returns_exact_pixels_and_labels(tmp_path, name, folder, compressed):
    arrays = synthetic_idx()
    write_idx(tmp_path / folder / "raw", arrays, compressed)
    raw = READERS[name](tmp_path)
    assert isinstance(raw, RawData)
    assert raw.x_train.shape == (5, 1, 4, 6) and raw.x_test.shape == (3, 1, 4, 6)
    assert raw.x_train.dtype == np.uint8
    np.testing.assert_array_equal(raw.x_train[:, 0], arrays["x_train"])
    np.testing.assert_array_equal(raw.x_test[:, 0], arrays["x_test"])
    assert raw.y_train.dtype == np.int64 and raw.y_test.dtype == np.int64
    np.testing.assert_array_equal(raw.y_train, arrays["y_train"])
    np.testing.assert_array_equal(raw.y_test, arrays["y_test"])
    assert raw.num_classes == 10 and raw.scale == 255.0 and raw.natural_images is False


def test_idx_reader_known_pixel(tmp_path):
    x = np.zeros((2, 3, 4), dtype=np.uint8)
    x[1, 2, 3] = 200  # image 1, row 2, column 3
    x[0, 0, 1] = 7
    arrays = {"x_train": x, "y_train": np.array([3, 9], np.uint8),
              "x_test": x[:1].copy(), "y_test": np.array([4], np.uint8)}
    write_idx(tmp_path / "MNIST" / "raw", arrays, compressed=True)
    raw = READERS["mnist"](tmp_path)
    assert raw.x_train[1, 0, 2, 3] == 200 and raw.x_train[0, 0, 0, 1] == 7
    assert raw.x_train.sum() == 207
    assert raw.y_train.tolist() == [3, 9] and raw.y_test.tolist() == [4]


def test_idx_reader_prefers_gz_when_both_exist(tmp_path):
    raw_dir = tmp_path / "MNIST" / "raw"
    write_idx(raw_dir, synthetic_idx(seed=1), compressed=False)
    gz = synthetic_idx(seed=2)
    write_idx(raw_dir, gz, compressed=True)
    np.testing.assert_array_equal(READERS["mnist"](tmp_path).x_train[:, 0], gz["x_train"])


def test_idx_readers_use_their_own_folders(tmp_path):
    write_idx(tmp_path / "FashionMNIST" / "raw", synthetic_idx(), compressed=True)
    READERS["fashion_mnist"](tmp_path)  # present
    with pytest.raises(DataNotFound):
        READERS["mnist"](tmp_path)  # MNIST/raw absent: must not fall back to FashionMNIST


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_missing_idx_file_raises_data_not_found(tmp_path, name, folder):
    assert issubclass(DataNotFound, UserError)
    with pytest.raises(DataNotFound) as caught:
        READERS[name](tmp_path)
    message = str(caught.value)
    assert str(tmp_path / folder / "raw") in message
    assert "LTH_DATA" in message
    assert "train-images-idx3-ubyte" in message
    assert message.startswith(name)


def test_missing_single_idx_file_is_named(tmp_path):
    write_idx(tmp_path / "MNIST" / "raw", synthetic_idx(), compressed=True, skip=("y_test",))
    with pytest.raises(DataNotFound, match="t10k-labels-idx1-ubyte"):
        READERS["mnist"](tmp_path)


def test_idx_reader_rejects_a_file_that_is_not_idx(tmp_path):
    raw_dir = tmp_path / "MNIST" / "raw"
    write_idx(raw_dir, synthetic_idx(), compressed=False)
    (raw_dir / "train-images-idx3-ubyte").write_bytes(b"\x89PNG not an idx file at all")
    with pytest.raises(UserError, match="not an idx file"):
        READERS["mnist"](tmp_path)


# --- CIFAR python pickles ---------------------------------------------------------------


def test_cifar10_reader_layout_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    batches = [cifar_batch(2, b"labels", rng, 10) for _ in range(5)]
    # Known pixel: batch 3, example 1, channel G (1), row 5, column 17 -> 1024 + 5*32 + 17.
    batches[2][b"data"][1, :] = 0
    batches[2][b"data"][1, 1024 + 5 * 32 + 17] = 123
    for i, batch in enumerate(batches, start=1):
        dump(folder / f"data_batch_{i}", batch)
    test = cifar_batch(3, b"labels", rng, 10)
    dump(folder / "test_batch", test)

    raw = read_cifar10(tmp_path)
    assert raw.x_train.shape == (10, 3, 32, 32) and raw.x_test.shape == (3, 3, 32, 32)
    assert raw.x_train.dtype == np.uint8
    known = raw.x_train[2 * 2 + 1]  # batches are concatenated in order 1..5
    assert known[1, 5, 17] == 123 and known.sum() == 123
    # Every example: channel c, row r, column k is data[c*1024 + r*32 + k].
    expected = np.concatenate([b[b"data"] for b in batches]).reshape(10, 3, 1024)
    np.testing.assert_array_equal(raw.x_train.reshape(10, 3, 1024), expected)
    np.testing.assert_array_equal(raw.x_test[:, 2, 31, 0], test[b"data"][:, 2 * 1024 + 31 * 32])
    assert raw.y_train.dtype == np.int64
    assert raw.y_train.tolist() == sum((b[b"labels"] for b in batches), [])
    assert raw.y_test.tolist() == test[b"labels"]
    assert raw.num_classes == 10 and raw.scale == 255.0 and raw.natural_images is True


def test_cifar100_reader_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    train, test = cifar_batch(4, b"fine_labels", rng, 100), cifar_batch(2, b"fine_labels", rng, 100)
    train[b"data"][0, :] = 0
    train[b"data"][0, 2 * 1024 + 0 * 32 + 31] = 250  # channel B, row 0, last column
    train[b"fine_labels"] = [99, 50, 0, 73]
    dump(folder / "train", train)
    dump(folder / "test", test)

    raw = read_cifar100(tmp_path)
    assert raw.x_train.shape == (4, 3, 32, 32) and raw.x_test.shape == (2, 3, 32, 32)
    assert raw.x_train[0, 2, 0, 31] == 250 and raw.x_train[0].sum() == 250
    assert raw.y_train.tolist() == [99, 50, 0, 73]
    assert raw.y_test.tolist() == test[b"fine_labels"]
    assert raw.num_classes == 100 and raw.natural_images is True


@pytest.mark.parametrize("name, folder, missing", [
    ("cifar10", "cifar-10-batches-py", "data_batch_1"),
    ("cifar100", "cifar-100-python", "train"),
])
def test_missing_cifar_raises_data_not_found(tmp_path, name, folder, missing):
    with pytest.raises(DataNotFound) as caught:
        READERS[name](tmp_path)
    message = str(caught.value)
    assert str(tmp_path / folder) in message and missing in message and "LTH_DATA" in message


def test_missing_cifar10_test_batch_is_named(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        dump(tmp_path / "cifar-10-batches-py" / f"data_batch_{i}", cifar_batch(1, b"labels", rng, 10))
    with pytest.raises(DataNotFound, match="test_batch"):
        read_cifar10(tmp_path)


# --- ImageFolder trees ------------------------------------------------------------------


def test_imagefolder_reads_pixels_and_labels(tmp_path):
    written = image_tree(tmp_path, np.random.default_rng(0))
    raw = read_imagefolder(tmp_path)
    assert raw.x_train.shape == (5, 3, 5, 7) and raw.x_test.shape == (3, 3, 5, 7)
    assert raw.x_train.dtype == np.uint8
    assert raw.num_classes == 2 and raw.scale == 255.0 and raw.natural_images is True
    for split, x, y in (("train", raw.x_train, raw.y_train), ("test", raw.x_test, raw.y_test)):
        assert y.dtype == np.int64
        assert y.tolist() == [label for _, label in written[split]]  # cat = 0, dog = 1
        for got, (pixels, _) in zip(x, written[split]):
            np.testing.assert_array_equal(got, pixels.transpose(2, 0, 1))  # PNG is lossless


def test_imagefolder_with_distinct_numbered_files_keeps_their_order(tmp_path):
    """Like the re-encoded CIFAR-10: train/<class>/<canonical index>.jpg."""
    rng = np.random.default_rng(1)
    labels = {0: "dog", 1: "cat", 2: "dog", 3: "cat", 10: "cat"}
    pixels = {i: rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) for i in labels}
    for split in ("train", "test"):
        for i, name in labels.items():
            write_png(tmp_path / split / name / f"{i:05d}.png", pixels[i])
    raw = read_imagefolder(tmp_path)
    assert raw.y_train.tolist() == [1, 0, 1, 0, 0]  # in file-number order; cat = 0, dog = 1
    for got, i in zip(raw.x_train, sorted(labels)):
        np.testing.assert_array_equal(got, pixels[i].transpose(2, 0, 1))


def test_imagefolder_uses_its_cache_only_while_the_files_are_unchanged(tmp_path, monkeypatch):
    import os

    import imp.datasets

    decoded = []
    real = imp.datasets._decode_tree
    monkeypatch.setattr(imp.datasets, "_decode_tree", lambda folder: decoded.append(folder) or real(folder))
    written = image_tree(tmp_path, np.random.default_rng(1))
    first = read_imagefolder(tmp_path)
    cache = tmp_path / ".lth-cache.npz"
    assert cache.is_file() and len(decoded) == 2
    second = read_imagefolder(tmp_path)  # unchanged files: from the cache
    assert len(decoded) == 2
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    assert second.num_classes == 2 and second.scale == 255.0 and second.natural_images is True
    np.testing.assert_array_equal(second.x_train[0], written["train"][0][0].transpose(2, 0, 1))
    # Overwrite one image and delete another: the stale cache is not used, the tree is decoded again.
    write_png(tmp_path / "train" / "cat" / "000.png", np.zeros((5, 7, 3), np.uint8))
    (tmp_path / "test" / "dog" / "001.png").unlink()
    third = read_imagefolder(tmp_path)
    assert len(decoded) == 4 and third.x_train[0].sum() == 0 and len(third.y_test) == 2
    # A cache cut short is decoded again and replaced whole; no temporary file is left.
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    fourth = read_imagefolder(tmp_path)
    assert len(decoded) == 6 and np.array_equal(fourth.x_train, third.x_train)
    assert read_imagefolder(tmp_path).x_train.shape == third.x_train.shape and len(decoded) == 6
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [".lth-cache.npz"]
    # Only the cache, without the trees: it is all there is, and it is used.
    os.rename(tmp_path / "train", tmp_path / "gone")
    assert np.array_equal(read_imagefolder(tmp_path).x_train, third.x_train) and len(decoded) == 6


def test_imagefolder_cache_goes_where_lth_cache_says_and_a_cache_that_cannot_be_written_is_said(
        tmp_path, monkeypatch, capsys):
    import imp.datasets

    root = tmp_path / "tree"
    image_tree(root, np.random.default_rng(3))
    monkeypatch.setenv("LTH_CACHE", str(tmp_path / "cache" / "sub"))  # made when first written
    first = read_imagefolder(root)
    (cache,) = (tmp_path / "cache" / "sub").iterdir()
    assert cache == imp.datasets.cache_path(root) and cache.name.startswith("imagefolder-")
    assert not (root / ".lth-cache.npz").exists()
    monkeypatch.setattr(imp.datasets, "_decode_tree", lambda folder: pytest.fail("decoded again"))
    np.testing.assert_array_equal(read_imagefolder(root).x_train, first.x_train)  # from $LTH_CACHE
    monkeypatch.undo()
    monkeypatch.delenv("LTH_CACHE", raising=False)

    def refuse(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(np, "savez", refuse)
    np.testing.assert_array_equal(read_imagefolder(root).x_train, first.x_train)  # still read, not kept
    assert capsys.readouterr().err.strip() == (
        f"lth: note: cannot keep the decoded images in {root / '.lth-cache.npz'} (Read-only file system); "
        f"every run decodes {root} again: set LTH_CACHE to a writable folder")
    assert not (root / ".lth-cache.npz").exists()


def test_imagefolder_images_of_different_sizes_raise(tmp_path):
    image_tree(tmp_path, np.random.default_rng(2))
    write_png(tmp_path / "train" / "dog" / "999.png", np.zeros((6, 7, 3), np.uint8))
    with pytest.raises(UserError) as caught:
        read_imagefolder(tmp_path)
    message = str(caught.value)
    assert "999.png" in message and "7x6" in message and "7x5" in message
    assert "resize" in message
    assert not (tmp_path / ".lth-cache.npz").exists()


def test_imagefolder_train_and_test_sizes_must_agree(tmp_path):
    rng = np.random.default_rng(3)
    image_tree(tmp_path, rng, size=(5, 7), counts={"train": {"a": 1, "b": 1}})
    image_tree(tmp_path, rng, size=(7, 5), counts={"test": {"a": 1, "b": 1}})
    with pytest.raises(UserError, match="test images"):
        read_imagefolder(tmp_path)


def test_imagefolder_train_and_test_classes_must_agree(tmp_path):
    rng = np.random.default_rng(4)
    image_tree(tmp_path, rng, counts={"train": {"a": 1, "b": 1}, "test": {"a": 1, "c": 1}})
    with pytest.raises(UserError, match="classes"):
        read_imagefolder(tmp_path)


def test_imagefolder_missing_split_raises_data_not_found(tmp_path):
    image_tree(tmp_path, np.random.default_rng(5), counts={"train": {"a": 1}})
    with pytest.raises(DataNotFound) as caught:
        read_imagefolder(tmp_path)
    assert str(tmp_path) in str(caught.value) and "test/" in str(caught.value)
    assert "LTH_DATA" in str(caught.value)


# --- real data, when present -------------------------------------------------------------


# Known facts about the official files (LeCun et al.; Xiao et al. 2017).
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def require(root: Path, folder: str) -> None:
    raw = root / folder / "raw"
    if not all((raw / f"{stem}.gz").is_file() or (raw / stem).is_file()
               for stem in IDX_FILES.values()):
        pytest.skip(f"real {folder} files not found under {raw} (set LTH_TEST_DATA)")


def test_real_mnist_raw(real_data_root):
    require(real_data_root, "MNIST")
    raw = READERS["mnist"](real_data_root)
    assert raw.x_train.shape == (60_000, 1, 28, 28) and raw.x_test.shape == (10_000, 1, 28, 28)
    assert input_spec("mnist") == (raw.x_train.shape[1:], raw.num_classes)
    assert np.bincount(raw.y_train, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(raw.y_test, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert raw.y_train[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert raw.y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_real_fashion_mnist_raw(real_data_root):
    require(real_data_root, "FashionMNIST")
    raw = READERS["fashion_mnist"](real_data_root)
    assert raw.x_train.shape == (60_000, 1, 28, 28) and raw.x_test.shape == (10_000, 1, 28, 28)
    assert input_spec("fashion_mnist") == (raw.x_train.shape[1:], raw.num_classes)
    assert np.bincount(raw.y_train, minlength=10).tolist() == [6000] * 10
    assert np.bincount(raw.y_test, minlength=10).tolist() == [1000] * 10


# --- the sizes a run id needs, read cheaply -----------------------------------------------


def test_split_sizes_equal_what_every_reader_returns(tmp_path):
    """split_sizes reads only labels (idx) or a listing (image folder); the counts must be
    the reader's, or a run id would be made with the wrong iterations per epoch."""
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "MNIST" / "raw", synthetic_idx(n_train=7, n_test=4), compressed=True)
    write_idx(tmp_path / "FashionMNIST" / "raw", synthetic_idx(n_train=6, n_test=2), compressed=False)
    for i in range(1, 6):
        dump(tmp_path / "cifar-10-batches-py" / f"data_batch_{i}", cifar_batch(i, b"labels", rng, 10))
    dump(tmp_path / "cifar-10-batches-py" / "test_batch", cifar_batch(3, b"labels", rng, 10))
    dump(tmp_path / "cifar-100-python" / "train", cifar_batch(4, b"fine_labels", rng, 100))
    dump(tmp_path / "cifar-100-python" / "test", cifar_batch(2, b"fine_labels", rng, 100))
    folder = tmp_path / "images"
    image_tree(folder, rng, counts={"train": {"a": 3, "b": 4}, "test": {"a": 2, "b": 1}})
    expected = {"digits": (1437, 360), "mnist": (7, 4), "fashion_mnist": (6, 2), "cifar10": (15, 3),
                "cifar100": (4, 2), "imagefolder": (7, 3)}
    assert set(expected) == set(READERS)
    for name, sizes in expected.items():
        root = folder if name == "imagefolder" else tmp_path
        raw = READERS[name](root)
        assert split_sizes(name, root) == (len(raw.y_train), len(raw.y_test)) == sizes
    for split in ("train", "test"):  # the trees gone: the cache the reader wrote still tells
        shutil.rmtree(folder / split)
    assert split_sizes("imagefolder", folder) == (7, 3)


def test_split_sizes_of_missing_data_is_data_not_found(tmp_path):
    for name in ("mnist", "cifar10", "imagefolder"):
        with pytest.raises(DataNotFound):
            split_sizes(name, tmp_path)


# --- the registry and the input shapes known by name ----------------------------------------


def test_the_config_names_exactly_the_readers():
    assert set(typing.get_args(DatasetName)) == set(READERS)


@pytest.mark.parametrize("name, shape, classes", [
    ("digits", (1, 8, 8), 10),  # scikit-learn's 8x8 digits
    ("mnist", (1, 28, 28), 10),
    ("fashion_mnist", (1, 28, 28), 10),
    ("cifar10", (3, 32, 32), 10),
    ("cifar100", (3, 32, 32), 100),  # fine labels
])
def test_input_spec_by_name(name, shape, classes):
    assert input_spec(name) == (shape, classes)


def test_input_spec_agrees_with_the_readers(tmp_path):
    raw = read_digits(tmp_path)
    assert input_spec("digits") == (raw.x_train.shape[1:], raw.num_classes)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        dump(tmp_path / "cifar-10-batches-py" / f"data_batch_{i}", cifar_batch(1, b"labels", rng, 10))
    dump(tmp_path / "cifar-10-batches-py" / "test_batch", cifar_batch(1, b"labels", rng, 10))
    for split in ("train", "test"):
        dump(tmp_path / "cifar-100-python" / split, cifar_batch(1, b"fine_labels", rng, 100))
    for name in ("cifar10", "cifar100"):
        raw = READERS[name](tmp_path)
        assert input_spec(name) == (raw.x_train.shape[1:], raw.num_classes)


def test_input_spec_of_imagefolder_comes_from_the_files_and_typos_are_errors():
    assert input_spec("imagefolder") is None
    with pytest.raises(UserError, match="did you mean 'cifar10'"):
        input_spec("cifar_10")



def test_imagefolder_empty_class_folders_and_damaged_images_are_one_line(tmp_path):
    image_tree(tmp_path / "a", np.random.default_rng(3))
    (tmp_path / "a" / "train" / "bird").mkdir()
    with pytest.raises(UserError, match="class folder without images"):
        read_imagefolder(tmp_path / "a")
    image_tree(tmp_path / "b", np.random.default_rng(3))
    damaged = tmp_path / "b" / "test" / "dog" / "001.png"
    damaged.write_bytes(damaged.read_bytes()[:20])
    with pytest.raises(UserError, match=r"cannot decode .*001.png"):
        read_imagefolder(tmp_path / "b")
    assert not (tmp_path / "b" / ".lth-cache.npz").exists()
