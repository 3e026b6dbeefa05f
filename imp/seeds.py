"""Seeds: one per source of randomness, derived deterministically from a master seed."""

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, e.g. ``derive_seed(seed, "init", replicate)``.

    The same parts always give the same seed, on every machine and Python version.
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts: object) -> torch.Generator:
    """A fresh CPU generator seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))
