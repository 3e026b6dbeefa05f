"""Seeds: one per source of randomness, derived deterministically from a master seed."""

import hashlib
from dataclasses import dataclass

import torch

from imp.base.config import TrainConfig


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, e.g. ``derive_seed(seed, "init", replicate)``.

    The same parts always give the same seed, on every machine and Python version.
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(*parts: object) -> torch.Generator:
    """A fresh CPU generator seeded with :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass(frozen=True)
class Seeds:
    """One seed per source of randomness (init, data order, augmentation)."""

    init: int
    order: int
    augment: int

    @classmethod
    def from_config(cls, config: TrainConfig, replicate: int = 0) -> "Seeds":
        """Explicit seeds from the config win; the others derive from ``(seed, name, replicate)``."""
        def pick(explicit: int | None, name: str) -> int:
            if explicit is not None:
                return derive_seed(explicit, name, replicate) if replicate else explicit
            return derive_seed(config.seed, name, replicate)
        return cls(pick(config.init_seed, "init"), pick(config.order_seed, "order"),
                   pick(config.augment_seed, "augment"))
