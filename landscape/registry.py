"""The measurement registry: one entry per measurement of a run's levels.

A :class:`Measurement` says what it is called, which settings it is asked for with at a
level (each set of settings is one *variant*, stored under its own id), how to compute
its tree from a finished level, and which summary columns it adds to ``lth show``. Its
registry entry then gives it, with nothing more to write elsewhere:

* its config keys under ``[landscape]`` (``keys``; the built-in measurements' keys are
  fields of :class:`imp.base.config.LandscapeConfig`);
* its hook in ``lth run`` (:mod:`landscape.hooks` runs every entry after each level);
* a subcommand ``lth <kind> RUN`` when ``command`` is set (:mod:`runs.lth.measure`);
* its loader for analysis: every measurement file records its kind, level, settings and
  columns (:func:`store_measurement`), which :mod:`analysis.load` reads generically.

**Adding a measurement**: write a module with a function ``compute(context, level,
settings) -> tree`` (see :mod:`landscape.distance`), and add one :class:`Measurement`
line to :data:`REGISTRY` below.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from imp.base import names, store
from imp.base.config import LandscapeConfig, register_landscape_key
from imp.base.errors import UserError
from imp.base.results import Measured, read_measured
from landscape import distance, groups, measure, ntk, spectra

Tree = dict[str, Any]


@dataclass(frozen=True)
class Measurement:
    """One measurement of a level (or of levels L and L+1, with ``span = 1``)."""

    kind: str  # its stage names start with it; its subcommand, if any, is `lth <kind>`
    help: str
    variants: Callable[[LandscapeConfig, int], list[dict]]  # settings asked for at a level ([] = none)
    compute: Callable[[measure.Context, int, dict], Tree]
    columns: Callable[[Tree], dict[str, float]] = lambda tree: {}
    span: int = 0  # the measurement of level L needs levels L .. L + span finished
    keys: dict[str, tuple[type, Any]] = field(default_factory=dict)  # extra [landscape] keys: (type, default)
    command: bool = False  # `lth <kind> RUN [--levels ...]` turns on its first key and measures
    whole_training_set: bool = False  # ranks the whole training set by score: not for a [subset] run


def _at(levels: tuple[int, ...], level: int) -> bool:
    return not levels or level in levels


def _successive(ls: LandscapeConfig, level: int) -> list[dict]:
    return measure.curve_variants(ls) if ls.successive else []


def _instability(ls: LandscapeConfig, level: int) -> list[dict]:
    """Per-example midpoint barriers are measured raw and aligned, not under REPAIR."""
    if not ls.siblings or not _at(ls.sibling_levels, level):
        return []
    out = []
    for curve in measure.curve_variants(ls):
        per_example = ls.per_example and not curve.get("repair")
        settings = {**curve, "copies": ls.siblings, "per_example": per_example}
        out.append({**settings, "tau": ls.tau} if per_example else settings)
    return out


def _perturb(ls: LandscapeConfig, level: int) -> list[dict]:
    if not _at(ls.perturb_levels, level):
        return []
    return [{**curve, "direction": direction, "size": size}
            for curve in measure.curve_variants(ls) for direction in ls.perturb_directions for size in ls.perturb_sizes]


def _hessian(ls: LandscapeConfig, level: int) -> list[dict]:
    return [spectra.hessian_settings(ls)] if ls.hessian and _at(ls.hessian_levels, level) else []


def _prune_check(ls: LandscapeConfig, level: int) -> list[dict]:
    if not ls.prune_check or not _at(ls.hessian_levels, level):
        return []
    return [spectra.check_settings(ls)]


REGISTRY: list[Measurement] = [
    Measurement("successive", "error barrier between levels L and L+1", _successive, measure.successive,
                measure.successive_columns, span=1),
    Measurement("instability", "barriers between sibling copies of level L", _instability, measure.instability,
                measure.instability_columns),
    Measurement("perturb", "barrier between level L and a copy trained from a perturbed start", _perturb,
                measure.perturb, measure.perturb_columns),
    Measurement("hessian", "Hessian spectrum of level L and the prune limit it predicts", _hessian,
                spectra.measure_hessian, spectra.hessian_columns),
    Measurement("prune_check", "level L pruned once by each fraction and retrained", _prune_check,
                spectra.prune_check, spectra.prune_check_columns),
    Measurement("distance", "weight distance and mask overlap between levels L and L+1", distance.variants,
                distance.compute, distance.columns, span=1, keys=distance.KEYS, command=True),
    Measurement("groups", "barriers between sibling copies of level L on the lowest- and highest-score examples",
                groups.variants, groups.compute, groups.columns, keys=groups.KEYS, command=True,
                whole_training_set=True),
    Measurement("ntk", "velocity of the empirical NTK on low-score, high-score and random examples while level L "
                "trains", ntk.variants, ntk.compute, ntk.columns, keys=ntk.KEYS, command=True,
                whole_training_set=True),
]
PAIR = "pair"  # `lth barrier --between`: a measurement of two named networks, of no one level

for _measurement in REGISTRY:
    for _name, (_type, _default) in _measurement.keys.items():
        register_landscape_key(_name, _type, _default)


def by_kind(kind: str) -> Measurement:
    return next(m for m in REGISTRY if m.kind == kind)


def check(config, levels: range) -> None:
    """Refuse, before anything trains, a measurement the run cannot have: one that ranks
    the whole training set, on a run that trains on a ``[subset]`` of it."""
    if not config.subset.active:
        return
    for measurement in REGISTRY:
        if measurement.whole_training_set and any(measurement.variants(config.landscape, level) for level in levels):
            raise UserError(f"landscape.{next(iter(measurement.keys))}: the {measurement.kind} measurement ranks the "
                            "whole training set by score and is not supported on a run with subset.keep < 1 yet; "
                            "measure a run on the whole training set")


def wanted(ls: LandscapeConfig, levels: range) -> bool:
    """Whether the config asks for any measurement at any of ``levels``."""
    return any(m.variants(ls, level) for m in REGISTRY for level in levels)


def store_measurement(context: measure.Context, kind: str, level: int | None, settings: dict,
                      compute: Callable[[], Tree], columns: Callable[[Tree], dict] = lambda tree: {}) -> Measured:
    """The measurement ``kind`` of ``level`` with ``settings``: reused when stored, else
    computed and written under its settings id with its self-description."""
    stage = names.measurement_stage(kind, level, settings)
    if not context.has(stage):
        started = time.perf_counter()
        tree = compute()
        tree.update({"measurement": kind, "level": -1 if level is None else level,
                     "settings": names.settings_json(settings), "settings_id": names.settings_id(settings),
                     names.COLUMNS_GROUP: columns(tree)})
        context.write(stage, tree)
        if context.report is not None:
            where = "" if level is None else f" level {level}"
            context.report(f"replicate {context.replicate}{where} {kind} [{names.settings_id(settings)}]: "
                           f"measured in {time.perf_counter() - started:.0f} s")
    return read_measured(context.run, context.replicate, stage)


def run_measurement(context: measure.Context, measurement: Measurement, level: int) -> list[Measured]:
    """Every variant of ``measurement`` the config asks for at ``level`` (stored or made now)."""
    done = []
    for settings in measurement.variants(context.config.landscape, level):
        done.append(store_measurement(context, measurement.kind, level, settings,
                                      lambda: measurement.compute(context, level, settings), measurement.columns))
    return done


def measured_all(run: store.RunDir, replicate: int, ls: LandscapeConfig, levels: range) -> bool:
    """Whether every measurement ``ls`` asks for at ``levels`` whose levels are finished is
    stored (one that needs an unfinished level does not count against it)."""
    return all(run.has_stage(replicate, names.measurement_stage(m.kind, level, settings))
               for m in REGISTRY for level in levels if ready(run, replicate, m, level)
               for settings in m.variants(ls, level))


def ready(run: store.RunDir, replicate: int, measurement: Measurement, level: int) -> bool:
    """Whether the levels ``measurement`` of ``level`` needs are finished."""
    return all(run.has_stage(replicate, names.level_stage(level + i)) for i in range(measurement.span + 1))
