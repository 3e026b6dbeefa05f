"""Runs as tidy pandas frames, read through the store (no training code here).

Every frame has ``run_id`` and the run's config as columns named ``section.key``
(defaults filled in; lists as JSON text), so any set of runs can be grouped by, e.g.,
``prune.rewind`` or ``diet.subset``. The frames and their columns:

* ``levels``: one row per run, replicate, level and baseline (``"imp"`` for the trunk),
  the columns of :func:`imp.base.results.level_rows`;
* ``measurements``: one row per run, replicate, level and measurement variant: ``kind``
  (e.g. ``hessian``), ``variant`` (its settings id), ``settings`` (JSON text) and its
  summary columns (``hessian_top_eigenvalue``, ``measured_max_prune_fraction``, ...);
* ``curves``: one row per point of a stored barrier curve: ``kind`` (``successive``,
  ``instability``, ``perturb``, ``pair``), ``variant``, ``settings``, ``level``, ``label``,
  ``alpha``, ``split``, ``metric`` (``error``/``loss``), ``value``;
* ``barriers``: one row per barrier: ``kind``, ``variant``, ``settings``, ``level``,
  ``label``, ``split``, ``metric``, ``interpolated``, ``mean``, ``density``, and
  ``direction``/``size`` for perturbations;
* ``per_example``: one row per example of a sibling measurement: ``level``, ``variant``,
  ``midpoint_barrier``, ``tau``;
* ``directions``: from prune checks, one row per level, rule (``magnitude``, ``random``)
  and fraction of ``curvature_grid``: ``curvature`` (``d^T G d / |d|^2`` along the
  rule's pruning direction d), ``squared_norm`` (|d|^2), ``quadratic_rise`` (``d^T G d /
  2``, the loss rise of the quadratic model) and ``loss_rise`` (training loss right after
  pruning minus before, no retraining);
* ``metrics``: the evaluations during training: one row per run, replicate, level,
  baseline and evaluated ``step``, with ``train_loss``, ``train_accuracy``, ``test_loss``,
  ``test_accuracy`` (and validation columns when there is a validation split);
* ``scores``: from score files: ``score``, ``step``, ``name``, ``position``, ``value``,
  ``noisy``, ``input_norm``, ``label``.

Variants of one measurement (the same kind and level measured with other settings) are
rows of their own with their own ``variant``: the figures draw them apart and never
average them together. Names of files come from :mod:`imp.base.names`, and what a measurement
file holds from its own attributes (:func:`imp.base.results.measurements`).
"""

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from imp.base import names, store
from imp.base.config import from_dict, to_dict
from imp.base.errors import UserError
from imp.base.record import TrainedLevel
from imp.base.results import find_run, level_rows, measurements, run_info

_CURVE_KINDS = ("successive", "instability", "perturb", "pair")  # measurements that store curves
DIRECTION_KEYS = ("curvature", "loss_rise", "quadratic_rise", "squared_norm")  # per pruning direction


def load_runs(run_names: Iterable[str], out: str | Path = "results") -> list[store.RunDir]:
    """Runs given as folders or ids under ``out``; a name that is not a run is an error."""
    runs = [find_run(str(name), out) for name in run_names]
    if not runs:
        raise UserError("no runs given")
    return runs


def config_columns(config: dict) -> dict:
    """A run's full config flattened to ``section.key`` columns."""
    full = to_dict(from_dict(config), defaults=True)
    return {f"{section}.{key}": (json.dumps(value) if isinstance(value, (list, dict)) else value)
            for section, values in full.items() for key, value in values.items()}


def _with_config(rows: list[dict], run: store.RunDir) -> list[dict]:
    columns = {"run_id": run.run_id, **config_columns(run_info(run)["config"])}
    return [{**columns, **row} for row in rows]


def levels_frame(runs: Iterable[store.RunDir]) -> pd.DataFrame:
    rows = []
    for run in runs:
        found = level_rows(run)
        for row in found:
            row["baseline"] = row["baseline"] or "imp"
        rows += _with_config(found, run)
    return pd.DataFrame(rows)


def metrics_frame(runs: Iterable[store.RunDir]) -> pd.DataFrame:
    rows = []
    for run in runs:
        run_rows = []
        for replicate in run.replicates():
            for stage in run.stages(replicate):
                parsed = names.parse_level_stage(stage)
                if parsed is None:
                    continue
                evaluations = TrainedLevel.read(run.stage_file(replicate, stage), arrays=("eval",)).eval
                keys = list(evaluations)
                for i in range(len(evaluations["step"])):
                    run_rows.append({"replicate": replicate, "level": parsed[0], "baseline": parsed[1] or "imp",
                                     **{k: evaluations[k][i].item() for k in keys}})
        rows += _with_config(run_rows, run)
    return pd.DataFrame(rows)


def measurements_frame(runs: Iterable[store.RunDir]) -> pd.DataFrame:
    rows = []
    for run in runs:
        found = [{"replicate": m.replicate, "level": m.level, "kind": m.measurement, "variant": m.settings_id,
                  "settings": json.dumps(m.settings, sort_keys=True), **m.columns} for m in measurements(run)]
        rows += _with_config(found, run)
    return pd.DataFrame(rows)


def _curve_measurements(run: store.RunDir):
    """``(measured, tree)`` for every measurement of a run that stores barrier curves."""
    for measured in measurements(run):
        if measured.measurement in _CURVE_KINDS:
            yield measured, store.read_h5(run.stage_file(measured.replicate, measured.stage))


def _pieces(kind: str, level: int, tree: dict):
    """``(label, curve, barrier, fields)`` of each measured pair in a landscape stage."""
    if kind == "successive":
        yield f"{level}->{level + 1}", tree["curve"], tree["barrier"], {}
    elif kind == "instability":
        for pair, value in sorted(tree["pairs"].items()):
            yield pair, value["curve"], value["barrier"], {}
    elif kind == "perturb":
        fields = {"direction": tree["direction"], "size": float(tree["size"])}
        yield f"{tree['direction']} {tree['size']:g}", tree["curve"], tree["barrier"], fields
    else:
        yield tree["networks"].replace(" ", " vs "), tree["curve"], tree["barrier"], {}


def alignment(settings: dict) -> str:
    """How a barrier's pair was taken: ``raw``, ``weights`` or ``activations`` (aligned
    by :mod:`landscape.align`), with ``+repair`` under REPAIR."""
    return str(settings.get("align", "raw")) + ("+repair" if settings.get("repair") else "")


def landscape_frames(runs: Iterable[store.RunDir]) -> dict[str, pd.DataFrame]:
    """The ``curves``, ``barriers`` and ``per_example`` frames of the runs."""
    curves, barriers, per_example = [], [], []
    for run in runs:
        density = {(r["replicate"], r["level"]): r["density"] for r in level_rows(run) if r["baseline"] is None}
        run_curves, run_barriers, run_examples = [], [], []
        for measured, tree in _curve_measurements(run):
            replicate, kind = measured.replicate, measured.measurement
            level = -1 if measured.level is None else measured.level
            base = {"replicate": replicate, "kind": kind, "variant": measured.settings_id,
                    "settings": json.dumps(measured.settings, sort_keys=True), "level": level,
                    "alignment": alignment(measured.settings)}
            for label, curve, barrier, fields in _pieces(kind, level, tree):
                for key, value in barrier.items():
                    split, metric = key.split("_", 1)
                    run_barriers.append({**base, "label": label, "split": split, "metric": metric,
                                         "interpolated": value["interpolated"], "mean": value["mean"],
                                         "density": density.get((replicate, level), np.nan), **fields})
                    run_curves += [{**base, "label": label, "alpha": a, "split": split, "metric": metric, "value": v}
                                   for a, v in zip(curve["alpha"], curve[key])]
            if kind == "instability" and "per_example" in tree:
                values = tree["per_example"]
                run_examples += [{"replicate": replicate, "level": level, "variant": measured.settings_id,
                                  "midpoint_barrier": b, "tau": values["tau"]} for b in values["midpoint_barrier"]]
        curves += _with_config(run_curves, run)
        barriers += _with_config(run_barriers, run)
        per_example += _with_config(run_examples, run)
    return {"curves": pd.DataFrame(curves), "barriers": pd.DataFrame(barriers),
            "per_example": pd.DataFrame(per_example)}


def _trees(run: store.RunDir, kind: str):
    """``(row base, tree)`` for every measurement of ``kind`` in ``run``."""
    for measured in measurements(run):
        if measured.measurement == kind:
            base = {"replicate": measured.replicate, "level": measured.level, "variant": measured.settings_id}
            yield base, store.read_h5(run.stage_file(measured.replicate, measured.stage))


def directions_frame(runs: Iterable[store.RunDir]) -> pd.DataFrame:
    rows = []
    for run in runs:
        found = []
        for base, tree in _trees(run, "prune_check"):
            if "direction" not in tree:  # measured before directions were stored
                continue
            for rule, values in tree["direction"].items():
                found += [{**base, "rule": rule, "fraction": float(f),
                           **{key: values[key][i] for key in DIRECTION_KEYS if key in values}}
                          for i, f in enumerate(tree["curvature_grid"])]
        rows += _with_config(found, run)
    return pd.DataFrame(rows)


def ntk_frame(runs: Iterable[store.RunDir]) -> pd.DataFrame:
    """The kernel velocities of the ``ntk`` measurements (:mod:`landscape.ntk`): a row per
    group and pair of successive checkpoints, at the later checkpoint's ``step``."""
    rows = []
    for run in runs:
        found = []
        for base, tree in _trees(run, "ntk"):
            for group, values in tree["groups"].items():
                found += [{**base, "group": group, "step": int(step), "velocity": float(v), "distance": float(d)}
                          for step, v, d in zip(tree["steps"][1:], values["velocity"], values["distance"])]
        rows += _with_config(found, run)
    return pd.DataFrame(rows)


def score_files(runs: Iterable[store.RunDir]) -> list[Path]:
    """The score files in the results folders the runs live in."""
    folders = sorted({run.out / names.SCORES_DIR for run in runs})
    return sorted(path for folder in folders if folder.is_dir() for path in folder.glob("*.h5"))


def scores_frame(paths: Iterable[Path]) -> pd.DataFrame:
    frames = []
    for path in paths:
        tree = store.read_h5(path, skip=("per_run",))
        name = f"{tree['score']}@{tree['step']}"
        frames.append(pd.DataFrame({
            "score": tree["score"], "step": tree["step"], "name": name,
            "position": np.arange(len(tree["mean"])), "value": tree["mean"], "noisy": tree["noisy"],
            "input_norm": tree["input_norm"], "label": tree["labels"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def load_frames(run_names: Iterable[str], out: str | Path = "results") -> dict[str, pd.DataFrame]:
    """Every frame of the given runs (and the score files beside them)."""
    runs = load_runs(run_names, out)
    return {"levels": levels_frame(runs), "metrics": metrics_frame(runs), "measurements": measurements_frame(runs),
            "directions": directions_frame(runs), "ntk": ntk_frame(runs), **landscape_frames(runs),
            "scores": scores_frame(score_files(runs))}
