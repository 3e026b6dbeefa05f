"""What ``lth run`` measures after each IMP level, and the same on a finished run.

:func:`level_hooks` turns a run's ``[landscape]`` section into hooks for
:func:`imp.trunk.run_imp`; :func:`measure_run` applies the same measurements to the
finished levels of an existing run (``lth barrier``, ``lth perturb``, ``lth hessian``
and the registry's own subcommands). Both go through :data:`landscape.registry.REGISTRY`.
"""

from collections.abc import Callable, Iterable

import torch

from imp.base import store
from imp.base.config import Config
from imp.data import Dataset
from imp.base.record import TrainedLevel
from imp.base.results import Measured, levels_done
from imp.trunk import LevelDone, LevelHook
from landscape.measure import Context
from landscape.registry import REGISTRY, check, ready, run_measurement, wanted

Report = Callable[[str], None]


def measure_level(config: Config, data: Dataset, run: store.RunDir, replicate: int, level: int,
                  trained: TrainedLevel | None = None, report: Report | None = None) -> list[Measured]:
    """Everything ``config.landscape`` asks for that becomes possible once ``level`` is done:
    each measurement of level ``level - span`` (its last needed level is ``level``).
    ``trained`` is that level's record, when the caller has it at hand."""
    context, done = None, []
    for measurement in REGISTRY:
        target = level - measurement.span
        if target >= 0 and measurement.variants(config.landscape, target):
            context = context or Context(config, data, run, replicate, {level: trained} if trained else None,
                                         report)
            done += run_measurement(context, measurement, target)
    return done


def level_hooks(config: Config, device: torch.device, report: Report | None = None) -> list[LevelHook]:
    """Hooks for :func:`imp.trunk.run_imp` (none when the section asks for nothing);
    ``report`` takes a line per network trained and measurement made."""
    check(config, range(config.prune.levels + 1))
    if not wanted(config.landscape, range(config.prune.levels + 1)):
        return []

    def hook(done: LevelDone) -> None:
        measure_level(done.config, done.data, done.run, done.replicate, done.level, done.trained, report)

    return [hook]


def measure_run(config: Config, data: Dataset, run: store.RunDir, device: torch.device,
                levels: Iterable[int] | None = None, report: Report | None = None) -> list[Measured]:
    """Measure the finished levels (all, or ``levels``) of every replicate of ``run``; returns
    every measurement asked for (made now or found stored), so callers report exactly those."""
    chosen = None if levels is None else set(levels)
    check(config, range(max((levels_done(run, r) for r in run.replicates()), default=0)))
    plan = []
    for replicate in run.replicates():
        context = Context(config, data, run, replicate, report=report)
        for level in range(levels_done(run, replicate)):
            if chosen is None or level in chosen:
                plan += [(context, measurement, level) for measurement in REGISTRY
                         if ready(run, replicate, measurement, level)
                         and measurement.variants(config.landscape, level)]
    for context, measurement, level in plan:  # every network is sound before anything is stored
        for needed in range(level, level + measurement.span + 1):
            context.level(needed)  # read (and checked) once: the measurements take it from here
    done = []
    for context, measurement, level in plan:
        done += run_measurement(context, measurement, level)
    return done
