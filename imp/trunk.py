"""The IMP driver: the dense level 0, then pruning levels 1..L, with baselines beside them.

Iterative magnitude pruning (Frankle & Carbin 2019; with rewinding, Frankle et al. 2020;
learning-rate rewinding and fine-tuning, Renda et al. 2020), per replicate:

* **Level 0** trains the dense network from its seeded initialisation (or from a start
  point given by a pre-training phase) for the whole schedule ``T`` and saves the full
  state at step ``k = prune.rewind``: the rewind point ``w_k``, weights and BatchNorm
  buffers, stored once in ``rewind.h5``.
* **Level L >= 1** prunes ``prune.fraction`` of the weights still kept by level L-1,
  by magnitude of level L-1's *final* weights (:func:`imp.pruning.magnitude_prune`),
  then retrains under the new mask from step ``k`` to ``T``:

  - ``rewind``: from ``mask_L * w_k``; the schedule and data order continue from step k;
  - ``lr_rewind``: from ``mask_L * w_final(L-1)`` with the schedule rewound to step k;
  - ``finetune``: from ``mask_L * w_final(L-1)`` for ``T - k`` steps at the rate the
    schedule ends with.

  The optimiser state always starts fresh. Every level uses the replicate's seeds, so
  levels see the same data order.
* **Baselines** at each level L >= 1 train exactly as the trunk's level L does, changing
  only the start: ``reinit`` keeps the trunk's mask on a fresh initialisation (seed
  derived from the replicate's init seed and L); ``random`` draws a random mask with
  the trunk's density per tensor (or globally, ``prune.random_strategy``); ``oneshot``
  prunes the dense level-0 weights by magnitude straight to the trunk's kept count. In
  ``rewind`` mode ``random`` and ``oneshot`` start from ``w_k``, otherwise from the dense
  final weights.

Every level and baseline is one stage file; a stage whose file exists is never
recomputed, so rerunning resumes after the last finished stage and a run asked for
more levels or baselines extends it. Hooks run after each trunk level (finished now or
earlier), which is where landscape measurements attach.

With ``train.batch_replicates`` the pending replicates (one or more) advance in lockstep
(:func:`run_lockstep`): at each level the missing trunk stages of all of them are trained
together by :func:`imp.batched.train_levels_batched`, then the missing baselines of all
of them together, then each replicate's hooks of that level run. Masks and starts are
computed as in sequential training, bit for bit; the stage files are the same, and the
weights agree with sequential training up to float rounding (see :mod:`imp.batched`).
"""

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from imp import legacy, pai
from imp.base import store
from imp.batched import train_levels_batched
from imp.base.config import Config, TrainConfig, canonical_json, platform_json, run_id
from imp.data import Dataset, load_dataset
from imp.datasets import DataNotFound, canonical_config
from imp.diet import diet_pretrain, store_subset, subset_data, subset_line
from imp.base.duration import Duration
from imp.base.errors import UserError
from imp.level import Start, copy_state, start_model, state_from_arrays, train_level
from imp.models import build_initial_model
from imp.pruning import (Mask, density, full_mask, magnitude_prune, oneshot_prune, prunable_tensors,
                         random_mask)
from imp.base.record import TrainedLevel
from imp.base.names import BASELINES, PRETRAIN_STAGE, REWIND_STAGE, level_stage
from imp.base.results import levels_done
from imp.base.runtime import DEFAULT_THREADS, set_threads
from imp.base.seeds import Seeds, derive_seed, generator
from imp.train import learning_rate, total_iterations

@dataclass(frozen=True)
class LevelDone:
    """What a hook receives after trunk level ``level`` of ``replicate`` is stored: with
    ``trained``, the level's record (just trained, or read once from its file)."""

    config: Config
    data: Dataset
    run: store.RunDir
    replicate: int
    level: int
    trained: TrainedLevel

    def path(self, level: int | None = None, baseline: str | None = None) -> Path:
        return self.run.stage_file(self.replicate, level_stage(self.level if level is None else level, baseline))


LevelHook = Callable[[LevelDone], None]
# A pre-training phase: for (config, data, replicate), the start of level 0 (which is also
# the rewind point) and a tree stored as the replicate's ``pretrain.h5``.
Pretrain = Callable[[Config, Dataset, int], tuple[Start, dict]]


@dataclass(frozen=True)
class Schedule:
    """The run's lengths in iterations, fixed once the data set is known."""

    iterations: int
    rewind_step: int
    iterations_per_epoch: int


def schedule(config: Config, data: Dataset) -> Schedule:
    """Convert the run's durations, rejecting a rewind point at or after the end of training.

    With data-diet pre-training the rewind point is the end of the pre-training."""
    iterations_per_epoch = data.iterations_per_epoch(config.data.batch_size)
    iterations = total_iterations(config.train, iterations_per_epoch)
    rewind = config.prune.rewind.iterations_at(iterations_per_epoch)
    if config.diet.pretrain != Duration():
        if rewind:
            raise UserError("prune.rewind and diet.pretrain both set the rewind point; with data-diet "
                            "pre-training leave prune.rewind at 0it")
        pretrain = config.diet.pretrain.iterations_at(iterations_per_epoch)
        if pretrain >= iterations:
            raise UserError(f"diet.pretrain = {config.diet.pretrain} ({pretrain} iterations) is not before "
                            f"the end of training (train.epochs = {config.train.epochs} = {iterations} "
                            "iterations); choose a shorter diet.pretrain")
        return Schedule(iterations, pretrain, iterations_per_epoch)
    if rewind >= iterations:
        raise UserError(
            f"prune.rewind = {config.prune.rewind} ({rewind} iterations) is not before the end of "
            f"training (train.epochs = {config.train.epochs} = {iterations} iterations at "
            f"{iterations_per_epoch} per epoch); choose a smaller prune.rewind")
    return Schedule(iterations, rewind, iterations_per_epoch)


def check(config: Config, data: Dataset) -> None:
    """Reject what does not fit the data: rewind or pre-training past the end of training
    (of a ``[subset]`` run's schedule, too), exclusion patterns that match no tensor, a diet
    subset larger than the training set."""
    subset = config.subset
    if subset.active:  # the schedule of the kept examples, before any score is computed for them
        kept = subset.kept(len(data.train))
        schedule(config, data.train_subset(torch.arange(kept), full_epochs=subset.budget == "iterations"))
    else:
        schedule(config, data)
    prunable_tensors(build_initial_model(config, data, 0), config.prune.exclude,
                     config.prune.layer_fractions)
    diet = config.diet
    if diet.size + diet.offset > len(data.train):
        raise UserError(f"diet.size ({diet.size}) + diet.offset ({diet.offset}) is larger than the "
                        f"training set ({len(data.train)} examples); choose a smaller diet.size")


def finetune_config(config: Config, plan: Schedule) -> TrainConfig:
    """The training config of fine-tuning: constant at the rate the schedule ends with."""
    final = learning_rate(plan.iterations - 1, config.train, plan.iterations_per_epoch)
    return dataclasses.replace(config.train, lr=final, schedule="constant", milestones=(),
                               warmup=Duration())


def stages_planned(config: Config) -> list[str]:
    """Every stage one replicate of ``config`` needs, in the order they are made."""
    names = [REWIND_STAGE, level_stage(0)]
    if config.diet.pretrain != Duration():
        names.insert(0, PRETRAIN_STAGE)
    for level in range(1, config.prune.levels + 1):
        names += [level_stage(level)] + [level_stage(level, b) for b in config.prune.baselines]
    return names


class Job(NamedTuple):
    """One network a replicate trains: its stage, start, mask, schedule and rewind snapshot."""

    stage: str
    start: Start
    mask: Mask
    train_config: TrainConfig
    snapshot_at: int | None = None


class Replicate:
    """One replicate's trunk and baselines: each stage computed only if its file is missing."""

    def __init__(self, config: Config, data: Dataset, run: store.RunDir, replicate: int, *,
                 pretrain: Pretrain | None = None, progress: bool = False,
                 report: Callable[[str], None] | None = None):
        self.config, self.data, self.run, self.replicate = config, data, run, replicate
        self.plan = schedule(config, data)
        self.seeds = Seeds.from_config(config.train, replicate)
        self.pretrain, self.progress, self.report = pretrain, progress, report
        self.config_json = canonical_json(config)
        self.train_config = (finetune_config(config, self.plan) if config.prune.retrain == "finetune"
                             else config.train)
        self._names: list[str] | None = None  # the model's state names in registration order
        self._checked: dict[str, TrainedLevel] = {}  # stages read by check_start, each handed out once

    # ------------------------------------------------------------ stages

    def run_levels(self, hooks: Iterable[LevelHook] = ()) -> None:
        hooks = list(hooks)
        dense = self.level(0)
        self._after(dense, 0, hooks)
        previous = dense
        for level in range(1, self.config.prune.levels + 1):
            current = self.level(level, previous)
            for baseline in self.config.prune.baselines:
                self.baseline(level, baseline, current, dense)
            self._after(current, level, hooks)
            previous = current

    def _after(self, trained: TrainedLevel, level: int, hooks: list[LevelHook]) -> None:
        for hook in hooks:
            hook(LevelDone(self.config, self.data, self.run, self.replicate, level, trained))

    def read(self, stage: str, arrays: bool = True) -> TrainedLevel:
        """A network stage of this replicate (a level, a baseline, a measurement's copy).

        A network with a NaN or infinite weight is refused: it is never pruned, retrained
        from or measured. Its mask and weights come in the model's registration order, as
        those of a level just trained do (HDF5 returns names sorted): the random baseline
        draws tensor by tensor and pruning breaks ties by position, so a resumed run must
        see the order an uninterrupted one does."""
        if arrays is True and stage in self._checked:  # read whole by run_imp's check: not again
            return self._checked.pop(stage)
        path = self.run.stage_file(self.replicate, stage)
        trained = TrainedLevel.read(path, arrays=arrays)
        broken = trained.nonfinite()
        if broken:  # stored by an earlier version, which did not stop diverged training
            raise UserError(f"{path} holds non-finite weights ({broken[0]}): its training diverged; delete it "
                            "and rerun with a lower train.lr")
        order = self._order()
        return dataclasses.replace(trained, mask=_ordered(trained.mask, order),
                                   weights=_ordered(trained.weights, order))

    def _order(self) -> list[str]:
        if self._names is None:  # from the model on the meta device: names without initialising it
            self._names = list(legacy.names_model(self.config).state_dict())
        return self._names

    def check_start(self) -> None:
        """Read (and so check: finite, in order) what pending work starts from -- level 0 and
        the last finished level -- keeping them for the first :meth:`read` of each."""
        done = levels_done(self.run, self.replicate)
        for level in sorted({0, done - 1}) if done else ():
            stage = level_stage(level)
            self._checked[stage] = self.read(stage)

    def level(self, level: int, previous: TrainedLevel | None = None) -> TrainedLevel:
        """Trunk level ``level``: trained now (its record is passed on, not read back), or stored."""
        job = self.level_job(level, previous)
        if job is not None:
            return self._train(job)
        return self.read(level_stage(level))

    def level_job(self, level: int, previous: TrainedLevel | None = None) -> Job | None:
        """What trunk level ``level`` trains, or None if it is stored; ``previous`` is level
        ``level - 1``. For level 0 the pre-training phase, if any, runs first."""
        stage = level_stage(level)
        if self.run.has_stage(self.replicate, stage):
            return None
        if level == 0:
            return self._dense_job()
        return Job(stage, self.start_after(previous), self.nonempty(self.prune(previous), stage),
                   self.train_config)

    def nonempty(self, mask: Mask, stage: str) -> Mask:
        """``mask``, unless it prunes every weight of a tensor: then the network is cut in two
        (its output no longer depends on its input) and the stage is refused, unless
        ``prune.allow_empty_layers``."""
        empty = [name for name, keep in mask.items() if not bool(keep.any())]
        if empty and not self.config.prune.allow_empty_layers:
            raise UserError(f"replicate {self.replicate} {stage} would prune every weight of {empty[0]} "
                            f"({len(empty)} tensor(s) emptied, at density {density(mask):.3%}); stop at fewer "
                            "prune.levels or a smaller prune.fraction, or set prune.allow_empty_layers = true")
        return mask

    def baseline(self, level: int, baseline: str, trunk: TrainedLevel, dense: TrainedLevel) -> None:
        """Baseline ``baseline`` of level ``level``: trained now and stored, unless stored."""
        job = self.baseline_job(level, baseline, trunk, dense)
        if job is not None:
            self._train(job)

    def baseline_job(self, level: int, baseline: str, trunk: TrainedLevel, dense: TrainedLevel) -> Job | None:
        """What baseline ``baseline`` of level ``level`` trains, or None if it is stored;
        ``trunk`` is trunk level ``level`` and ``dense`` level 0."""
        stage = level_stage(level, baseline)
        if self.run.has_stage(self.replicate, stage):
            return None
        prune = self.config.prune
        mask = trunk.mask
        if baseline == "reinit":
            model = build_initial_model(self.config, self.data, derive_seed(self.seeds.init, "reinit", level))
            start = Start(copy_state(model), self.plan.rewind_step)
        else:
            if baseline == "random":
                mask = random_mask(mask, generator(self.seeds.init, "random_mask", level),
                                   layerwise=prune.random_strategy == "layerwise")
            elif baseline == "oneshot":
                mask = oneshot_prune(dense.weights, dense.mask, mask, prune.rule, prune.layer_fractions)
            elif baseline in pai.METHODS:  # pruned at the rewind point, every weight kept, in one go
                rewind = self.rewind_point()
                model = start_model(self.config, self.data, self.seeds, rewind, dense.mask)
                mask = pai.pai_mask(baseline, model, self.data, dense.mask, mask, prune.rule,
                                    prune.layer_fractions, generator(self.seeds.init, "pai", baseline, level))
            else:
                raise ValueError(f"unknown baseline {baseline!r}; choose from {BASELINES}")
            start = self.start_after(dense)
        return Job(stage, start, self.nonempty(mask, stage), self.train_config)

    def _dense_job(self) -> Job:
        model = build_initial_model(self.config, self.data, self.seeds.init)
        start = Start(copy_state(model), 0)
        if self.pretrain is not None:
            start = self._pretrained()
        if self.plan.rewind_step < start.step:
            raise UserError(f"the rewind point (step {self.plan.rewind_step}) is before the "
                            f"pre-trained start point (step {start.step})")
        names = prunable_tensors(model, self.config.prune.exclude, self.config.prune.layer_fractions)
        return Job(level_stage(0), start, full_mask(start.state, names), self.config.train,
                   snapshot_at=self.plan.rewind_step)

    def _pretrained(self) -> Start:
        """The pre-trained start of level 0: stored, or computed now and stored with its weights."""
        if self.run.has_stage(self.replicate, PRETRAIN_STAGE):  # level 0 was killed: reuse it
            stored = store.read_h5(self.run.stage_file(self.replicate, PRETRAIN_STAGE), skip=("scores",))
            if "weights" in stored:
                return Start(state_from_arrays(stored["weights"]), int(stored["step"]))
        start, tree = self.pretrain(self.config, self.data, self.replicate)
        self.write(PRETRAIN_STAGE, {**tree, "weights": start.state})
        if self.report is not None:
            self.report(f"replicate {self.replicate} pre-training: {start.step} iterations on "
                        f"{len(tree.get('positions', ()))} examples ({tree.get('subset', 'custom')})")
        return start

    def _train(self, job: Job) -> TrainedLevel:
        trained, snapshot = train_level(self.config, self.data, self.seeds, job.start, job.mask,
                                        train_config=job.train_config, snapshot_at=job.snapshot_at,
                                        progress=self.progress, label=f"replicate {self.replicate} {job.stage}")
        return self.store_trained(job, trained, snapshot)

    def store_trained(self, job: Job, trained: TrainedLevel, snapshot: dict | None) -> TrainedLevel:
        """Write a trained job's stage (and the rewind point it snapshotted), report it, and
        return its record as stored."""
        if snapshot is not None and not self.run.has_stage(self.replicate, REWIND_STAGE):
            # stored before a kill that hit level 0's own write: the first one stands
            self.write(REWIND_STAGE, {"step": job.snapshot_at, "weights": snapshot})
        if job.stage == level_stage(0) and bool(self.data.noisy.any()):
            trained = trained.with_extra(label_noise=_label_noise(self.data))
        self.write(job.stage, trained.tree())
        if self.report is not None:
            self.report(f"replicate {self.replicate} {job.stage}: density {trained.density:.2%}, "
                        f"test accuracy {trained.final['test_accuracy']:.2%}, {trained.train_seconds:.0f} s")
        return trained

    def start_of(self, level: int) -> tuple[Start, Mask, TrainConfig]:
        """How a copy of finished trunk level ``level`` is trained: from the start point the
        trunk's levels >= 1 use (in ``rewind`` mode the masked rewind point at step k; for
        level 0 the rewind point itself), under its mask, with its schedule."""
        mask = self.read(level_stage(level)).mask
        if level == 0:
            return self.rewind_point(), mask, self.config.train
        return self.start_after(self.read(level_stage(level - 1))), mask, self.train_config

    def next_mask(self, level: int) -> Mask:
        """The mask level ``level + 1`` has or will have: level ``level``'s final weights pruned."""
        return self.prune(self.read(level_stage(level)))

    def prune(self, trained: TrainedLevel) -> Mask:
        """One level of the run's magnitude pruning applied to a trained level."""
        return magnitude_prune(trained.weights, trained.mask, self.config.prune.fraction,
                               self.config.prune.rule, self.config.prune.layer_fractions)

    def rewind_point(self) -> Start:
        """The stored rewind point ``w_k`` and its step k."""
        rewind = store.read_h5(self.run.stage_file(self.replicate, REWIND_STAGE))
        return Start(state_from_arrays(rewind["weights"]), int(rewind["step"]))

    def write(self, stage: str, tree: dict) -> None:
        store.write_h5(self.run.stage_file(self.replicate, stage), tree,
                       store.provenance(self.config_json, self.data.train.device, platform_json(self.config)))

    def start_after(self, previous: TrainedLevel) -> Start:
        """Where a level starts from, given the network it was pruned from."""
        if self.config.prune.retrain == "rewind":
            return self.rewind_point()
        return Start(dict(previous.weights), self.plan.rewind_step)


def run_lockstep(replicates: list[Replicate], hooks: Iterable[LevelHook] = ()) -> None:
    """:meth:`Replicate.run_levels` of several replicates (or one), level by level: the
    replicates missing a trunk level train it together (:func:`_train_together`), then the
    missing baselines of that level of every replicate train together, then each
    replicate's hooks of that level run."""
    hooks = list(hooks)
    trained: list[TrainedLevel | None] = [None] * len(replicates)
    for level in range(replicates[0].config.prune.levels + 1):
        jobs = [(replicate, replicate.level_job(level, previous)) for replicate, previous in zip(replicates, trained)]
        made = dict(zip((r.replicate for r, job in jobs if job is not None),
                        _train_together([(r, job) for r, job in jobs if job is not None])))
        trained = [made.get(replicate.replicate) or replicate.read(level_stage(level)) for replicate in replicates]
        if level == 0:
            dense = trained
        else:
            _train_together(_baseline_jobs(replicates, level, trained, dense))
        for replicate, current in zip(replicates, trained):
            replicate._after(current, level, hooks)


def _baseline_jobs(replicates: list[Replicate], level: int, trunk: list[TrainedLevel],
                   dense: list[TrainedLevel]) -> list[tuple[Replicate, Job]]:
    """The missing baselines of level ``level`` of each replicate, replicate by replicate
    in the order of ``prune.baselines``; ``trunk`` and ``dense`` hold each one's level
    ``level`` and level 0."""
    out = []
    for replicate, current, first in zip(replicates, trunk, dense):
        for baseline in replicate.config.prune.baselines:
            job = replicate.baseline_job(level, baseline, current, first)
            if job is not None:
                out.append((replicate, job))
    return out


def _train_together(pending: list[tuple[Replicate, Job]]) -> list[TrainedLevel]:
    """Train and store the jobs of one level (trunk or baselines, of one replicate or
    several), those that share their start step, schedule and rewind snapshot in one
    :func:`~imp.batched.train_levels_batched` call; returns the stored records, in order.

    A group of one trains alone, exactly as :meth:`Replicate.run_levels` would train it."""
    groups: dict[tuple, list[int]] = {}
    for index, (_, job) in enumerate(pending):
        groups.setdefault((job.start.step, job.train_config, job.snapshot_at), []).append(index)
    made: list[TrainedLevel | None] = [None] * len(pending)
    for indices in groups.values():
        for index, trained in zip(indices, _train_group([pending[i] for i in indices])):
            made[index] = trained
    return made


def _train_group(group: list[tuple[Replicate, Job]]) -> list[TrainedLevel]:
    """Train jobs that share their start step, schedule and snapshot step: one alone, more
    stacked; store each as its replicate stores a job it trained itself."""
    if len(group) == 1:
        replicate, job = group[0]
        return [replicate._train(job)]
    first, job = group[0]
    numbers = list(dict.fromkeys(str(replicate.replicate) for replicate, _ in group))
    label = (f"replicate{'s' if len(numbers) > 1 else ''} {', '.join(numbers)} "
             f"{', '.join(dict.fromkeys(j.stage for _, j in group))}")
    results = train_levels_batched(first.config, first.data, [r.seeds for r, _ in group],
                                   [j.start for _, j in group], [j.mask for _, j in group],
                                   train_config=job.train_config, snapshot_at=job.snapshot_at,
                                   progress=first.progress, label=label)
    return [replicate.store_trained(job, trained, snapshot)
            for (replicate, job), (trained, snapshot) in zip(group, results)]


def _ordered(tensors: dict, order: list[str]) -> dict:
    """``tensors`` with the names in ``order`` first, in that order (any others after)."""
    return {**{name: tensors[name] for name in order if name in tensors}, **tensors}


def _label_noise(data: Dataset) -> dict:
    return {
        "index": data.train.index[data.noisy],  # positions in the original training set
        "clean_labels": data.clean_labels[data.noisy],
        "noisy_labels": data.train.y.cpu()[data.noisy],
    }


def is_complete(run: store.RunDir, config: Config, replicate: int) -> bool:
    return all(run.has_stage(replicate, stage) for stage in stages_planned(config))


def run_imp(config: Config, out: str | Path, data_root: Path, device: torch.device, *,
            replicates: int = 1, progress: bool = False, wait: bool = False,
            hooks: Iterable[LevelHook] = (), pretrain: Pretrain | None = None,
            report: Callable[[str], None] | None = None,
            threads: int | None = DEFAULT_THREADS) -> store.RunDir:
    """Run (or resume, or extend) the IMP run of ``config`` under ``out``.

    Holds the run's lock throughout. Loads the data only when a stage is missing or
    hooks are given; checks the config against the data (rewind point, exclusion
    patterns) before anything is written. Sets torch's CPU threads to ``threads``
    (:mod:`imp.base.runtime`'s policy; None leaves them as they are).
    """
    if threads is not None:
        set_threads(threads)
    config = run_config(config, out, data_root)
    hooks = list(hooks)
    if pretrain is None and config.diet.pretrain != Duration():
        pretrain = diet_pretrain(out, progress)
    run = store.RunDir(out, run_id(config))
    with store.RunLock(run, wait=wait):
        run.remove_partial_files()
        store.check_files(run)  # a damaged stage file is never taken for a finished stage
        legacy.check_run(run)  # nor are parameters named by an earlier version: `lth upgrade`
        pending = [r for r in range(replicates) if not is_complete(run, config, r)]
        data = load_dataset(config.data, data_root, device) if pending or hooks else None
        chosen = None
        if data is not None:
            check(config, data)
            check_data(run, data)
            full = len(data.train)
            data, chosen = subset_data(config, data, run, out, progress)
            if config.subset.active and report:
                report(subset_line(config, data, full))
        all_replicates = [Replicate(config, data, run, r, pretrain=pretrain, progress=progress, report=report)
                          for r in range(replicates)] if data is not None else []
        for replicate in all_replicates:  # what the pending work starts from is sound, before run.h5 changes
            if replicate.replicate in pending:
                replicate.check_start()
        store.create_run(run, canonical_json(config), device, extra=_plan(run, config, replicates, data_root, data),
                         platform=platform_json(config))
        store_subset(run, chosen, device)
        together = pending if config.train.batch_replicates else []
        if together:
            run_lockstep([all_replicates[replicate] for replicate in together], hooks)
        for replicate in all_replicates:
            if replicate.replicate not in together:
                replicate.run_levels(hooks)
    return run


def run_config(config: Config, out: str | Path, data_root: Path) -> Config:
    """``config`` written the one way its run id is made from (equal work, one id: "12it"
    and "1ep" alike at 12 iterations per epoch; :func:`imp.datasets.canonical_config`).
    A run under ``out`` still stored under the id of ``config`` as written (by a version
    before equal work had one id) is refused, naming the `lth upgrade` that moves it.
    Without the data (its size unknown) a run stored under the id as written is that run."""
    written = run_id(config)
    try:
        config = canonical_config(config, data_root)
    except DataNotFound:
        if store.is_run(Path(out) / written):  # a finished run needs no data: as written, it is stored
            return config
        raise
    now = run_id(config)
    if now != written and store.is_run(Path(out) / written) and not store.is_run(Path(out) / now):
        raise UserError(f"this run is stored under {Path(out) / written}, its id before equal durations had one "
                        f"id; `lth upgrade {written} --out {out}` moves it to {now}, then run again")
    return config


def check_data(run: store.RunDir, data: Dataset) -> None:
    """Refuse data other than the data ``run`` was trained on (its fingerprint in ``run.h5``
    differs): ``data.root`` is not part of the run id, so a changed folder must not pass."""
    attributes = store.read_run(run) if store.is_run(run.path) else {}
    stored = str(attributes.get(DATA_FINGERPRINT, ""))
    if stored and data.fingerprint and stored != data.fingerprint:
        root = attributes.get("data_root", "")
        raise UserError(f"run {run.run_id} was trained on other data than this {data.name} (fingerprint "
                        f"{stored}, now {data.fingerprint}; it last read {root or 'the bundled data'}): "
                        "point data.root at the data it was trained on, or use another --out folder")


DATA_FINGERPRINT = "data_fingerprint"  # run.h5 attribute: imp.data.fingerprint of the data trained on


def _plan(run: store.RunDir, config: Config, replicates: int, data_root: Path, data: Dataset | None) -> dict:
    """The run's plan in ``run.h5``: the most levels and replicates ever asked for, every
    baseline ever asked for, the data root last read and the fingerprint of its data (an
    older run without one takes that of the first data it reads)."""
    old = store.read_run(run) if store.is_run(run.path) else {}
    baselines = set(filter(None, str(old.get("baselines", "")).split(","))) | set(config.prune.baselines)
    fingerprint = data.fingerprint if data is not None and data.fingerprint else old.get(DATA_FINGERPRINT, "")
    # absolute, so that a later command from another folder finds it
    root = str(Path(data_root).resolve()) if data is not None or "data_root" not in old else str(old["data_root"])
    return {
        DATA_FINGERPRINT: str(fingerprint),
        "data_root": root,  # the folder the data was last read from (not one never read)
        "planned_levels": max(int(old.get("planned_levels", 0)), config.prune.levels),
        "planned_replicates": max(int(old.get("planned_replicates", 0)), replicates),
        "baselines": ",".join(b for b in BASELINES if b in baselines),
    }
