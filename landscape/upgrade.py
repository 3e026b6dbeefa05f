"""``lth upgrade``: convert a run stored by earlier versions to the current layout: its
measurements stored before settings ids (here), then its parameter names stored before
named layers (:func:`imp.legacy.upgrade_parameter_names`; last, since it may rename the
run's folder, and it renames the network files the first step writes too).

Before, a measurement file was named by its kind and level only (``hessian_3``), and the
curve settings of a run were recorded once in ``run.h5`` (``landscape_settings``). Each
old file is rewritten under the name of its settings (:func:`imp.base.names.measurement_stage`)
with its kind, level, settings and columns; a file that also held a trained network
(``perturb_*``, ``prune_check_*``) becomes that network's stage plus the measurement.
The new files are written (atomically) before the old one is removed, so a crash loses
nothing. Settings the old files did not record (a Hessian's Lanczos tolerance and trace
sample count) are left out and the settings marked ``"legacy": true``, so such a result
is listed but never taken for a fresh request's answer.
"""

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from imp.base import names, store
from imp.legacy import NamesUpgrade, upgrade_parameter_names
from imp.base.results import legacy_stages
from landscape.registry import PAIR, by_kind

_CURVE_KEYS = ("points", "examples", "bn", "bn_examples")


def upgrade_run(run: store.RunDir) -> tuple[list[tuple[str, Path]], NamesUpgrade]:
    """Convert every old-layout measurement of ``run``, then its parameter names, holding
    its lock; returns ``(old stage, new file)`` pairs and what the renaming did."""
    converted = []
    with store.RunLock(run):
        curve = _curve_settings(run)
        checks = defaultdict(list)
        for replicate, stage in legacy_stages(run):
            kind, level, parts = names.legacy_kind(stage)
            tree = store.read_h5(run.stage_file(replicate, stage))
            provenance = tree.pop(names.PROVENANCE)
            write = _writer(run, replicate, provenance)
            if kind == "successive":
                new = write(kind, level, curve, tree)
            elif kind == "instability":
                settings = {**curve, "copies": int(tree["copies"]), "per_example": "per_example" in tree}
                if settings["per_example"]:
                    settings["tau"] = float(tree["per_example"]["tau"])
                new = write(kind, level, settings, tree)
            elif kind == "hessian":
                new = write(kind, level, _hessian_settings(tree), tree)
            elif kind == "perturb":
                network = names.perturbed_stage(level, tree["direction"], float(tree["size"]))
                measured = {key: tree.pop(key) for key in ("curve", "barrier", "natural_scale", "perturbation_norm")}
                store.write_h5(run.stage_file(replicate, network), tree, provenance)
                settings = {**curve, "direction": tree["direction"], "size": float(tree["size"])}
                new = write(kind, level, settings, {**measured, "direction": tree["direction"],
                                                    "size": float(tree["size"]), "network": network})
            elif kind == "prune_check":
                network = names.pruned_stage(level, float(tree["fraction"]))
                trained = {k: v for k, v in tree.items() if k not in ("dense_test_error", "matching_tolerance", "matching")}
                store.write_h5(run.stage_file(replicate, network), trained, provenance)
                checks[(replicate, level, float(tree["matching_tolerance"]))].append((stage, tree, provenance))
                continue
            else:
                settings = {**curve, "networks": list(parts)}
                new = write(PAIR, None, settings, tree)
            run.stage_file(replicate, stage).unlink()
            converted.append((stage, new))
        for (replicate, level, tolerance), found in sorted(checks.items(), key=lambda item: item[0]):
            new = _prune_checks(run, replicate, level, tolerance, found)
            for stage, _, _ in found:
                run.stage_file(replicate, stage).unlink()
                converted.append((stage, new))
        renamed = upgrade_parameter_names(run)
    return converted, renamed


def _writer(run: store.RunDir, replicate: int, provenance: dict):
    def write(kind: str, level: int | None, settings: dict, tree: dict) -> Path:
        columns = {} if kind == PAIR else by_kind(kind).columns(tree)
        stage = names.measurement_stage(kind, level, settings)
        tree = {**tree, "measurement": kind, "level": -1 if level is None else level,
                "settings": names.settings_json(settings), "settings_id": names.settings_id(settings),
                names.COLUMNS_GROUP: columns}
        return store.write_h5(run.stage_file(replicate, stage), tree, provenance)
    return write


def _curve_settings(run: store.RunDir) -> dict:
    """The curve settings the old layout recorded once per run in ``run.h5``."""
    stored = store.read_run(run).get("landscape_settings")
    if stored is None:
        return {"legacy": True}
    settings = {key: value for key, value in json.loads(stored).items() if key in _CURVE_KEYS}
    if settings.get("bn") == "interpolate":
        settings.pop("bn_examples", None)
    return settings


def _hessian_settings(tree: dict) -> dict:
    """What an old Hessian file shows of its settings (its tolerance and trace samples it does not)."""
    runs, steps = np.shape(tree["slq"]["nodes"])
    return {"k": len(tree["eigenvalues"]), "examples": int(tree["examples"]), "bn": tree["bn"],
            "slq_runs": int(runs), "slq_steps": int(steps), "eps": float(tree["eps"]), "legacy": True}


def _prune_checks(run: store.RunDir, replicate: int, level: int, tolerance: float, found: list) -> Path:
    """One prune-check measurement of a level from its old per-fraction files."""
    found = sorted(found, key=lambda item: float(item[1]["fraction"]))
    fractions = [float(tree["fraction"]) for _, tree, _ in found]
    errors = [1 - tree["final"]["test_accuracy"] for _, tree, _ in found]
    first = found[0][1]
    tree = {"fractions": np.asarray(fractions), "test_error": np.asarray(errors),
            "matching": np.asarray([bool(tree["matching"]) for _, tree, _ in found]), "from_level": level,
            "dense_test_error": float(first["dense_test_error"]), "matching_tolerance": tolerance,
            "networks": " ".join(names.pruned_stage(level, f) for f in fractions)}
    settings = {"fractions": fractions, "matching_tolerance": tolerance}
    return _writer(run, replicate, found[0][2])("prune_check", level, settings, tree)
