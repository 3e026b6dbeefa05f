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
list of runs is kept in ``OUT/sweeps/<name>.json`` for ``lth ls``.
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


def load_sweep(path: str | Path, overrides: Sequence[str] = ()) -> Sweep:
    """Read a sweep file, set ``overrides`` (``section.key=value``) on its base config, and
    expand its grid, checking every axis and every point."""
    path = Path(path)
    raw = read_toml(path, "sweep file")
    grid = raw.pop("sweep", None)
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
    configs = []
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
    return Sweep(path.stem, configs, replicates)


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
              silent: bool = False) -> str:
    """Run (or resume) one point of a sweep in this process; returns how it ended.
    Its progress lines go to stderr, each starting with the run id, unless ``silent``.

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
    chosen = choose_device(device)
    try:
        name = run_id(config)
        report = None if silent else lambda line: print(f"{name} {line}", file=sys.stderr, flush=True)  # noqa: E731
        run = run_imp(config, out, resolve_root(config.data.root, os.environ), chosen, replicates=replicates,
                      hooks=level_hooks(config, chosen, report), threads=threads, report=report)
    except RunLocked:
        return f"{run_id(config)}: skipped, another process is writing it"
    return f"{run.run_id}: done"


def write_manifest(sweep: Sweep, out: str | Path) -> Path:
    from imp.base.store import cannot_write

    path = Path(out) / SWEEPS_DIR / sweep_manifest(sweep.name)
    manifest = {"name": sweep.name, "replicates": sweep.replicates, "runs": [run_id(c) for c in sweep.configs]}
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
                 report: Callable[[str], None] = print) -> list:
    """Submit one job per point to a submitit executor (Slurm, or its local executor)."""
    write_manifest(sweep, out)
    jobs = [executor.submit(run_point, _plain(c), str(Path(out).resolve()), sweep.replicates, device, threads)
            for c in sweep.configs]
    for config, job in zip(sweep.configs, jobs):
        report(f"{run_id(config)}: submitted as job {job.job_id}")
    return jobs


def slurm_executor(out: str | Path, *, partition: str | None, gpus_per_job: int, cpus_per_job: int,
                   minutes: int):
    import shutil

    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise UserError("--executor slurm needs Slurm's sbatch and srun on PATH, and they are not here; "
                        "run the sweep on a cluster's login node, or use --executor local or parallel")
    import submitit

    executor = submitit.AutoExecutor(folder=str(Path(out) / SWEEPS_DIR / "slurm"), cluster="slurm")
    params = {"timeout_min": minutes, "cpus_per_task": cpus_per_job, "gpus_per_node": gpus_per_job}
    if partition:
        params["slurm_partition"] = partition
    executor.update_parameters(**params)
    return executor


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

    loaded, configs, ids = set(), [], {}
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
    return dataclasses.replace(sweep, configs=configs)


def main_sweep(args) -> int:
    """``lth sweep``: expand the file, check every point, then run or submit them."""
    sweep = load_sweep(args.file, args.overrides)
    print(f"sweep {sweep.name}: {len(sweep.configs)} point(s) x {sweep.replicates} replicate(s), "
          f"executor {args.executor}", file=sys.stderr)
    points = len(sweep.configs)
    sweep = check_points(sweep, args.out, report=lambda line: print(line, file=sys.stderr))
    if len(sweep.configs) < points:
        print(f"sweep {sweep.name}: {len(sweep.configs)} distinct run(s)", file=sys.stderr)
    if args.executor == "slurm":
        executor = slurm_executor(args.out, partition=args.partition, gpus_per_job=args.gpus_per_job,
                                  cpus_per_job=args.cpus_per_job, minutes=args.minutes)
        submit_sweep(sweep, args.out, executor, device=args.device, threads=args.cpus_per_job)
        print(f"follow with `lth ls {args.out}`")
        return 0
    workers = args.workers if args.executor == "parallel" else 1
    run_sweep(sweep, args.out, workers=workers, device=args.device, threads=args.threads, silent=args.silent)
    return 0
