"""Every name the toolkit stores things under: files, folders, stages and their parsing.

One module owns them (STYLE.md, "one module decides every path and HDF5 group name");
the store, the engine, the measurements, the analysis and the sweeps ask it. The layout
(docs/storage.md)::

    OUT/<run_id>/run.h5, run.lock
    OUT/<run_id>/replicate_<r>/<stage>.h5
    OUT/scores/<score>_<id>.h5
    OUT/sweeps/<name>.json

Stages of a replicate are of three sorts:

* **networks the trunk trains**: ``pretrain``, ``rewind``, ``level_<L>`` and
  ``level_<L>_<baseline>``;
* **networks a measurement trains**, named by everything that decides their training:
  ``sibling_<L>_<copy>``, ``perturbed_<L>_<direction>_<size>``, ``pruned_<L>_<fraction>[_random<copy>]``;
* **measurements** (derived numbers): ``<kind>_<L>_<id>`` or, for a measurement of no
  one level, ``<kind>_<id>``, where ``<id>`` is :func:`settings_id` of exactly the
  settings that change the numbers. The same question finds the same file; a different
  one never does. Each file also records its kind, level and settings (attributes
  ``measurement``, ``level``, ``settings``), so nothing needs to parse the name.

Files of the layout before settings ids (``barrier_<L>``, ``instability_<L>``,
``hessian_<L>``, ``perturb_<L>_<direction>_<size>``, ``prune_check_<L>_<fraction>``,
``pair_<A>__<B>``) are recognised by :func:`legacy_kind`; ``lth upgrade`` converts them.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

RUN_FILE = "run.h5"
LOCK_FILE = "run.lock"
PROVENANCE = "provenance"  # the group of provenance attributes in every file
REPLICATE_DIR = "replicate_{}"
TEMPORARY_SUFFIX = ".tmp"
SCORES_DIR = "scores"
SWEEPS_DIR = "sweeps"

BASELINES = ("reinit", "random", "oneshot", "snip", "grasp", "synflow")
REWIND_STAGE = "rewind"
PRETRAIN_STAGE = "pretrain"
SUBSET_FILE = "subset.h5"  # in a run's folder: the training examples a [subset] run keeps
# Attributes every measurement file carries (see docs/storage.md, "Measurements").
MEASUREMENT_ATTRS = ("measurement", "level", "settings", "settings_id")
COLUMNS_GROUP = "columns"  # scalar summaries a measurement adds to its level's row

_LEVEL = re.compile(r"level_(\d+)(?:_([a-z]+))?")
_MEASUREMENT = re.compile(r"([a-z_]+?)(?:_(\d+))?_([0-9a-f]{8})")
_LEGACY = [("successive", re.compile(r"barrier_(\d+)")), ("instability", re.compile(r"instability_(\d+)")),
           ("hessian", re.compile(r"hessian_(\d+)")), ("perturb", re.compile(r"perturb_(\d+)_([a-z]+)_(.+)")),
           ("prune_check", re.compile(r"prune_check_(\d+)_(.+)")), ("pair", re.compile(r"pair_(.+)__(.+)"))]


def replicate_dir(replicate: int) -> str:
    return REPLICATE_DIR.format(replicate)


def stage_file(stage: str) -> str:
    """The file name of a stage inside its replicate's folder."""
    if not stage or "/" in stage or stage.startswith("."):
        raise ValueError(f"bad stage name {stage!r}")
    return f"{stage}.h5"


def temporary_file(name: str, pid: int, host: str = "") -> str:
    """The hidden name a file is written under before it is renamed to ``name``, by process
    ``pid`` on machine ``host`` (so a folder shared by a cluster's nodes tells whose it is)."""
    return f".{name}.{host}.{pid}{TEMPORARY_SUFFIX}" if host else f".{name}.{pid}{TEMPORARY_SUFFIX}"


# ---------------------------------------------------------------- networks


def level_stage(level: int, baseline: str | None = None) -> str:
    """Stage name of a trunk level (``level_3``) or of a baseline at it (``level_3_reinit``)."""
    return f"level_{level}" if baseline is None else f"level_{level}_{baseline}"


def parse_level_stage(stage: str) -> tuple[int, str | None] | None:
    """``(level, baseline)`` of a level stage name, None for other stages."""
    match = _LEVEL.fullmatch(stage)
    if match is None or (match[2] is not None and match[2] not in BASELINES):
        return None
    return int(match[1]), match[2]


def sibling_stage(level: int, copy: int) -> str:
    """Copy ``copy`` of level ``level`` trained from its start with other data-order seeds."""
    return f"sibling_{level}_{copy}"


def perturbed_stage(level: int, direction: str, size: float) -> str:
    """Level ``level`` trained from a start perturbed by ``size`` along ``direction``."""
    return f"perturbed_{level}_{direction}_{size:g}"


def pruned_stage(level: int, fraction: float, copy: int | None = None) -> str:
    """Level ``level``'s final weights pruned by ``fraction`` in one iteration, retrained:
    by magnitude, or with random mask ``copy`` (0, 1, ...)."""
    return f"pruned_{level}_{fraction:g}" + ("" if copy is None else f"_random{copy}")


# ---------------------------------------------------------------- measurements


def settings_json(settings: dict[str, Any]) -> str:
    """The one serialisation of a measurement's settings: sorted keys, no whitespace."""
    return json.dumps(settings, sort_keys=True, separators=(",", ":"))


def settings_id(settings: dict[str, Any]) -> str:
    """8 hex digits of sha256 over :func:`settings_json`."""
    return hashlib.sha256(settings_json(settings).encode()).hexdigest()[:8]


def measurement_stage(kind: str, level: int | None, settings: dict[str, Any]) -> str:
    """``<kind>_<level>_<id>`` (or ``<kind>_<id>`` without a level) for these settings."""
    if not re.fullmatch(r"[a-z][a-z_]*[a-z]", kind):
        raise ValueError(f"bad measurement kind {kind!r}")
    where = "" if level is None else f"_{level}"
    return f"{kind}{where}_{settings_id(settings)}"


@dataclass(frozen=True)
class MeasurementName:
    """What a measurement stage's name says: its kind, level (None if of no one level) and id."""

    kind: str
    level: int | None
    settings_id: str


def parse_measurement_stage(stage: str) -> MeasurementName | None:
    """The parts of a :func:`measurement_stage` name; None for any other stage."""
    match = _MEASUREMENT.fullmatch(stage)
    if match is None or parse_level_stage(stage) is not None:
        return None
    return MeasurementName(match[1], None if match[2] is None else int(match[2]), match[3])


def legacy_kind(stage: str) -> tuple[str, int | None, tuple[str, ...]] | None:
    """``(kind, level, other parts)`` of a measurement file named in the layout before
    settings ids (e.g. ``hessian_3``), None for any other stage."""
    if parse_measurement_stage(stage) is not None:
        return None
    for kind, pattern in _LEGACY:
        match = pattern.fullmatch(stage)
        if match:
            level = None if kind == "pair" else int(match[1])
            return kind, level, match.groups()[0 if kind == "pair" else 1:]
    return None


# ---------------------------------------------------------------- beside the runs


def scores_file(score: str, score_id: str) -> str:
    """``<score>_<id>.h5`` inside :data:`SCORES_DIR` (``score_id``: see imp.scores)."""
    return f"{score}_{score_id}.h5"


def sweep_manifest(name: str) -> str:
    """``<name>.json`` inside :data:`SWEEPS_DIR`: the run ids of a sweep, for ``lth ls``."""
    return f"{name}.json"
