"""Linear mode connectivity restricted to groups of training examples (Paul, Ganguli and
Dziugaite 2021, "Deep learning on a data diet", section 6 and Fig. 4).

The sibling copies of level L (``landscape.siblings``, at least 2; see
:mod:`landscape.measure`) start from the same state, the level's start at step k (its
*spawn time*: ``prune.rewind``, or the end of a diet's pre-training), and train with other
data orders. For each pair of copies a and b, and each group G of training examples, the
error curve along the linear path ``w(alpha) = (1 - alpha) w_a + alpha w_b`` is evaluated
on the examples of G alone, and its barrier is the maximum over alpha of the curve minus
the straight line between its ends (:func:`landscape.lmc.curve_barriers`). The groups:

* ``low`` and ``high``: the ``round(q N)`` training examples with the lowest and highest
  scores, oriented so that high = hard (:func:`imp.scores.hardness`: margin and AUM
  negated), q = ``landscape.group_fraction`` (default 0.1), the scores
  ``landscape.group_score`` after ``landscape.group_score_step`` of training, mean of
  ``landscape.group_score_runs`` runs (cached under ``<out>/scores``; ties keep position
  order);
* ``file``: the examples whose original training-set indices are listed in
  ``landscape.group_index_file`` (a ``.npy`` array or a text file of integers), if set.

The paper finds the barrier on low-score examples falls to 0 much earlier in spawn time
than on high-score ones. BatchNorm statistics are re-estimated (or interpolated) as for
every curve, on the same fixed training examples. Measured by ``lth groups RUN`` or with
``landscape.groups = true`` during ``lth run``; the figure ``group_barrier_vs_spawn``
plots the barriers against the spawn step of runs at several rewind points.
"""

import hashlib
from pathlib import Path

import numpy as np

from imp.base.errors import UserError
from imp.scores import ScoreSpec, hardness, load_or_compute
from imp.base.duration import Duration
from landscape.measure import Probe, compare, curve_settings, make_probe

KEYS = {"groups": (bool, False), "group_fraction": (float, 0.1), "group_score": (str, "el2n"),
        "group_score_step": (str, "2ep"), "group_score_runs": (int, 1), "group_index_file": (str, "")}
SCORES = ("el2n", "grand", "forgetting")


def variants(ls, level: int) -> list[dict]:
    """One variant where the siblings are measured (at least 2 copies), checked first."""
    if not ls.extra("groups") or (ls.sibling_levels and level not in ls.sibling_levels):
        return []
    fraction, score = ls.extra("group_fraction"), ls.extra("group_score")
    if not 0 < fraction <= 0.5:
        raise UserError(f"landscape.group_fraction = {fraction} must be in (0, 0.5], e.g. 0.1")
    if score not in SCORES:
        raise UserError(f"landscape.group_score = {score!r} is not one of {', '.join(map(repr, SCORES))}")
    if ls.extra("group_score_runs") < 1:
        raise UserError("landscape.group_score_runs must be at least 1")
    step = Duration.parse(ls.extra("group_score_step"))
    settings = {**curve_settings(ls), "copies": max(ls.siblings, 2), "fraction": fraction, "score": score,
                "score_step": str(step), "score_runs": ls.extra("group_score_runs")}
    index_file = ls.extra("group_index_file")
    if index_file:
        settings["index_file"] = index_file
        settings["index_sha256"] = _digest(Path(index_file))  # its contents, not only its name
    return [settings]


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError as error:
        raise UserError(f"landscape.group_index_file: cannot read {path} ({error.strerror}); "
                        "give a .npy array or a text file of training-set indices") from None


def read_indices(path: Path) -> np.ndarray:
    """Original training-set indices from a ``.npy`` array or a text file of integers."""
    try:
        values = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, dtype=np.int64, ndmin=1)
    except (OSError, ValueError) as error:
        raise UserError(f"landscape.group_index_file: cannot read {path} ({error}); give a .npy array or a "
                        "text file of training-set indices") from None
    values = np.asarray(values)
    if values.ndim != 1 or values.size == 0 or not np.issubdtype(values.dtype, np.integer):
        raise UserError(f"landscape.group_index_file: {path} holds no list of integer indices")
    return values.astype(np.int64)


def ranked(context, settings: dict, count: int) -> dict[str, np.ndarray]:
    """Positions in the training split of the ``count`` lowest and highest hardness of
    ``settings`` (score, score_step, score_runs; cached under ``<out>/scores``), ties to the
    earlier position (as :mod:`imp.subsets`). A ``[subset]`` run never gets here
    (:func:`landscape.registry.check`): the scores rank the whole training set."""
    spec = ScoreSpec(settings["score"], Duration.parse(settings["score_step"]), settings["score_runs"])
    tree, _ = load_or_compute(context.config, context.data, spec, context.run.out, threads=None)
    scores = hardness(tree)  # higher = harder, whichever way the score points
    return {"low": np.sort(np.argsort(scores, kind="stable")[:count]),
            "high": np.sort(np.argsort(-scores, kind="stable")[:count])}


def groups(context, settings: dict) -> dict[str, np.ndarray]:
    """Positions in the run's training split of each group of ``settings``."""
    data = context.data
    found = ranked(context, settings, max(1, int(np.floor(settings["fraction"] * len(data.train) + 0.5))))
    if "index_file" in settings:
        wanted = read_indices(Path(settings["index_file"]))
        index = data.train.index.cpu().numpy()
        positions = np.flatnonzero(np.isin(index, wanted))
        if len(positions) != len(np.unique(wanted)):
            raise UserError(f"landscape.group_index_file: {len(np.unique(wanted)) - len(positions)} of its indices "
                            f"are not in this run's training split (0 .. {index.max()}, validation excluded)")
        found["file"] = positions
    return found


def compute(context, level: int, settings: dict) -> dict:
    """Barriers between every pair of sibling copies of ``level``, on each group."""
    chosen = groups(context, settings)  # a bad index file is refused before any sibling trains
    copies = settings["copies"]
    states = context.siblings(level, copies)
    base = make_probe(context.config, context.data, settings)
    out = {"copies": copies, "fraction": settings["fraction"], "spawn_step": context.trunk.start_of(level)[0].step,
           "groups": {}}
    for name, positions in chosen.items():
        probe = Probe({"train": context.data.train.subset(positions)}, base.bn_examples, base.points, base.bn)
        pairs = {f"{i}_{j}": compare(context.config, context.data, probe, states[i], states[j])
                 for i in range(copies) for j in range(i + 1, copies)}
        barrier = {key: {kind: float(np.mean([p["barrier"][key][kind] for p in pairs.values()]))
                         for kind in ("interpolated", "mean")} for key in ("train_error", "train_loss")}
        out["groups"][name] = {"index": context.data.train.index.cpu().numpy()[positions], "barrier": barrier,
                               "pairs": pairs}
    return out


def columns(tree: dict) -> dict:
    return {f"group_barrier_{name}_train_error": group["barrier"]["train_error"]["interpolated"]
            for name, group in tree["groups"].items()} | {"spawn_step": float(tree["spawn_step"])}
