"""Reading a run's results: stage names, per-level rows, status. No training code here,
so the analysis layer can use it.

Stage files of replicate r (see docs/storage.md): ``rewind.h5`` (the rewind point),
``level_<L>.h5`` (trunk level L; level 0 is the dense network) and
``level_<L>_<baseline>.h5`` (a baseline on level L's density).
"""

import json
import re
from pathlib import Path
from typing import Any

from imp import store
from imp.config import from_dict, to_dict
from imp.errors import UserError

BASELINES = ("reinit", "random", "oneshot")
REWIND_STAGE = "rewind"
_LEVEL = re.compile(r"level_(\d+)(?:_([a-z]+))?")
# Level files hold large arrays that summaries do not need.
_SUMMARY_SKIP = ("weights", "mask", "steps", "eval", "seeds", "label_noise")


def level_stage(level: int, baseline: str | None = None) -> str:
    """Stage name of a trunk level (``level_3``) or of a baseline at it (``level_3_reinit``)."""
    return f"level_{level}" if baseline is None else f"level_{level}_{baseline}"


def barrier_stage(level: int) -> str:
    """The error barrier between trunk levels ``level`` and ``level + 1``."""
    return f"barrier_{level}"


def sibling_stage(level: int, copy: int) -> str:
    """Copy ``copy`` of level ``level`` trained from its start with other data-order seeds."""
    return f"sibling_{level}_{copy}"


def instability_stage(level: int) -> str:
    """The barriers between the sibling copies of level ``level``."""
    return f"instability_{level}"


def perturb_stage(level: int, direction: str, size: float) -> str:
    """Level ``level`` trained from a perturbed start, and its barrier to the unperturbed one."""
    return f"perturb_{level}_{direction}_{size:g}"


def hessian_stage(level: int) -> str:
    """The Hessian spectrum and predicted prune limit of trunk level ``level``."""
    return f"hessian_{level}"


def prune_check_stage(level: int, fraction: float) -> str:
    """Level ``level`` pruned by ``fraction`` in one iteration and retrained."""
    return f"prune_check_{level}_{fraction:g}"


def pair_stage(a: str, b: str) -> str:
    """The barrier between any two stored networks (named by their stage names)."""
    return f"pair_{a}__{b}"


def parse_stage(stage: str) -> tuple[int, str | None] | None:
    """``(level, baseline)`` of a level stage name, None for other stages."""
    match = _LEVEL.fullmatch(stage)
    if match is None or (match[2] is not None and match[2] not in BASELINES):
        return None
    return int(match[1]), match[2]


def find_run(name: str, out: str | Path) -> store.RunDir:
    """A run given as a folder, or as a run id under ``out``; a damaged file in it is an
    error naming the file, before any command reads or adds to the run."""
    path = Path(name)
    if not store.is_run(path):
        path = Path(out) / name
    if not store.is_run(path):
        raise UserError(f"{name!r} is not a run folder, nor a run id under {out}/ "
                        "(`lth ls` lists the runs there)")
    run = store.RunDir(path.parent, path.name)
    store.check_files(run)
    return run


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
        "planned_levels": int(stored.get("planned_levels", 0)),
        "planned_replicates": int(stored.get("planned_replicates", 1)),
        "baselines": [b for b in str(stored.get("baselines", "")).split(",") if b],
        "provenance": provenance,
    }


def diet_summary(config: dict) -> dict[str, Any] | None:
    """The run's ``[diet]`` settings, defaults filled in; None when there was no diet."""
    if "pretrain" not in config.get("diet", {}):
        return None
    return to_dict(from_dict(config).diet, defaults=True)


def level_rows(run: store.RunDir) -> list[dict[str, Any]]:
    """One row per finished replicate, level and baseline (``None`` for the trunk).

    Keys: replicate, level, baseline, density (fraction of prunable weights kept), kept,
    prunable, and the final evaluation (``train_accuracy``, ``test_accuracy``,
    ``test_loss``, ... as fractions and mean losses), iterations, start_step, train_seconds.
    """
    rows = []
    for replicate in run.replicates():
        stages = run.stages(replicate)
        for stage in stages:
            parsed = parse_stage(stage)
            if parsed is None:
                continue
            tree = store.read_h5(run.stage_file(replicate, stage), skip=_SUMMARY_SKIP)
            row = {
                "replicate": replicate, "level": parsed[0], "baseline": parsed[1],
                "density": tree["density"], "kept": tree["kept"], "prunable": tree["prunable"],
                **tree["final"],
                "iterations": tree["iterations"], "start_step": tree["start_step"],
                "train_seconds": tree["train_seconds"],
            }
            if parsed[1] is None:
                row.update(_landscape_columns(run, replicate, parsed[0], stages))
            rows.append(row)
    order = {None: 0, **{b: i + 1 for i, b in enumerate(BASELINES)}}
    return sorted(rows, key=lambda r: (r["replicate"], r["level"], order[r["baseline"]]))


def _landscape_columns(run: store.RunDir, replicate: int, level: int, stages: list[str]) -> dict[str, float]:
    """Barrier, Hessian and prune-check summaries of a trunk level, where they were measured
    (barriers in the interpolated convention). ``stages`` are the replicate's stages."""
    out = {}
    for key, stage in (("barrier_to_next_test_error", barrier_stage(level)),
                       ("instability_test_error", instability_stage(level))):
        if stage in stages:
            tree = store.read_h5(run.stage_file(replicate, stage), skip=("curve", "pairs", "per_example"))
            out[key] = tree["barrier"]["test_error"]["interpolated"]
    if hessian_stage(level) in stages:
        tree = store.read_h5(run.stage_file(replicate, hessian_stage(level)), skip=("slq", "projection"))
        out["hessian_top_eigenvalue"] = float(tree["eigenvalues"][0])
        out["predicted_max_prune_fraction"] = tree["predicted_fraction"]
        out["conservative_max_prune_fraction"] = tree["conservative_fraction"]
    checks = [store.read_h5(run.stage_file(replicate, s), skip=_SUMMARY_SKIP)
              for s in stages if s.startswith(f"prune_check_{level}_")]
    if checks:
        matching = [c["fraction"] for c in checks if c["matching"]]
        out["measured_max_prune_fraction"] = max(matching, default=0.0)
    return out


def levels_done(run: store.RunDir, replicate: int) -> int:
    """How many trunk levels of a replicate are finished in a row from level 0."""
    stages = set(run.stages(replicate))
    done = 0
    while level_stage(done) in stages:
        done += 1
    return done
