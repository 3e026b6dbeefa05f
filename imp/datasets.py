"""Raw data set readers: files on disk -> uint8/float numpy arrays. No torch, no devices.

Each reader takes the data root and returns a :class:`RawData`. The registry
:data:`READERS` is a plain dict; :mod:`imp.data` turns raw arrays into device tensors.
:func:`input_spec` gives a data set's input shape and classes without its files.

Layouts under the data root (torchvision's own, so a torchvision download works):

- ``digits``: nothing; scikit-learn's bundled 8x8 digits (1,797 images). There is no
  official split: a fixed permutation (numpy seed 0) puts 360 images in the test set.
- ``mnist``: ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
- ``fashion_mnist``: ``FashionMNIST/raw/`` with the same file names
- ``cifar10``: ``cifar-10-batches-py/{data_batch_1..5,test_batch}`` (the python pickles)
- ``cifar100``: ``cifar-100-python/{train,test}`` (fine labels)
- ``imagefolder``: the root itself holds ``train/<class>/*`` and ``test/<class>/*``
  images, all of one size; decoded once and cached in ``<root>/.lth-cache.npz``, or in
  the folder ``$LTH_CACHE`` names (:func:`cache_path`). Examples are in ImageFolder order (class, then file name), except
  when every file of a split is named by a distinct integer (``00042.jpg``): then they
  are in that number's order, so a re-encoded CIFAR-10 keeps its canonical indices.
"""

import gzip
import hashlib
import os
import pickle
import sys
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imp.base.config import Config, canonical
from imp.base.progress import tqdm
from imp.base.errors import UserError, did_you_mean


@dataclass(frozen=True)
class RawData:
    """Images as (N, C, H, W) arrays scaled to [0, 1] once converted; labels as int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    scale: float  # divide x by this to get [0, 1] (255 for bytes, 16 for digits)
    natural_images: bool  # colour photographs: flip-and-crop augmentation by default


class DataNotFound(UserError):
    """The files of a data set are not under the data root."""


def _missing(name: str, where: Path, expected: str) -> DataNotFound:
    return DataNotFound(
        f"{name}: {expected} not found under {where}; put the files there, or point "
        f"data.root (or the LTH_DATA environment variable) at the folder that holds them "
        f"(see the README, section Data)"
    )


def read_digits(root: Path) -> RawData:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    test, train = order[:360], order[360:]
    return RawData(images[train], labels[train], images[test], labels[test], 10, 16.0, False)


def _damaged(path: Path, problem: str) -> UserError:
    return UserError(f"cannot read {path} ({problem}); download it again, or point data.root (or the "
                     "LTH_DATA environment variable) at a folder that holds an intact copy")


def _read_idx(path: Path) -> np.ndarray:
    """Read an idx file (MNIST format): magic, dims as big-endian int32, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # unreadable, not gzip, or cut short
        raise _damaged(path, str(error)) from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise _damaged(path, "not an idx file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != 4 + 4 * ndim + int(np.prod(shape)):
        raise _damaged(path, f"its header promises {'x'.join(map(str, shape))} bytes, it holds "
                       f"{max(len(data) - 4 - 4 * ndim, 0)}: truncated or damaged")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


_IDX_FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}


def _find_idx(name: str, raw: Path, stem: str) -> Path:
    for candidate in (raw / f"{stem}.gz", raw / stem):
        if candidate.is_file():
            return candidate
    raise _missing(name, raw, f"{stem}.gz")


def _idx_reader(name: str, folder: str) -> Callable[[Path], RawData]:
    def read(root: Path) -> RawData:
        raw = root / folder / "raw"
        x_train = _read_idx(_find_idx(name, raw, "train-images-idx3-ubyte"))[:, None]
        y_train = _read_idx(_find_idx(name, raw, "train-labels-idx1-ubyte")).astype(np.int64)
        x_test = _read_idx(_find_idx(name, raw, "t10k-images-idx3-ubyte"))[:, None]
        y_test = _read_idx(_find_idx(name, raw, "t10k-labels-idx1-ubyte")).astype(np.int64)
        return RawData(x_train, y_train, x_test, y_test, 10, 255.0, False)

    read.__doc__ = f"Read {name} from the official idx files under ``<root>/{folder}/raw``."
    return read


def _unpickle(path: Path, name: str) -> dict:
    if not path.is_file():
        raise _missing(name, path.parent, path.name)
    try:
        with open(path, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
    except Exception as error:  # unpickling garbage can raise almost anything; name the file
        raise _damaged(path, f"{type(error).__name__}: {error}") from None
    if not isinstance(batch, dict) or b"data" not in batch:
        raise _damaged(path, f"not a {name} python batch")
    return batch


def _cifar_arrays(batches: list[dict], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.asarray(b[label_key]) for b in batches]).astype(np.int64)
    return x.astype(np.uint8), y


def read_cifar10(root: Path) -> RawData:
    folder = root / "cifar-10-batches-py"
    train = [_unpickle(folder / f"data_batch_{i}", "cifar10") for i in range(1, 6)]
    test = [_unpickle(folder / "test_batch", "cifar10")]
    return RawData(*_cifar_arrays(train, b"labels"), *_cifar_arrays(test, b"labels"),
                   10, 255.0, True)


def read_cifar100(root: Path) -> RawData:
    folder = root / "cifar-100-python"
    train = [_unpickle(folder / "train", "cifar100")]
    test = [_unpickle(folder / "test", "cifar100")]
    return RawData(*_cifar_arrays(train, b"fine_labels"), *_cifar_arrays(test, b"fine_labels"),
                   100, 255.0, True)


def read_imagefolder(root: Path) -> RawData:
    """Read ``root/train`` and ``root/test`` ImageFolder trees; cache the decoded bytes.

    The cache (:func:`cache_path`: ``<root>/.lth-cache.npz``, or under ``$LTH_CACHE``)
    records a signature of the files it was decoded from (every path, size and
    modification time); a cache whose files changed, or that cannot be read (a copy cut
    short), is decoded again and replaced, atomically. A cache that cannot be written (a
    read-only tree) is said once on stderr, with the fix."""
    cache = cache_path(root)
    present = all((root / split).is_dir() for split in ("train", "test"))
    signature = _tree_signature(root) if present else ""
    arrays = _read_cache(cache)
    if arrays is not None and (not present or str(arrays.get("signature", "")) == signature):
        return RawData(arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                       int(arrays["num_classes"]), 255.0, True)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise _missing("imagefolder", root, f"folder {split}/<class>/")
    x_train, y_train, classes = _decode_tree(root / "train")
    x_test, y_test, test_classes = _decode_tree(root / "test")
    if test_classes != classes:
        raise UserError(f"imagefolder: {root}/test has classes {test_classes}, train has {classes}")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise UserError(f"imagefolder: test images are {x_test.shape[1:]}, train {x_train.shape[1:]}")
    temporary = cache.with_name(f".lth-cache.{os.getpid()}.tmp")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            np.savez(handle, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                     num_classes=len(classes), signature=signature)
        os.replace(temporary, cache)
    except OSError as error:  # a read-only tree still works: it is decoded again next time
        print(f"lth: note: cannot keep the decoded images in {cache} ({error.strerror}); every run decodes "
              f"{root} again: set LTH_CACHE to a writable folder", file=sys.stderr)
    finally:
        temporary.unlink(missing_ok=True)
    return RawData(x_train, y_train, x_test, y_test, len(classes), 255.0, True)


def cache_path(root: Path) -> Path:
    """Where an image tree's decoded arrays are kept: ``$LTH_CACHE/imagefolder-<16 hex of
    sha256 of the tree's absolute path>.npz`` when ``LTH_CACHE`` is set (for a read-only
    or shared data folder), else ``<root>/.lth-cache.npz``."""
    folder = os.environ.get("LTH_CACHE")
    if not folder:
        return root / ".lth-cache.npz"
    name = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return Path(folder) / f"imagefolder-{name}.npz"


def _tree_signature(root: Path) -> str:
    """sha256 over the relative path, size and modification time of every file of the trees."""
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for path in sorted((root / split).rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_cache(cache: Path) -> dict | None:
    """The cached arrays, or None when there is no cache or it cannot be read whole."""
    if not cache.is_file():
        return None
    try:
        with np.load(cache) as file:
            return {key: file[key] for key in file.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
        return None


def _image_tree(folder: Path):
    """torchvision's listing of an ImageFolder tree (no image decoded)."""
    from torchvision.datasets import ImageFolder

    try:
        tree = ImageFolder(str(folder))
    except FileNotFoundError as error:  # a class folder without images, or no class folder
        raise UserError(f"imagefolder: {folder} has a class folder without images, or no class folder "
                        f"({str(error).splitlines()[0]}); remove empty class folders, put images in each") from None
    if len(tree) == 0:
        raise UserError(f"imagefolder: no images under {folder}")
    return tree


def _decode_tree(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    tree = _image_tree(folder)
    samples = tree.samples
    stems = [Path(path).stem for path, _ in samples]
    if all(stem.isdigit() for stem in stems) and len(set(map(int, stems))) == len(stems):
        # Numbered files (e.g. CIFAR-10 re-encoded with its canonical indices): keep that order.
        samples = sorted(samples, key=lambda sample: int(Path(sample[0]).stem))
    images, labels = [], []
    # Decoding tens of thousands of JPEGs takes minutes: show it (only on a terminal).
    for path, label in tqdm(samples, desc=f"decoding {folder}", unit="img", disable=None):
        try:
            image = np.asarray(tree.loader(path))  # RGB, (H, W, 3) uint8
        except (OSError, ValueError) as error:  # PIL: cannot identify, truncated, damaged
            raise UserError(f"imagefolder: cannot decode {path} ({error}); replace or delete it") from None
        if images and image.shape != images[0].shape:
            raise UserError(
                f"imagefolder: {path} is {image.shape[1]}x{image.shape[0]}, others are "
                f"{images[0].shape[1]}x{images[0].shape[0]}; resize the images to one size"
            )
        images.append(image)
        labels.append(label)
    x = np.stack(images).transpose(0, 3, 1, 2).copy()
    return x, np.asarray(labels, dtype=np.int64), list(tree.classes)


READERS: dict[str, Callable[[Path], RawData]] = {
    "digits": read_digits,
    "mnist": _idx_reader("mnist", _IDX_FOLDERS["mnist"]),
    "fashion_mnist": _idx_reader("fashion_mnist", _IDX_FOLDERS["fashion_mnist"]),
    "cifar10": read_cifar10,
    "cifar100": read_cifar100,
    "imagefolder": read_imagefolder,
}


# (C, H, W) of one image and the number of classes, known without reading the files.
_INPUT_SPECS: dict[str, tuple[tuple[int, int, int], int]] = {
    "digits": ((1, 8, 8), 10),
    "mnist": ((1, 28, 28), 10),
    "fashion_mnist": ((1, 28, 28), 10),
    "cifar10": ((3, 32, 32), 10),
    "cifar100": ((3, 32, 32), 100),
}


def check_root(name: str, root: Path) -> None:
    """Refuse a data root that is a file (digits, bundled, reads no root)."""
    if name != "digits" and root.exists() and not root.is_dir():
        raise UserError(f"the data root {root} is a file, not a folder; point data.root (or the LTH_DATA "
                        "environment variable) at the folder that holds the data sets")


def split_sizes(name: str, root: Path) -> tuple[int, int]:
    """The numbers of training and test examples data set ``name`` has under ``root`` as
    its reader would return them, read cheaply: MNIST's label files, an image folder's
    listing (nothing decoded; the cache when the trees are gone), else the data set
    itself. These fix a run's iterations per epoch, which its id needs
    (:func:`imp.base.config.canonical`)."""
    if name not in READERS:
        raise UserError(f"unknown data set {name!r}" + did_you_mean(name, READERS))
    root = Path(root)
    check_root(name, root)
    if name in _IDX_FOLDERS:
        raw = root / _IDX_FOLDERS[name] / "raw"
        try:
            return (len(_read_idx(_find_idx(name, raw, "train-labels-idx1-ubyte"))),
                    len(_read_idx(_find_idx(name, raw, "t10k-labels-idx1-ubyte"))))
        except UserError:
            pass  # missing or damaged: the reader below names the first problem, in its order
    if name == "imagefolder":
        if all((root / split).is_dir() for split in ("train", "test")):
            return len(_image_tree(root / "train")), len(_image_tree(root / "test"))
        try:
            with np.load(cache_path(root)) as file:
                return len(file["y_train"]), len(file["y_test"])
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError):
            pass
    raw = READERS[name](root)
    return len(raw.y_train), len(raw.y_test)


def resolve_root(configured: str, environ: Mapping[str, str]) -> Path:
    """The data root: ``data.root`` if set, else ``$LTH_DATA``, else ``./data``."""
    return Path(configured or environ.get("LTH_DATA") or "data")


def stored_root(stored: str, environ: Mapping[str, str]) -> Path:
    """Where a finished run's data is read from by later commands: the root it was last
    read from (``data_root`` in ``run.h5``) while that folder exists, else
    :func:`resolve_root` of no ``data.root`` (``$LTH_DATA``, else ``./data``), e.g. after
    the run was copied to another machine. Either way the data's fingerprint is checked
    against the run's before it is used."""
    if stored and Path(stored).is_dir():
        return Path(stored)
    return resolve_root("", environ)


def canonical_config(config: Config, root: Path) -> Config:
    """``config`` written the one way its run id is made from
    (:func:`imp.base.config.canonical`), with the data set's sizes under ``root`` (the
    data root) from :func:`split_sizes`."""
    return canonical(config, *split_sizes(config.data.dataset, root))


def input_spec(name: str) -> tuple[tuple[int, int, int], int] | None:
    """The input shape (C, H, W) and number of classes of data set ``name``, from its name
    alone (no files read), or None for ``imagefolder``, whose images tell."""
    if name not in READERS:
        raise UserError(f"unknown data set {name!r}" + did_you_mean(name, READERS))
    return _INPUT_SPECS.get(name)
