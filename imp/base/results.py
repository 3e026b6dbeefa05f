"""Reading a run's results: per-level rows, measurements, status. No training code here,
so the analysis layer can use it; every name comes from :mod:`imp.base.names`.

Stage files of replicate r (see docs/storage.md): ``rewind.h5`` (the rewind point),
``level_<L>.h5`` (trunk level L; level 0 is the dense network),
``level_<L>_<baseline>.h5`` (a baseline on level L's density) and the measurement files
``<kind>_<L>_<id>.h5``, which say what they are in their attributes.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imp.base import names, store
from imp.base.config import from_dict, to_dict
from imp.base.errors import UserError
from imp.base.names import BASELINES, level_stage, parse_level_stage
from imp.base.record import TrainedLevel


def find_run(name: str, out: str | Path, legacy: bool = False) -> store.RunDir:
    """A run given as a folder, or as a run id (or a unique start of one, of 4 characters
    or more) under ``out``; a damaged file in it is an
    error naming the file, before any command reads or adds to the run, and so are
    measurements in the layout before settings ids (unless ``legacy``)."""
    path = Path(name)
    if not store.is_run(path):
        path = Path(out) / name
    if not store.is_run(path) and len(name) >= 4 and "/" not in name:  # a unique prefix, as git takes
        found = [run.path for run in store.find_runs(out) if run.run_id.startswith(name)]
        if len(found) > 1:
            raise UserError(f"{name!r} is the start of {len(found)} run ids under {out}/ "
                            f"({', '.join(p.name for p in found[:4])}); give more of the id")
        path = found[0] if found else path
    if not store.is_run(path):
        raise UserError(f"{name!r} is not a run folder, nor a run id under {out}/ "
                        "(`lth ls` lists the runs there)")
    run = store.RunDir(path.parent, path.name)
    store.check_files(run)
    if not legacy:
        check_layout(run)
    return run


def legacy_stages(run: store.RunDir) -> list[tuple[int, str]]:
    """``(replicate, stage)`` of every measurement stored in the layout before settings ids."""
    return [(r, stage) for r in run.replicates() for stage in run.stages(r) if names.legacy_kind(stage)]


def check_layout(run: store.RunDir) -> None:
    """Refuse a run whose measurements are in the old layout, saying how to convert them."""
    old = legacy_stages(run)
    if old:
        replicate, stage = old[0]
        raise UserError(f"run {run.run_id} holds {len(old)} measurement(s) in the layout before settings ids "
                        f"(e.g. replicate_{replicate}/{stage}.h5); convert them with `lth upgrade {run.path}` "
                        "(nothing is lost: each file is rewritten under its new name with its settings)")


def run_info(run: store.RunDir) -> dict[str, Any]:
    """The run's config (canonical, non-default fields), plan and provenance."""
    stored = store.read_run(run)
    provenance = stored.pop(store.PROVENANCE)
    config = json.loads(provenance["config"])
    return {
        "run_id": run.run_id,
        "path": str(run.path),
        "config": config,
        "diet": diet_summary(config),
        "subset": subset_summary(config, run),
        "planned_levels": int(stored.get("planned_levels", 0)),
        "planned_replicates": int(stored.get("planned_replicates", 1)),
        "baselines": [b for b in str(stored.get("baselines", "")).split(",") if b],
        "provenance": provenance,
    }


def subset_summary(config: dict, run: store.RunDir) -> dict[str, Any] | None:
    """The run's ``[subset]`` settings, defaults filled in, with what its ``subset.h5`` says
    was kept (``kept`` of ``examples``, ``skipped`` from the top, the scores' source);
    None when the run trains on every example."""
    if "keep" not in config.get("subset", {}):
        return None
    summary = to_dict(from_dict(config).subset, defaults=True)
    path = run.path / names.SUBSET_FILE
    if path.is_file():
        stored = store.read_h5(path, only=())
        summary.update({key: stored[key] for key in ("kept", "examples", "skipped", "scores_source")})
    return summary


def diet_summary(config: dict) -> dict[str, Any] | None:
    """The run's ``[diet]`` settings, defaults filled in; None when there was no diet."""
    if "pretrain" not in config.get("diet", {}):
        return None
    return to_dict(from_dict(config).diet, defaults=True)


def level_rows(run: store.RunDir) -> list[dict[str, Any]]:
    """One row per finished replicate, level and baseline (``None`` for the trunk).

    Keys: replicate, level, baseline, density (fraction of prunable weights kept), kept,
    prunable, and the final evaluation (``train_accuracy``, ``test_accuracy``,
    ``test_loss``, ... as fractions and mean losses), iterations, start_step,
    iterations_per_epoch, train_seconds.
    A trunk row also has the summary columns of its level's measurements (e.g.
    ``barrier_to_next_test_error``) where one measurement file gives the column; where
    several variants of a measurement (other settings) give it, it is left out of the row,
    never averaged or chosen between, and :func:`measurement_rows` lists them all.
    """
    rows = []
    measured = measurement_rows(run)
    for replicate in run.replicates():
        for stage in run.stages(replicate):
            parsed = parse_level_stage(stage)
            if parsed is None:
                continue
            trained = TrainedLevel.read(run.stage_file(replicate, stage), arrays=False)
            row = {
                "replicate": replicate, "level": parsed[0], "baseline": parsed[1],
                "density": trained.density, "kept": trained.kept, "prunable": trained.prunable,
                **trained.final,
                "iterations": trained.iterations, "start_step": trained.start_step,
                "iterations_per_epoch": trained.iterations_per_epoch,
                "train_seconds": trained.train_seconds,
            }
            if parsed[1] is None:
                row.update(_single_variants(measured, replicate, parsed[0]))
            rows.append(row)
    order = {None: 0, **{b: i + 1 for i, b in enumerate(BASELINES)}}
    return sorted(rows, key=lambda r: (r["replicate"], r["level"], order[r["baseline"]]))


def _single_variants(measured: list[dict], replicate: int, level: int) -> dict[str, float]:
    """The columns of one trunk level's measurements that exactly one file gives."""
    values: dict[str, list[float]] = {}
    for row in measured:
        if row["replicate"] == replicate and row["level"] == level:
            for key, value in row["columns"].items():
                values.setdefault(key, []).append(value)
    return {key: found[0] for key, found in values.items() if len(found) == 1}


@dataclass(frozen=True)
class Measured:
    """What a measurement file says about itself (its attributes and summary columns)."""

    replicate: int
    stage: str
    measurement: str
    level: int | None
    settings: dict[str, Any]
    settings_id: str
    columns: dict[str, float]

    def row(self) -> dict[str, Any]:
        return {"replicate": self.replicate, "level": self.level, "measurement": self.measurement,
                "settings_id": self.settings_id, "settings": self.settings, "stage": self.stage,
                "columns": self.columns}


def read_measured(run: store.RunDir, replicate: int, stage: str) -> Measured:
    """The self-description of one measurement file (nothing else of it is read)."""
    tree = store.read_h5(run.stage_file(replicate, stage), only=(names.COLUMNS_GROUP,))
    if "measurement" not in tree:
        raise UserError(f"{run.stage_file(replicate, stage)} is not a measurement file; delete it and "
                        "rerun the command that made it")
    level = int(tree["level"])
    return Measured(replicate, stage, tree["measurement"], None if level < 0 else level,
                    json.loads(tree["settings"]), tree["settings_id"],
                    {k: float(v) for k, v in tree.get(names.COLUMNS_GROUP, {}).items()})


def measurements(run: store.RunDir) -> list[Measured]:
    """Every measurement of the run, by replicate, kind, level and settings id."""
    found = [read_measured(run, replicate, stage) for replicate in run.replicates()
             for stage in run.stages(replicate) if names.parse_measurement_stage(stage)]
    return sorted(found, key=lambda m: (m.replicate, m.measurement, -1 if m.level is None else m.level,
                                        m.settings_id))


def measurement_rows(run: store.RunDir) -> list[dict[str, Any]]:
    """One row per measurement file: replicate, level (None for a pair), measurement,
    settings_id, settings (the full settings it was made with), stage, columns."""
    return [m.row() for m in measurements(run)]


def levels_done(run: store.RunDir, replicate: int) -> int:
    """How many trunk levels of a replicate are finished in a row from level 0."""
    stages = set(run.stages(replicate))
    done = 0
    while level_stage(done) in stages:
        done += 1
    return done
