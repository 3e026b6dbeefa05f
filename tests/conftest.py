"""Shared fixtures. Tests are offline; real data sets are optional and found through
``LTH_TEST_DATA`` (default: ``../shared/data`` beside the repository)."""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Small models on a shared 2-core machine run fastest, and steadiest, on one thread."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The folder holding the real data sets (MNIST/raw, FashionMNIST/raw, ...)."""
    return Path(os.environ.get("LTH_TEST_DATA") or REPO.parent / "shared" / "data")


def require_mnist(root: Path) -> None:
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found under {root}/MNIST/raw (set LTH_TEST_DATA)")
