"""Running a sweep on a Slurm cluster: one job array, the options clusters need, checks
before anything is queued, and following the jobs to the end.

* **Options** (:class:`SlurmOptions`) come from the sweep file's ``[slurm]`` table, and
  the command line overrides them key by key: partition, GPUs, CPUs, minutes, memory,
  account, QOS, constraint, any other ``sbatch`` option (``--sbatch KEY=VALUE``) and
  setup lines run before the job's Python (``module load ...``).
* **Checks** (:func:`preflight`): ``sbatch``, ``srun``, ``sinfo`` and ``squeue`` on PATH,
  the controller answering, the partition existing, a GPU request going to a partition
  with GPUs, ``--device cuda`` only with GPUs requested. The points' configs and data
  are checked on the submitting host before (:func:`runs.lth.sweep.check_points`).
* **Submission** (:func:`submit`): the points not finished and not already queued or
  running under the sweep's earlier jobs go in one job array (``array_chunk`` tasks at
  most per array, ``array_parallelism`` running at once), named ``lth:<sweep>``; the
  job ids are stored in the sweep's manifest with each point's label.
* **States** (:func:`states`): done (every stage and measurement of the point is
  stored), queued or running (``squeue``), else failed, with Slurm's word for it from
  ``sacct`` where accounting is on. :func:`follow` polls them until every point has
  ended and shows the last lines of a failed job's log.
"""

import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imp.base.errors import UserError, did_you_mean
from imp.base.names import SWEEPS_DIR

DEFAULT_MINUTES = 24 * 60
# sbatch options that the toolkit or submitit sets itself: they have their own keys
RESERVED = {"array", "output", "error", "job-name", "wrap", "partition", "time", "cpus-per-task", "gpus-per-node",
            "mem", "account", "qos", "constraint", "open-mode", "signal"}
QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "RESV_DEL_HOLD"}
RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING"}


@dataclass(frozen=True)
class SlurmOptions:
    """What each job of a sweep asks Slurm for (see the module docstring)."""

    partition: str = ""  # "" = the cluster's default partition
    gpus_per_job: int = 0
    cpus_per_job: int = 1
    minutes: int = DEFAULT_MINUTES
    mem: str = ""  # e.g. "16G" ("" = the partition's default)
    account: str = ""
    qos: str = ""
    constraint: str = ""
    sbatch: tuple[tuple[str, str], ...] = ()  # other sbatch options, (key, value)
    setup: tuple[str, ...] = ()  # shell lines run before the job's Python starts
    array_parallelism: int = 0  # array tasks running at once (0 = Slurm's limit only)
    array_chunk: int = 0  # most tasks per array, for clusters that cap MaxArraySize (0 = one array)

    def __post_init__(self):
        for key in ("gpus_per_job", "array_parallelism", "array_chunk"):
            if getattr(self, key) < 0:
                raise UserError(f"slurm.{key} must be >= 0, got {getattr(self, key)}")
        for key in ("cpus_per_job", "minutes"):
            if getattr(self, key) < 1:
                raise UserError(f"slurm.{key} must be at least 1, got {getattr(self, key)}")
        for key, _value in self.sbatch:
            if key.lstrip("-") in RESERVED:
                raise UserError(f"--sbatch {key}: the sweep sets it itself; use its own option "
                                f"(--{key.lstrip('-')} or the [slurm] table) or drop it")


_KEYS = {f.name: f.type for f in dataclasses.fields(SlurmOptions)}


def options(table: dict[str, Any] | None, args=None) -> SlurmOptions:
    """The options of the sweep file's ``[slurm]`` table, overridden by the command line's
    ``args`` (an argument left unset keeps the table's value)."""
    values: dict[str, Any] = {}
    for key, value in (table or {}).items():
        if key not in _KEYS:
            raise UserError(f"unknown key 'slurm.{key}'" + (did_you_mean(f"slurm.{key}", [f"slurm.{k}" for k in _KEYS])
                                                            or f"; valid keys in slurm: {', '.join(_KEYS)}"))
        values[key] = _coerce(key, value)
    if args is not None:
        given = {key: getattr(args, key) for key in _KEYS if key not in ("sbatch", "setup")}
        values.update({key: value for key, value in given.items() if value is not None})
        if args.sbatch:
            values["sbatch"] = tuple(values.get("sbatch", ())) + tuple(_pair(text) for text in args.sbatch)
        if args.setup:
            values["setup"] = tuple(values.get("setup", ())) + tuple(args.setup)
    return SlurmOptions(**values)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--sbatch {text!r} must look like KEY=VALUE, e.g. --sbatch exclude=node07")
    return key.strip().lstrip("-"), value.strip()


def _coerce(key: str, value: Any) -> Any:
    kind = _KEYS[key]
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"slurm.{key} must be an integer, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise UserError(f"slurm.{key} must be a string, got {value!r}")
        return value
    if key == "sbatch":
        if not isinstance(value, dict):
            raise UserError("slurm.sbatch must be a table of sbatch options, e.g. { exclude = \"node07\" }")
        return tuple((str(k).lstrip("-"), str(v)) for k, v in value.items())
    if isinstance(value, str):  # setup: one line or a list of lines
        return (value,)
    if not isinstance(value, list) or not all(isinstance(line, str) for line in value):
        raise UserError(f"slurm.setup must be a list of shell lines, got {value!r}")
    return tuple(value)


# ------------------------------------------------------------------ checks


def _run(command: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise UserError(f"`{' '.join(command)}` did not answer in {timeout:.0f} s; is the Slurm controller up?") from None


def partitions() -> dict[str, tuple[str, bool]]:
    """Partition -> (its generic resources, whether it is the default), from ``sinfo``."""
    result = _run(["sinfo", "-h", "-o", "%P|%G"])
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"sinfo failed ({reason}); the Slurm controller does not answer from this host")
    out: dict[str, tuple[str, bool]] = {}
    for line in result.stdout.splitlines():
        name, _, gres = line.partition("|")
        default = name.endswith("*")
        name = name.rstrip("*")
        before = out.get(name, ("", False))
        out[name] = (",".join(g for g in (before[0], gres.strip()) if g and g != "(null)"), before[1] or default)
    return out


def preflight(opts: SlurmOptions, device: str) -> None:
    """Everything about the cluster that can fail after submission, checked now (module
    docstring); one line each."""
    missing = [tool for tool in ("sbatch", "srun", "sinfo", "squeue") if shutil.which(tool) is None]
    if missing:
        raise UserError(f"--executor slurm needs Slurm's {', '.join(missing)} on PATH, and they are not here; run the "
                        "sweep on a cluster's login node, or use --executor local or parallel")
    if device.startswith("cuda") and opts.gpus_per_job == 0:
        raise UserError(f"--device {device} needs a GPU in every job; add --gpus-per-job 1 (or use --device auto)")
    found = partitions()
    if opts.partition and opts.partition not in found:
        raise UserError(f"Slurm has no partition {opts.partition!r}{did_you_mean(opts.partition, list(found))}; "
                        f"its partitions: {', '.join(found) or 'none'}")
    name = opts.partition or next((p for p, (_, default) in found.items() if default), "")
    if opts.gpus_per_job and "gpu" not in found.get(name, ("", False))[0]:
        raise UserError(f"--gpus-per-job {opts.gpus_per_job}: partition {name or '(default)'} has no GPUs "
                        f"(sinfo shows no gpu resources); choose a GPU partition with --partition"
                        + (f" ({', '.join(p for p, (g, _) in found.items() if 'gpu' in g)})"
                           if any('gpu' in g for g, _ in found.values()) else ""))


# ------------------------------------------------------------------ submission


def executor(out: str | Path, sweep_name: str, opts: SlurmOptions):
    """A submitit Slurm executor with ``opts``; job logs go to ``OUT/sweeps/slurm``."""
    import submitit

    made = submitit.AutoExecutor(folder=str(log_folder(out)), cluster="slurm")
    params: dict[str, Any] = {"timeout_min": opts.minutes, "cpus_per_task": opts.cpus_per_job,
                              "gpus_per_node": opts.gpus_per_job, "name": f"lth:{sweep_name}"}
    optional = {"slurm_partition": opts.partition, "slurm_mem": opts.mem, "slurm_account": opts.account,
                "slurm_qos": opts.qos, "slurm_constraint": opts.constraint}
    params.update({key: value for key, value in optional.items() if value})
    if opts.sbatch:
        params["slurm_additional_parameters"] = {key.replace("-", "_"): value for key, value in opts.sbatch}
    if opts.setup:
        params["slurm_setup"] = list(opts.setup)
    if opts.array_parallelism:
        params["slurm_array_parallelism"] = opts.array_parallelism
    made.update_parameters(**params)
    return made


def log_folder(out: str | Path) -> Path:
    return Path(out).resolve() / SWEEPS_DIR / "slurm"


def submit(made, function: Callable, calls: list[tuple], chunk: int = 0) -> list:
    """Submit ``function(*call)`` for each of ``calls`` as job arrays of at most ``chunk``
    tasks (0 = one array); returns submitit's jobs, in order."""
    size = chunk or max(len(calls), 1)
    jobs: list = []
    for start in range(0, len(calls), size):
        with made.batch():
            batch = [made.submit(function, *call) for call in calls[start:start + size]]
        jobs += batch
    return jobs


# ------------------------------------------------------------------ states


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm state of each job (array task ids like ``123_4``) the controller still
    knows: queued and running ones, and ended ones for ``MinJobAge`` (300 s by default)."""
    bases = sorted({job.split("_")[0] for job in job_ids})
    if not bases or shutil.which("squeue") is None:
        return {}
    result = _run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(bases), "-o", "%i|%T"])
    return dict(line.split("|", 1) for line in result.stdout.splitlines() if "|" in line)


def accounting_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's final state of each job from ``sacct`` ({} where accounting is off)."""
    bases = sorted({job.split("_")[0] for job in job_ids})
    if not bases or shutil.which("sacct") is None:
        return {}
    result = _run(["sacct", "-n", "-X", "-P", "-j", ",".join(bases), "-o", "JobID,State"])
    if result.returncode != 0:
        return {}
    return {job: state.split()[0] for job, _, state in (line.partition("|") for line in result.stdout.splitlines())
            if state}


def states(manifest: dict, finished: Callable[[str], bool]) -> dict[str, tuple[str, str]]:
    """Run id -> (state, Slurm's word) for every point of a Slurm sweep: ``done`` when
    ``finished(run_id)``, ``queued`` or ``running`` while in the queue, else ``failed``
    (Slurm's state, e.g. CANCELLED or TIMEOUT, from ``squeue`` while the controller keeps
    the ended job, else from ``sacct`` where accounting is on; "gone" otherwise). Points never submitted (finished before) are ``done`` or ``not submitted``."""
    jobs = manifest.get("jobs", {})
    queue = queue_states(list(jobs.values()))
    ended = None
    out = {}
    for run_id in manifest["runs"]:
        job = jobs.get(run_id)
        word = queue.get(job, "") if job else ""
        if finished(run_id):
            out[run_id] = ("done", word or "finished")
        elif word in QUEUED:
            out[run_id] = ("queued", word)
        elif word in RUNNING:
            out[run_id] = ("running", word)
        elif job is None:
            out[run_id] = ("not submitted", "")
        else:
            if ended is None:
                ended = accounting_states(list(jobs.values()))
            out[run_id] = ("failed", word or ended.get(job, "gone from the queue, not finished"))
    return out


def log_tail(out: str | Path, job_id: str, lines: int = 10) -> list[str]:
    """The last ``lines`` lines of a job's stderr log (submitit's file), or []."""
    from submitit.core.utils import JobPaths

    path = JobPaths(log_folder(out), job_id=job_id, task_id=0).stderr
    if not path.is_file():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]


def follow(manifest: dict, out: str | Path, finished: Callable[[str], bool], *, poll: float = 30.0,
           report: Callable[[str], None] = print) -> int:
    """Report each point's state as it changes until none is queued or running; then
    the failed jobs' last log lines. Returns 0 when every point is done, else 1."""
    labels, jobs = manifest.get("labels", {}), manifest.get("jobs", {})
    seen: dict[str, tuple[str, str]] = {}
    while True:
        now = states(manifest, finished)
        for run_id, state in now.items():
            if seen.get(run_id, ("",))[0] != state[0]:
                report(_line(run_id, labels, jobs, state))
        seen = now
        if not any(state in ("queued", "running") for state, _ in now.values()):
            break
        time.sleep(poll)
    failed = [run_id for run_id, (state, _) in now.items() if state != "done"]
    for run_id in (r for r in failed if r in jobs):
        tail = log_tail(out, jobs[run_id])
        report(f"{point_name(run_id, labels)} job {jobs[run_id]} ended without finishing"
               + (": its log ends" if tail else "") + "".join(f"\n    {line}" for line in tail))
    done = len(now) - len(failed)
    report(f"sweep {manifest['name']}: {done}/{len(now)} runs done" + (f", {len(failed)} not" if failed else ""))
    return 1 if failed else 0


def point_name(run_id: str, labels: dict) -> str:
    """A point as the sweep's lines name it: ``lr=0.05 (<run id>)``, or the run id alone."""
    return f"{labels[run_id]} ({run_id})" if labels.get(run_id) else run_id


def _shown(state: str, word: str) -> str:
    """``state`` with Slurm's word where it says more (not for done runs, nor RUNNING for running)."""
    return state + (f" ({word})" if state != "done" and word and word.lower() != state else "")


def _line(run_id: str, labels: dict, jobs: dict, state: tuple[str, str]) -> str:
    return f"{point_name(run_id, labels)} job {jobs.get(run_id, '-')}: {_shown(*state)}"


def require_gpu() -> None:
    """Inside a job that asked for GPUs: one is visible, or an error (never a silent CPU run)."""
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"this job asked Slurm for a GPU (--gpus-per-job) but sees none "
                        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}, "
                        f"host {os.uname().nodename}); check the partition's GPUs and the CUDA build of torch")


def table_rows(manifest: dict, finished: Callable[[str], bool]) -> list[list[str]]:
    """``lth ls`` rows of a Slurm sweep: point, run, job, state."""
    labels, jobs = manifest.get("labels", {}), manifest.get("jobs", {})
    rows = []
    for run_id, (state, word) in states(manifest, finished).items():
        rows.append([labels.get(run_id, "") or "-", run_id, jobs.get(run_id, "-"), _shown(state, word)])
    return rows
