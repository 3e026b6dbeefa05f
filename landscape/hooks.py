"""What ``lth run`` measures after each IMP level, and the same on a finished run.

:func:`level_hooks` turns a run's ``[landscape]`` section into hooks for
:func:`imp.trunk.run_imp`; :func:`measure_run` applies the same measurements to the
finished levels of an existing run (``lth barrier``, ``lth perturb``).
"""

from collections.abc import Iterable

import torch

from imp import store
from imp.config import Config
from imp.data import Dataset
from imp.results import levels_done
from imp.trunk import LevelDone, LevelHook
from landscape.measure import Measurements, claim_settings
from landscape.spectra import measure_hessian, prune_check


def wanted(config: Config) -> bool:
    ls = config.landscape
    return bool(ls.successive or ls.siblings or ls.perturb_sizes or ls.hessian or ls.prune_check)


def measure_level(config: Config, data: Dataset, run: store.RunDir, replicate: int, level: int) -> None:
    """Everything ``config.landscape`` asks for that becomes possible once ``level`` is done."""
    measurements = Measurements(config, data, run, replicate)
    if config.landscape.successive and level >= 1:
        measurements.successive(level - 1)
    _at(measurements, config, level)


def _at(measurements: Measurements, config: Config, level: int) -> None:
    """Siblings and perturbations of ``level``, where the config asks for them there."""
    ls = config.landscape
    if ls.siblings and (not ls.sibling_levels or level in ls.sibling_levels):
        measurements.siblings(level, ls.siblings)
    if ls.perturb_sizes and (not ls.perturb_levels or level in ls.perturb_levels):
        for direction in ls.perturb_directions:
            for size in ls.perturb_sizes:
                measurements.perturb(level, direction, size)
    if (ls.hessian or ls.prune_check) and (not ls.hessian_levels or level in ls.hessian_levels):
        if ls.hessian:
            measure_hessian(measurements, level)
        for fraction in ls.prune_check:
            prune_check(measurements, level, fraction)


def level_hooks(config: Config, device: torch.device) -> list[LevelHook]:
    """Hooks for :func:`imp.trunk.run_imp` (none when the section asks for nothing)."""
    if not wanted(config):
        return []

    def hook(done: LevelDone) -> None:
        claim_settings(done.run, done.config, device)
        measure_level(done.config, done.data, done.run, done.replicate, done.level)

    return [hook]


def measure_run(config: Config, data: Dataset, run: store.RunDir, device: torch.device,
                levels: Iterable[int] | None = None) -> None:
    """Measure the finished levels (all, or ``levels``) of every replicate of ``run``."""
    claim_settings(run, config, device)
    chosen = None if levels is None else set(levels)
    for replicate in run.replicates():
        done = levels_done(run, replicate)
        for level in range(done):
            if chosen is not None and level not in chosen:
                continue
            measurements = Measurements(config, data, run, replicate)
            if config.landscape.successive and level + 1 < done:
                measurements.successive(level)
            _at(measurements, config, level)
