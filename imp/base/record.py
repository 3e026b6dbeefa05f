"""The typed record of one trained network, as a level file holds it (docs/storage.md).

Every network the toolkit trains (each trunk level, baseline, sibling, perturbed or
pruned copy) is one :class:`TrainedLevel`: its final state and mask, its final and
running evaluations, its seeds and lengths, and the provenance of the file it came from.
:meth:`TrainedLevel.tree` is exactly what is written; :meth:`TrainedLevel.read` reads it
back, with or without the large arrays. No training code here, so readers of results
(the analysis layer) can use it.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from imp.base import names, store
from imp.base.seeds import Seeds

State = dict[str, torch.Tensor]
Mask = dict[str, torch.Tensor]
_ARRAYS = ("weights", "mask", "steps", "eval")  # the large parts, left out by read(arrays=False)
_FIELDS = ("iterations", "start_step", "iterations_per_epoch", "train_seconds", "density", "kept", "prunable")


@dataclass(frozen=True)
class TrainedLevel:
    """One trained network. With ``arrays=False`` reads, ``weights``, ``mask``,
    ``train_loss`` and ``eval`` are empty."""

    weights: State  # the final state_dict (parameters and BatchNorm buffers), CPU
    mask: Mask  # prunable tensor name -> bool tensor, True = kept
    final: dict[str, float]  # the last evaluation: train/test(/validation) loss and accuracy
    eval: dict[str, np.ndarray]  # "step" and one array per metric, at every evaluation
    train_loss: np.ndarray  # the minibatch loss of every update
    seeds: Seeds
    iterations: int  # T, the end of training
    start_step: int  # the step training started at
    iterations_per_epoch: int
    train_seconds: float
    density: float  # kept / prunable
    kept: int
    prunable: int
    extra: dict[str, Any] = field(default_factory=dict)  # what a stage adds: copy, direction, label_noise, ...
    provenance: dict[str, Any] = field(default_factory=dict)  # of the file it was read from

    def tree(self) -> dict[str, Any]:
        """The tree :func:`imp.base.store.write_h5` writes for this network."""
        return {
            **{name: getattr(self, name) for name in _FIELDS},
            "seeds": {"init": self.seeds.init, "order": self.seeds.order, "augment": self.seeds.augment},
            "steps": {"train_loss": self.train_loss},
            "eval": dict(self.eval),
            "final": dict(self.final),
            "mask": {name: keep.cpu() for name, keep in self.mask.items()},
            "weights": self.weights,
            **self.extra,
        }

    def nonfinite(self) -> list[str]:
        """The names of the weights (or buffers) holding a NaN or an infinity."""
        return [name for name, value in self.weights.items()
                if value.is_floating_point() and not bool(torch.isfinite(value).all())]

    def with_extra(self, **extra: Any) -> "TrainedLevel":
        return dataclasses.replace(self, extra={**self.extra, **extra})

    @classmethod
    def from_tree(cls, tree: dict[str, Any]) -> "TrainedLevel":
        known = {*_FIELDS, *_ARRAYS, "seeds", "final", names.PROVENANCE}
        seeds = tree["seeds"]
        return cls(
            weights={k: torch.from_numpy(np.asarray(v)).clone() for k, v in tree.get("weights", {}).items()},
            mask={k: torch.from_numpy(np.asarray(v, dtype=bool)).clone() for k, v in tree.get("mask", {}).items()},
            final=dict(tree["final"]),
            eval={k: np.asarray(v) for k, v in tree.get("eval", {}).items()},
            train_loss=np.asarray(tree.get("steps", {}).get("train_loss", np.zeros(0, dtype=np.float32))),
            seeds=Seeds(int(seeds["init"]), int(seeds["order"]), int(seeds["augment"])),
            iterations=int(tree["iterations"]), start_step=int(tree["start_step"]),
            iterations_per_epoch=int(tree["iterations_per_epoch"]), train_seconds=float(tree["train_seconds"]),
            density=float(tree["density"]), kept=int(tree["kept"]), prunable=int(tree["prunable"]),
            extra={k: v for k, v in tree.items() if k not in known},
            provenance=dict(tree.get(names.PROVENANCE, {})),
        )

    @classmethod
    def read(cls, path: str | Path, arrays: bool | tuple[str, ...] = True) -> "TrainedLevel":
        """The network stored in ``path``. ``arrays``: True reads everything; False leaves the
        large arrays (``weights``, ``mask``, ``steps``, ``eval``, and a level 0's
        ``label_noise``) unread; a tuple names the ones to read, e.g. ``("eval",)``."""
        wanted = _ARRAYS if arrays is True else () if arrays is False else tuple(arrays)
        unknown = set(wanted) - set(_ARRAYS)
        if unknown:
            raise ValueError(f"unknown parts {sorted(unknown)}; choose from {_ARRAYS}")
        skip = [] if arrays is True else [part for part in (*_ARRAYS, "label_noise") if part not in wanted]
        return cls.from_tree(store.read_h5(path, skip=skip))
