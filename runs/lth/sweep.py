"""Sweeps: a grid of runs from one TOML file, run sequentially, in local worker
processes, or as Slurm jobs through submitit.

A sweep file is a run config plus a ``[sweep]`` table whose keys are ``section.key``
axes with a list of values each, and optionally ``replicates``::

    [sweep]
    "prune.rewind" = ["0it", "200it", "800it"]
    "diet.subset" = ["easy", "random"]
    replicates = 2

Keys joined by commas make one linked axis whose values are lists, one value per key,
for settings that only make sense together::

    "diet.subset,diet.size" = [["easy", 500], ["random", 500], ["all", 0]]

The grid is the product of the axes, in the order written. Every point is an ordinary
run (its own id); running the sweep again resumes it, since finished stages are never
recomputed. A run that another process is writing (its lock is held, on any machine
sharing the file system) is skipped and reported, never written twice. The sweep's
list of runs (with each point's label, e.g. ``rewind=500it``, and its Slurm job) is
kept in ``OUT/sweeps/<name>.json`` for ``lth ls``.

An optional ``[slurm]`` table holds the cluster's settings for ``--executor slurm``
(:mod:`runs.lth.slurm`)::

    [slurm]
    partition = "gpu"
    gpus_per_job = 1
    mem = "16G"
    setup = ["module load cuda/12.4", "source /shared/lth/.venv/bin/activate"]
    sbatch = { exclude = "node07" }
"""

import copy
import dataclasses
import itertools
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from imp.base.config import Config, apply_overrides, check_key, from_dict, read_toml, run_id, to_dict
from imp.base.errors import Terminated, UserError
from imp.base.names import SWEEPS_DIR, sweep_manifest


@dataclass(frozen=True)
class Sweep:
    name: str
    configs: list[Config]
    replicates: int
    labels: list[str] = dataclasses.field(default_factory=list)  # per point, e.g. "rewind=500it, lr=0.05"
    slurm: dict[str, Any] = dataclasses.field(default_factory=dict)  # the file's [slurm] table


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> Sweep:
    """Read a sweep file, set ``overrides`` (``section.key=value``) on its base config, and
    expand its grid, checking every axis and every point."""
    path = Path(path)
    raw = read_toml(path, "sweep file")
    grid = raw.pop("sweep", None)
    slurm = raw.pop("slurm", {})
    if not isinstance(slurm, dict):
        raise UserError(f"{path}: slurm must be a table of keys, e.g. [slurm] with partition = \"gpu\"")
    if isinstance(grid, dict):
        for override in overrides:  # --set: like `lth run`, on the file's base config
            key = override.partition("=")[0].strip()
            if any(key in (k.strip() for k in axis.split(",")) for axis in grid):
                raise UserError(f"--set {override}: {key} is an axis of the sweep; change its values in {path}")
        raw = apply_overrides(raw, overrides)
    if not isinstance(grid, dict):
        raise UserError(f"{path} has no [sweep] table; `lth run` takes plain run configs (`lth run {path}`), "
                        "a sweep file adds a [sweep] table of axes such as \"prune.rewind\" = [\"0it\", \"200it\"]")
    replicates = grid.pop("replicates", 1)
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise UserError(f"{path}: sweep.replicates must be a positive integer, got {replicates!r}")
    axes = [_axis(path, raw, axis, values) for axis, values in grid.items()]
    configs, labels = [], []
    for point in itertools.product(*(values for _, values in axes)):
        point_raw = copy.deepcopy(raw)
        settings = [(key, value) for (keys, _), values in zip(axes, point) for key, value in zip(keys, values)]
        for key, value in settings:
            section, name = key.split(".", 1)
            point_raw.setdefault(section, {})[name] = value
        try:
            configs.append(from_dict(point_raw))
        except UserError as error:
            at = ", ".join(f"{key} = {value!r}" for key, value in settings)
            raise UserError(f"{path}: {error}" + (f" (at the sweep point {at})" if at else "")) from None
        labels.append(", ".join(f"{key.split('.', 1)[1]}={_label(value)}" for key, value in settings))
    return Sweep(path.stem, configs, replicates, labels, slurm)


def _label(value: Any) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def _axis(path: Path, raw: dict, axis: str, values: Any) -> tuple[list[str], list[list[Any]]]:
    """Check one ``[sweep]`` entry; returns its keys and, per value, one value per key."""
    keys = [key.strip() for key in axis.split(",")]
    for key in keys:
        if "." not in key:
            raise UserError(f"{path}: sweep axis {key!r} must look like section.key, e.g. \"prune.rewind\"")
        try:
            check_key(key)
        except UserError as error:
            raise UserError(f"{path}, [sweep] table: {error}") from None
        section = key.split(".")[0]
        if not isinstance(raw.get(section, {}), dict):
            raise UserError(f"{path}: {section} must be a table of keys, e.g. [{section}]")
    if not isinstance(values, list) or not values:
        raise UserError(f"{path}: sweep axis {axis!r} needs a non-empty list of values, "
                        f"e.g. \"{axis}\" = [a, b]")
    if len(keys) == 1:
        return keys, [[value] for value in values]
    for value in values:
        if not isinstance(value, list) or len(value) != len(keys):
            raise UserError(f"{path}: the linked sweep axis {axis!r} needs lists of {len(keys)} values, "
                            f"one per key, e.g. [{', '.join('v' + str(i + 1) for i in range(len(keys)))}]; "
                            f"got {value!r}")
    return keys, values


def run_point(config_data: dict[str, Any], out: str, replicates: int, device: str, threads: int,
              silent: bool = False, gpu: bool = False) -> str:
    """Run (or resume) one point of a sweep in this process; returns how it ended.
    Its progress lines go to stderr, each starting with the run id, unless ``silent``
    (in a Slurm job they are its log). With ``gpu`` (a job that asked Slurm for GPUs) a
    GPU must be visible, and ``device = "auto"`` means it.

    The argument is plain data, so the same function runs in a worker process or a
    Slurm job.
    """
    from imp.data import resolve_root
    from imp.base.runtime import choose_device, set_threads
    from imp.base.store import RunDir, RunLocked, check_files
    from imp.trunk import run_imp
    from landscape.hooks import level_hooks

    config = from_dict(config_data)
    check_files(RunDir(out, run_id(config)))
    set_threads(threads)
    if gpu:
        from runs.lth.slurm import require_gpu

        require_gpu()
        device = "cuda" if device == "auto" else device
    chosen = choose_device(device)
    try:
        name = run_id(config)
        report = None if silent else lambda line: print(f"{name} {line}", file=sys.stderr, flush=True)  # noqa: E731
        run = run_imp(config, out, resolve_root(config.data.root, os.environ), chosen, replicates=replicates,
                      hooks=level_hooks(config, chosen, report), threads=threads, report=report)
    except RunLocked:
        return f"{run_id(config)}: skipped, another process is writing it"
    return f"{run.run_id}: done"


def write_manifest(sweep: Sweep, out: str | Path, jobs: dict[str, str] | None = None) -> Path:
    """The sweep's manifest: its runs, each point's label and, for Slurm, each run's job
    (``jobs``: run id -> job id; those of an earlier submission are kept for runs not
    submitted again)."""
    from imp.base.store import cannot_write

    path = Path(out) / SWEEPS_DIR / sweep_manifest(sweep.name)
    ids = [run_id(c) for c in sweep.configs]
    manifest = {"name": sweep.name, "replicates": sweep.replicates, "runs": ids,
                "labels": dict(zip(ids, sweep.labels))}
    if jobs is not None:
        before = _read_manifest(path).get("jobs", {}) if path.is_file() else {}
        manifest["jobs"] = {i: job for i, job in {**before, **jobs}.items() if i in ids}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(manifest, indent=1))
        os.replace(temporary, path)
    except OSError as error:
        raise cannot_write(path, error) from None
    return path


def read_manifests(out: str | Path) -> list[dict]:
    folder = Path(out) / SWEEPS_DIR
    return [_read_manifest(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(path.read_text())
        if isinstance(manifest, dict) and isinstance(manifest.get("runs"), list) and "name" in manifest:
            return manifest
        problem = "not a sweep manifest"
    except (OSError, UnicodeDecodeError, ValueError) as error:
        problem = str(error)
    raise UserError(f"cannot read {path} ({problem}); delete it and rerun `lth sweep` on its file to "
                    "write it again")


def _plain(config: Config) -> dict[str, Any]:
    return to_dict(config, defaults=True, platform=True)


def run_sweep(sweep: Sweep, out: str | Path, *, workers: int = 1, device: str = "auto",
              threads: int = 0, report: Callable[[str], None] = print, silent: bool = False) -> None:
    """Every point, in this process (``workers = 1``) or in that many worker processes.

    ``threads = 0`` divides the machine's cores between the workers. ``silent`` drops the
    runs' progress lines; ``report`` still gets one line per finished point.
    """
    from imp.base.runtime import available_cores

    write_manifest(sweep, out)
    threads = threads or max(1, available_cores() // max(workers, 1))
    arguments = [(_plain(c), str(out), sweep.replicates, device, threads, silent) for c in sweep.configs]
    if workers <= 1:
        for args in arguments:
            report(run_point(*args))
        return
    with get_context("spawn").Pool(workers) as pool:
        previous = signal.signal(signal.SIGTERM, _stop(pool))
        try:
            for line in pool.imap(_run_point, arguments):
                report(line)
            pool.close()  # the workers end by themselves, so what they hold (semaphores) is freed
            pool.join()
        finally:
            signal.signal(signal.SIGTERM, previous)


def _run_point(arguments: tuple) -> str:
    return run_point(*arguments)


def _stop(pool):
    """A SIGTERM handler that stops the workers (each gets SIGTERM; what they finished
    stays, as after any kill) and then the sweep, which a rerun resumes."""
    def stop(signum, frame):
        pool.terminate()
        raise Terminated("stopped by SIGTERM, and the sweep's workers with it; finished stages are kept, "
                         "rerun the sweep to resume")
    return stop


def submit_sweep(sweep: Sweep, out: str | Path, executor, *, device: str = "auto", threads: int = 1,
                 gpu: bool = False, chunk: int = 0, report: Callable[[str], None] = print,
                 in_queue: Callable[[list[str]], dict[str, str]] = lambda jobs: {}) -> list:
    """Submit the points with work left as job arrays to a submitit executor (Slurm, or
    its local executor), ``chunk`` tasks per array at most (0 = one). Points already
    finished, or queued or running under the sweep's earlier jobs, are not submitted
    again (``in_queue``: job id -> Slurm state of the jobs still queued). The job ids go
    into the manifest. Returns the jobs submitted now."""
    from runs.lth import slurm

    path = Path(out) / SWEEPS_DIR / sweep_manifest(sweep.name)
    earlier = _read_manifest(path).get("jobs", {}) if path.is_file() else {}
    queue = in_queue(list(earlier.values())) if earlier else {}
    labels = dict(zip((run_id(c) for c in sweep.configs), sweep.labels))
    todo = []
    for config in sweep.configs:
        name = run_id(config)
        label = slurm.point_name(name, labels)
        if finished(config, out, sweep.replicates):
            report(f"{label}: already finished, not submitted")
        elif queue.get(earlier.get(name, ""), "") in slurm.QUEUED | slurm.RUNNING:
            report(f"{label}: still {queue[earlier[name]].lower()} as job {earlier[name]}, not submitted again")
        else:
            todo.append(config)
    calls = [(_plain(c), str(Path(out).resolve()), sweep.replicates, device, threads, False, gpu) for c in todo]
    jobs = slurm.submit(executor, run_point, calls, chunk) if calls else []
    write_manifest(sweep, out, {run_id(c): str(job.job_id) for c, job in zip(todo, jobs)})
    for config, job in zip(todo, jobs):
        report(f"{slurm.point_name(run_id(config), labels)}: submitted as job {job.job_id}")
    return jobs


def check_points(sweep: Sweep, out: str | Path, report: Callable[[str], None] = print) -> Sweep:
    """Before any point trains: every point's data set loads (each distinct data section
    once, on the CPU) and its model can be built for it, so that a bad point is one line
    now, not an abort after the points before it have trained. Returns the sweep with each
    point written the one way its run id is made from (:func:`imp.trunk.run_config`), and
    each run once: points that are the same run (equal work written two ways) are said and
    merged."""
    from imp.data import load_dataset
    from imp.datasets import resolve_root
    from imp.legacy import names_model
    from imp.trunk import run_config

    loaded, configs, labels, ids = set(), [], [], {}
    for point, config in enumerate(sweep.configs, start=1):
        root = resolve_root(config.data.root, os.environ)
        data = json.dumps(to_dict(config.data), sort_keys=True)
        try:
            if data not in loaded:
                load_dataset(config.data, root, "cpu")
                loaded.add(data)
            canonical = run_config(config, out, root)
        except UserError as error:
            raise UserError(f"sweep point {run_id(config)}: {error}") from None
        names_model(config)
        same = ids.get(run_id(canonical))
        if same is not None:  # e.g. '1ep' and its iterations, or subset rules at subset.keep = 1
            report(f"sweep {sweep.name}: points {same} and {point} are the same run {run_id(canonical)}; "
                   "it runs once")
        else:
            ids[run_id(canonical)] = point
            configs.append(canonical)
            labels.append(sweep.labels[point - 1] if point <= len(sweep.labels) else "")
    return dataclasses.replace(sweep, configs=configs, labels=labels)


def finished(config: Config, out: str | Path, replicates: int) -> bool:
    """Whether every stage and measurement of ``replicates`` replicates of the run of
    ``config`` is stored: a point with nothing left to do."""
    from imp.base.store import RunDir
    from imp.trunk import is_complete
    from landscape.registry import measured_all

    run = RunDir(out, run_id(config))
    if not run.path.is_dir():
        return False
    levels = range(config.prune.levels + 1)
    return all(is_complete(run, config, r) and measured_all(run, r, config.landscape, levels)
               for r in range(replicates))


def _submit_and_follow(sweep: Sweep, args, opts) -> int:
    """Submit what is left to do as job arrays, and with ``--follow`` wait for the jobs
    (exit 1 if any point failed)."""
    from runs.lth import slurm

    made = slurm.executor(args.out, sweep.name, opts)
    submit_sweep(sweep, args.out, made, device=args.device, threads=opts.cpus_per_job, gpu=opts.gpus_per_job > 0,
                 chunk=opts.array_chunk, report=print, in_queue=slurm.queue_states)
    manifest = _read_manifest(Path(args.out) / SWEEPS_DIR / sweep_manifest(sweep.name))
    if not args.follow:
        print(f"follow with `lth sweep {args.file} --executor slurm --follow` (it submits nothing more) "
              f"or `lth ls {args.out}`")
        return 0
    configs = {run_id(c): c for c in sweep.configs}
    return slurm.follow(manifest, args.out, lambda name: finished(configs[name], args.out, sweep.replicates),
                        poll=args.poll)


def main_sweep(args) -> int:
    """``lth sweep``: expand the file, check the cluster (Slurm) and every point, then
    run or submit them."""
    from runs.lth import slurm

    if args.follow and args.executor != "slurm":
        raise UserError("--follow follows Slurm jobs (--executor slurm); a local or parallel sweep runs in the "
                        "foreground already")
    sweep = load_sweep(args.file, args.overrides)
    opts = slurm.options(sweep.slurm, args if args.executor == "slurm" else None)  # a bad [slurm] table is said
    if args.executor == "slurm":
        slurm.preflight(opts, args.device)
    print(f"sweep {sweep.name}: {len(sweep.configs)} point(s) x {sweep.replicates} replicate(s), "
          f"executor {args.executor}", file=sys.stderr)
    points = len(sweep.configs)
    sweep = check_points(sweep, args.out, report=lambda line: print(line, file=sys.stderr))
    if len(sweep.configs) < points:
        print(f"sweep {sweep.name}: {len(sweep.configs)} distinct run(s)", file=sys.stderr)
    if args.executor == "slurm":
        return _submit_and_follow(sweep, args, opts)
    workers = args.workers if args.executor == "parallel" else 1
    run_sweep(sweep, args.out, workers=workers, device=args.device, threads=args.threads, silent=args.silent)
    return 0
