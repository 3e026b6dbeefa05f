"""Subsets of the training set chosen by example scores (Paul et al. 2021, 2022).

Positions index the training split as held by :class:`imp.data.Dataset` (``train``).
``easy`` keeps the window ``[offset, offset + size)`` of the positions sorted by
increasing score, ``hard`` the same window of the positions sorted by decreasing score,
``random`` a seeded uniform sample, ``all`` everything. Sorting is stable: equal scores
keep position order, so a selection is deterministic. With ``class_balanced`` the size
and the offset are split over the classes in proportion to their frequency (largest
remainders, so the parts add up exactly) and each class is selected on its own.
"""

import numpy as np

from imp.base.config import SubsetConfig
from imp.base.errors import UserError

MODES = ("all", "easy", "hard", "random")


def select(scores: np.ndarray | None, labels: np.ndarray, mode: str, size: int = 0, *,
           offset: int = 0, class_balanced: bool = False, seed: int = 0) -> np.ndarray:
    """Sorted positions of the chosen examples. ``scores`` may be None for ``all``/``random``."""
    labels = np.asarray(labels)
    count = len(labels)
    if mode == "all":
        return np.arange(count)
    if mode not in MODES:
        raise ValueError(f"unknown subset {mode!r}; choose from {MODES}")
    if size + offset > count:
        raise UserError(f"diet.size ({size}) + diet.offset ({offset}) is larger than the training set "
                        f"({count} examples); choose a smaller diet.size")
    return _select(scores, labels, mode, size, offset, class_balanced, seed)


RULES = {"hardest": "hard", "easiest": "easy", "random": "random", "window": "hard"}


def ccs(scores: np.ndarray, size: int, hard_cut: float, strata: int, seed: int) -> np.ndarray:
    """Coverage-centric coreset selection (Zheng et al. 2023, "Coverage-centric coreset
    selection for high pruning rates", Algorithm 1): sorted positions of ``size`` examples.

    1. Drop the round(``hard_cut`` x N) highest scores (the hardest, often mislabelled;
       ties by position, as everywhere here).
    2. Split the remaining scores' range [min, max] into ``strata`` bins of equal width
       (bin b holds min + b w <= s < min + (b + 1) w, the maximum in the last bin; an
       infinite score, forgetting's "never learned", in the last bin too).
    3. Give the budget out bin by bin, from the fewest examples to the most (ties by bin
       index): bin i of the B - i still to serve gets min(its size, floor(budget left /
       (B - i))); the last bins take what the small ones could not, so the counts add up
       to ``size`` whenever the kept examples are that many.
    4. Sample each bin's count uniformly at random, seeded by ``seed``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    count = len(scores)
    cut = int(np.floor(hard_cut * count + 0.5))
    if size > count - cut:
        raise UserError(f"the coverage-centric subset keeps {size} examples but only {count - cut} remain after "
                        f"dropping the {cut} hardest; lower the hard cut or keep fewer")
    kept = np.sort(np.argsort(-scores, kind="stable")[cut:])
    values = scores[kept]
    finite = np.isfinite(values)  # forgetting scores +inf for examples never learned: the top stratum
    low, high = (values[finite].min(), values[finite].max()) if finite.any() else (0.0, 0.0)
    width = (high - low) / strata if high > low else 1.0
    bins = np.full(len(values), strata - 1, dtype=np.int64)
    bins[finite] = np.minimum(((values[finite] - low) / width).astype(np.int64), strata - 1)
    sizes = np.bincount(bins, minlength=strata)
    budgets = np.zeros(strata, dtype=np.int64)
    left = size
    for served, b in enumerate(np.argsort(sizes, kind="stable")):
        budgets[b] = min(sizes[b], left // (strata - served))
        left -= budgets[b]
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(kept[bins == b])[:budgets[b]] for b in range(strata) if budgets[b]]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def keep(config: SubsetConfig, scores: np.ndarray | None, labels: np.ndarray) -> np.ndarray:
    """Sorted positions of the examples a ``[subset]`` run trains on (Paul et al. 2021).

    ``scores`` are oriented so that higher = harder (:func:`imp.scores.hardness`), so
    "highest" below means hardest for every score, margin and AUM included.

    With N training examples, K = ``config.kept(N)`` of them are kept: ``hardest`` the K
    highest scores, ``easiest`` the K lowest, ``random`` a uniform sample (seeded by
    ``config.seed``), ``window`` the K highest after skipping the S = ``config.skipped(N)``
    highest (at most N - K), i.e. ranks S .. S+K-1 counted from the top; ``ccs`` the
    coverage-centric selection of :func:`ccs`. The paper's
    offset counts from the lowest score instead: its window starting at ``o`` is this
    one with S = N - K - o. With ``class_balanced`` K and S are split over the classes
    as :func:`select` does.
    """
    labels = np.asarray(labels)
    count = len(labels)
    size = config.kept(count)
    if config.rule == "ccs":
        if scores is None or len(scores) != count:
            raise ValueError("the coverage-centric rule needs one score per example")
        return ccs(scores, size, config.ccs_hard_cut, config.ccs_strata, config.seed)
    offset = config.skipped(count)  # the window's S; 0 for the other rules
    if config.rule != "random" and (scores is None or len(scores) != count):
        raise ValueError("score rules need one score per example")
    scores = None if scores is None else np.asarray(scores, dtype=np.float64)
    return _select(scores, labels, RULES[config.rule], size, offset, config.class_balanced, config.seed,
                   "subset.keep + subset.offset", "subset.keep")


def _select(scores: np.ndarray | None, labels: np.ndarray, mode: str, size: int, offset: int,
            class_balanced: bool, seed: int, share: str = "diet.size + diet.offset",
            smaller: str = "diet.size or offset") -> np.ndarray:
    count = len(labels)
    if mode in ("easy", "hard"):
        if scores is None or len(scores) != count:
            raise ValueError("easy and hard subsets need one score per example")
        scores = np.asarray(scores, dtype=np.float64)
    if not class_balanced:
        return np.sort(_pick(np.arange(count), scores, mode, size, offset, seed))
    classes, counts = np.unique(labels, return_counts=True)
    sizes, offsets = _split(size, counts), _split(offset, counts)
    for c, n, want in zip(classes, counts, sizes + offsets):
        if want > n:
            raise UserError(f"class {c} has {n} examples, fewer than its share of {share} ({want}); "
                            f"choose a smaller {smaller}")
    parts = [_pick(np.flatnonzero(labels == c), scores, mode, sizes[i], offsets[i], seed + int(c))
             for i, c in enumerate(classes)]
    return np.sort(np.concatenate(parts))


def _pick(positions: np.ndarray, scores: np.ndarray | None, mode: str, size: int, offset: int,
          seed: int) -> np.ndarray:
    if mode == "random":
        return np.random.default_rng(seed).permutation(positions)[:size]
    key = scores[positions] if mode == "easy" else -scores[positions]
    order = np.argsort(key, kind="stable")
    return positions[order[offset:offset + size]]


def _split(total: int, counts: np.ndarray) -> np.ndarray:
    """``total`` split in proportion to ``counts`` by largest remainders (sums exactly)."""
    exact = total * counts / counts.sum()
    parts = np.floor(exact).astype(int)
    short = total - parts.sum()
    parts[np.argsort(-(exact - parts), kind="stable")[:short]] += 1
    return parts
