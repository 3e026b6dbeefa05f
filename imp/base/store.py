"""The HDF5 results store: atomic writes, reads, provenance and the run lock.

The names of files, folders and stages come from :mod:`imp.base.names`.

Layout of one run (see ``docs/storage.md`` for reading it with plain h5py)::

    OUT/<run_id>/
        run.h5                          the run's config and provenance, written once
        run.lock                        held (flock) by the one process writing the run
        replicate_<r>/<stage>.h5        one file per replicate and finished stage

Crash safety: HDF5 files are not safe to kill mid-write, so no file is ever written in
place. Each file is written completely to a hidden temporary name in the same folder,
flushed to disk, then renamed over the final name (atomic on POSIX). A ``kill -9`` can
therefore lose only the file being written; every file under its final name opens and
holds a finished stage, and a stage "exists" exactly when its final file does.

Every file carries a ``/provenance`` group whose attributes are the canonical config,
package version, git revision and dirty flag, torch version, device and date.
"""

import datetime
import errno
import fcntl
import functools
import json
import socket
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from imp.base import names
from imp.base.errors import UserError
from imp.base.names import LOCK_FILE, PROVENANCE, RUN_FILE, TEMPORARY_SUFFIX

KILL_IN_WRITE = "LTH_TEST_KILL_IN_WRITE"  # fault injection for the crash tests, see _injected_fault


class RunLocked(UserError):
    """Another process holds the run's lock."""


class RunDir:
    """The paths of one run inside an output folder."""

    def __init__(self, out: str | Path, run_id: str):
        self.out = Path(out)
        self.run_id = run_id
        self.path = self.out / run_id

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    def replicate_dir(self, replicate: int) -> Path:
        return self.path / names.replicate_dir(replicate)

    def stage_file(self, replicate: int, stage: str) -> Path:
        """The file of one finished stage, e.g. ``stage_file(0, "level_3")``."""
        return self.replicate_dir(replicate) / names.stage_file(stage)

    def has_stage(self, replicate: int, stage: str) -> bool:
        return self.stage_file(replicate, stage).is_file()

    def stages(self, replicate: int) -> list[str]:
        """Names of the finished stages of a replicate (temporary files are not stages)."""
        folder = self.replicate_dir(replicate)
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.h5") if not p.name.startswith("."))

    def replicates(self) -> list[int]:
        prefix = names.replicate_dir("")
        found = [p.name[len(prefix):] for p in self.path.glob(prefix + "*") if p.is_dir()]
        return sorted(int(r) for r in found if r.isdigit())

    def remove_partial_files(self) -> int:
        """Delete temporary files left by a killed writer; call only while holding the lock."""
        stale = list(self.path.rglob("." + "*" + TEMPORARY_SUFFIX))
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)


def is_run(path: str | Path) -> bool:
    return (Path(path) / RUN_FILE).is_file()


# ---------------------------------------------------------------- provenance


@functools.lru_cache(maxsize=1)
def _git_state() -> tuple[str, bool]:
    source = Path(__file__).resolve().parent
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source, capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", False
    if revision.returncode != 0:
        return "unknown", False
    return revision.stdout.strip(), bool(status.stdout.strip())


def provenance(config_json: str, device: str | torch.device, platform: str = "{}") -> dict[str, Any]:
    """Where a result came from: config, how it ran (``platform``: data root, precision,
    memory format, compilation, as JSON), code version, git state, torch, device, date."""
    from imp import __version__

    revision, dirty = _git_state()
    return {
        "config": config_json,
        "platform": platform,
        "lth_version": __version__,
        "git_revision": revision,
        "git_dirty": dirty,
        "torch_version": str(torch.__version__),
        "device": str(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ---------------------------------------------------------------- writing and reading


def write_h5(path: str | Path, tree: Mapping[str, Any], provenance: Mapping[str, Any]) -> Path:
    """Write a nested mapping to ``path`` atomically: temporary file, fsync, rename.

    Mappings become groups, arrays and tensors become datasets, and str, int, float and
    bool values become attributes of the group that holds them. ``provenance`` becomes
    the attributes of the ``/provenance`` group.
    """
    path = Path(path)
    temporary = path.with_name(names.temporary_file(path.name, os.getpid(), HOST))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(temporary, "w") as file:
            _write_group(file, tree)
            _injected_fault()
            group = file.create_group(PROVENANCE)
            for key, value in provenance.items():
                group.attrs[key] = _attribute(value)
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:  # permissions, a full disk: nothing under the final name changed
        raise cannot_write(path, error) from None
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


_writes_started = 0


def _injected_fault() -> None:
    """With ``LTH_TEST_KILL_IN_WRITE=N`` in the environment, SIGKILL this process inside
    its N-th file write, after the data and before the provenance, the flush and the
    rename: the crash tests' way to die mid-write, which random timing rarely hits."""
    global _writes_started
    target = os.environ.get(KILL_IN_WRITE)
    if target:
        _writes_started += 1
        if _writes_started == int(target):
            os.kill(os.getpid(), signal.SIGKILL)


HOST = socket.gethostname()


def remove_orphans(folder: Path) -> int:
    """Delete the temporary files in ``folder`` that a process of this machine was writing
    and that process is dead (killed mid-write): for a folder no lock guards, such as the
    scores cache, where a live writer's file, or another machine's, must stay."""
    removed = 0
    for path in Path(folder).glob("." + "*" + names.TEMPORARY_SUFFIX) if Path(folder).is_dir() else ():
        writer, _, pid = path.name.removesuffix(names.TEMPORARY_SUFFIX).rpartition(".")
        if not writer.endswith("." + HOST) or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            removed += 1
        except PermissionError:  # alive, another user's
            pass
    return removed


def cannot_write(path: Path, error: OSError, instead: str = "another --out folder") -> UserError:
    """The one-line error for a file or folder that cannot be written."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(f"no space left on the device while writing {path}; free some space and rerun "
                         "the command to resume (finished files are intact)")
    reason = error.strerror or str(error)
    folder = next(p for p in path.absolute().parents if p.exists())
    return UserError(f"cannot write {path} ({reason}); make {folder} writable, "
                     f"or choose {instead}")


def check_writable(folder: str | Path, instead: str = "another --out folder") -> None:
    """Fail now, not after hours of computing, when files cannot be made in ``folder``
    (or in the nearest existing folder above it, where it will be created)."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot write under {folder}: {existing} is a file, not a folder; "
                        f"choose {instead}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write under {folder}: {existing} is not writable; "
                        f"make it writable, or choose {instead}")


def _fsync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_group(group: h5py.Group, tree: Mapping[str, Any]) -> None:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            _write_group(group.create_group(key), value)
        elif isinstance(value, (str, bool, int, float, np.integer, np.floating)):
            group.attrs[key] = _attribute(value)
        else:
            group.create_dataset(key, data=_to_numpy(value))


def _attribute(value: Any) -> Any:
    """Plain Python scalars (a str subclass such as torch's version string is not plain)."""
    if isinstance(value, str):
        return str(value)
    return value


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def read_h5(path: str | Path, skip: Iterable[str] = (), only: Iterable[str] | None = None) -> dict[str, Any]:
    """Read a file written by :func:`write_h5` back into nested dicts (numpy arrays inside).

    The ``provenance`` key holds the provenance attributes. Top-level groups or datasets
    named in ``skip`` (e.g. ``weights``) are not read; with ``only``, no top-level group
    or dataset but those named is read (the root's attributes always are). A file that
    cannot be read is a :class:`~imp.base.errors.UserError` naming it and what to do.
    """
    try:
        with h5py.File(path, "r") as file:
            skipped = set(skip) if only is None else set(file.keys()) - set(only)
            return _read_group(file, frozenset(skipped))
    except OSError as error:
        raise cannot_read(Path(path), error) from None


def cannot_read(path: Path, error: OSError) -> UserError:
    """The one-line error for a damaged (truncated, overwritten) or unreadable file."""
    if path.name == RUN_FILE:
        fix = ("delete it and rerun `lth run` with the run's config to write it again "
               "(the finished stages are kept)")
    elif path.name in (names.stage_file(names.REWIND_STAGE), names.stage_file(names.PRETRAIN_STAGE)):
        # made only while level 0 trains (imp.trunk)
        fix = (f"delete it and {path.parent / names.stage_file(names.level_stage(0))}, then rerun `lth run` with the run's "
               "config to recompute both")
    else:
        fix = "delete it and rerun the command that made it to recompute it"
    return UserError(f"cannot read {path} ({error}); {fix}")


def check_files(run: "RunDir") -> None:
    """Raise :func:`cannot_read`'s error for the first file of ``run`` that does not open.

    Opening checks the HDF5 signature and that the file is as long as its header says,
    so a truncated or overwritten stage is never taken for a finished one.
    """
    files = [path for path in (run.run_file, run.path / names.SUBSET_FILE) if path.is_file()]
    for replicate in run.replicates():
        files += [run.stage_file(replicate, stage) for stage in run.stages(replicate)]
    for path in files:
        try:
            h5py.File(path, "r").close()
        except OSError as error:
            raise cannot_read(path, error) from None


def _read_group(group: h5py.Group, skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    out: dict[str, Any] = {key: _attr(value) for key, value in group.attrs.items()}
    for key, item in group.items():
        if key in skip:
            continue
        out[key] = _read_group(item) if isinstance(item, h5py.Group) else item[()]
    return out


def _attr(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_config_json(run: RunDir) -> str:
    """The canonical config JSON stored with a run."""
    with h5py.File(run.run_file, "r") as file:
        return file[PROVENANCE].attrs["config"]


def create_run(run: RunDir, config_json: str, device: str | torch.device,
               extra: Mapping[str, Any] | None = None, platform: str = "{}") -> None:
    """Write ``run.h5``; if it exists, check that it describes the same config.

    ``extra`` becomes root attributes (e.g. the data root and the plan: levels,
    replicates, baselines). When an existing file's attributes differ from ``extra``,
    the file is rewritten atomically with them updated and its provenance kept.
    """
    extra = dict(extra or {})
    if not run.run_file.is_file():
        write_h5(run.run_file, extra, provenance(config_json, device, platform))
        return
    stored = read_h5(run.run_file)
    if json.loads(stored[PROVENANCE]["config"]) != json.loads(config_json):
        raise UserError(f"{run.path} holds a different config; use another --out folder")
    old = {key: value for key, value in stored.items() if key != PROVENANCE}
    if any(_differs(old.get(key), value) for key, value in extra.items()):
        write_h5(run.run_file, {**old, **extra}, stored[PROVENANCE])


def _differs(a: Any, b: Any) -> bool:
    return not np.array_equal(np.asarray(a), np.asarray(b)) if a is not None else True


def read_run(run: RunDir) -> dict[str, Any]:
    """The attributes of ``run.h5`` (plan, data root) with its ``provenance``."""
    return read_h5(run.run_file)


# ---------------------------------------------------------------- locking


class RunLock:
    """An exclusive, process-level lock on one run (``flock`` on ``run.lock``).

    The operating system releases it when the holder exits, even after ``kill -9``, so a
    crashed writer never leaves a run locked. With ``wait=False`` a second process gets
    :class:`RunLocked` at once; with ``wait=True`` it blocks until the lock is free.
    """

    def __init__(self, run: RunDir, wait: bool = False):
        self.run = run
        self.wait = wait
        self._handle = None

    def __enter__(self) -> "RunLock":
        while True:
            self.created = not self.run.path.exists()
            try:
                self.run.path.mkdir(parents=True, exist_ok=True)
                handle = open(self.run.lock_file, "a+")
            except OSError as error:
                raise cannot_write(self.run.lock_file, error) from None
            try:
                _flock(handle, fcntl.LOCK_EX, self.wait)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                raise RunLocked(
                    f"run {self.run.run_id} is being written by {holder}; "
                    "wait for it to finish or use another --out folder"
                ) from None
            if _same_file(handle, self.run.lock_file):
                break
            handle.close()  # the holder removed the folder it had made (see __exit__): start again
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, kind, value, traceback) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        if kind is not None and self.created:
            try:  # while still holding the lock, so no waiter works in a folder about to go
                self._remove_if_empty()
            except OSError:
                pass  # something appeared in it meanwhile: it stays
        handle.truncate(0)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()

    def _remove_if_empty(self) -> None:
        """A run folder this lock made, left by a command that failed before storing any
        stage in it (only the lock, the run.h5 it wrote itself and empty folders): removed,
        so that rejected input leaves no phantom run behind."""
        files = [p for p in self.run.path.rglob("*")
                 if p.is_file() and p not in (self.run.lock_file, self.run.run_file)]
        if files:
            return
        self.run.run_file.unlink(missing_ok=True)
        for folder in sorted((p for p in self.run.path.rglob("*") if p.is_dir()), reverse=True):
            folder.rmdir()
        self.run.lock_file.unlink(missing_ok=True)
        self.run.path.rmdir()


def _same_file(handle, path: Path) -> bool:
    """Whether ``handle`` is still the file at ``path`` (not removed or replaced)."""
    try:
        return os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def _flock(handle, kind: int, wait: bool, tries: int = 5) -> None:
    """``flock``; without ``wait``, retry briefly so a momentary probe (:func:`is_locked`)
    is not mistaken for a writer."""
    if wait:
        fcntl.flock(handle, kind)
        return
    for attempt in range(tries):
        try:
            fcntl.flock(handle, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == tries - 1:
                raise
            time.sleep(0.02)


def is_locked(run: RunDir) -> bool:
    """Whether some process holds the run's lock right now (it is being written)."""
    if not run.lock_file.is_file():
        return False
    with open(run.lock_file, "r") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def find_runs(out: str | Path) -> Iterator[RunDir]:
    """Every run folder directly inside ``out``, sorted by id."""
    out = Path(out)
    if not out.is_dir():
        return
    for path in sorted(out.iterdir()):
        if is_run(path):
            yield RunDir(out, path.name)
