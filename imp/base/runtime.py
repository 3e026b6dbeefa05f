"""Where computation runs: device choice and CPU intra-op threads (DESIGN §5).

On a small CPU, two spin-waiting OpenMP threads competing with another process made
small-model steps 10-40x slower; so the thread count is always set explicitly, and
replicates are parallelised across processes rather than threads.

The policy, the same for every entry point: ``lth`` commands take ``--threads``
(default :data:`DEFAULT_THREADS`), a sweep divides the cores between its workers, and
the Python API's run functions (:func:`imp.trunk.run_imp`,
:func:`imp.scores.load_or_compute`) set :data:`DEFAULT_THREADS` when they are entered,
unless given ``threads=None`` (leave torch's setting alone) or another count.
"""

import os

import torch

from imp.base.errors import UserError

DEFAULT_THREADS = 1  # intra-op threads of every entry point unless told otherwise (0 = one per core)


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and containers)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else the CPU; ``cpu``, ``cuda``, ``cuda:1`` are taken as is."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    return device


def set_threads(threads: int) -> int:
    """Set torch's intra-op thread count (0 = one per available core); returns the count used."""
    if threads < 0:
        raise UserError(f"threads must be >= 0, got {threads}")
    count = threads or available_cores()
    torch.set_num_threads(count)
    return count
