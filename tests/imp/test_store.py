import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from imp.base import store
from imp.base.errors import UserError

REPO = Path(__file__).resolve().parents[2]
PROVENANCE_KEYS = {"config", "platform", "lth_version", "git_revision", "git_dirty", "torch_version",
                   "device", "date"}


def test_round_trip(tmp_path):
    tree = {
        "iterations": 12, "name": "x", "ok": True, "rate": 0.5,
        "loss": torch.arange(5, dtype=torch.float32),
        "weights": {"0.weight": torch.ones(2, 3), "0.bias": np.zeros(2)},
        "bf16": torch.ones(3, dtype=torch.bfloat16),
    }
    path = store.write_h5(tmp_path / "a" / "stage.h5", tree, store.provenance("{}", "cpu"))
    back = store.read_h5(path)
    assert back["iterations"] == 12 and back["name"] == "x" and back["ok"] is True
    np.testing.assert_array_equal(back["loss"], np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(back["weights"]["0.weight"], np.ones((2, 3)))
    assert back["bf16"].dtype == np.float32
    assert set(back["provenance"]) == PROVENANCE_KEYS


def test_provenance_is_readable_with_plain_h5py(tmp_path):
    config_json = '{"train":{"lr":0.2}}'
    path = store.write_h5(tmp_path / "s.h5", {"x": np.ones(1)}, store.provenance(config_json, "cpu"))
    with h5py.File(path, "r") as file:
        attrs = dict(file["provenance"].attrs)
    assert json.loads(attrs["config"]) == {"train": {"lr": 0.2}}
    assert attrs["torch_version"] == torch.__version__
    assert attrs["device"] == "cpu"
    assert len(attrs["git_revision"]) in (40, len("unknown"))
    assert attrs["date"].startswith("20")


def test_run_paths_and_stages(tmp_path):
    run = store.RunDir(tmp_path, "abc123")
    assert run.stage_file(2, "level_3") == tmp_path / "abc123" / "replicate_2" / "level_3.h5"
    store.write_h5(run.stage_file(0, "dense"), {}, {})
    store.write_h5(run.stage_file(1, "dense"), {}, {})
    (run.replicate_dir(0) / ".level_1.h5.999.tmp").write_bytes(b"half a file")
    assert run.stages(0) == ["dense"] and run.replicates() == [0, 1]
    assert run.has_stage(0, "dense") and not run.has_stage(0, "level_1")
    assert run.remove_partial_files() == 1
    with pytest.raises(ValueError):
        run.stage_file(0, "../escape")


def test_create_run_refuses_a_different_config(tmp_path):
    run = store.RunDir(tmp_path, "r")
    store.create_run(run, '{"a":1}', "cpu")
    store.create_run(run, '{"a":1}', "cpu")  # same config: fine
    with pytest.raises(UserError, match="different config"):
        store.create_run(run, '{"a":2}', "cpu")
    assert [r.run_id for r in store.find_runs(tmp_path)] == ["r"]


def test_create_run_updates_the_plan_and_keeps_the_provenance(tmp_path):
    run = store.RunDir(tmp_path, "r")
    store.create_run(run, '{"a":1}', "cpu", extra={"planned_levels": 2, "baselines": ""})
    date = store.read_run(run)["provenance"]["date"]
    stamp = run.run_file.stat().st_mtime_ns
    store.create_run(run, '{"a":1}', "cuda", extra={"planned_levels": 2, "baselines": ""})
    assert run.run_file.stat().st_mtime_ns == stamp  # unchanged plan: not rewritten
    store.create_run(run, '{"a":1}', "cuda", extra={"planned_levels": 5})
    stored = store.read_run(run)
    assert stored["planned_levels"] == 5 and stored["baselines"] == ""
    assert stored["provenance"]["date"] == date and stored["provenance"]["device"] == "cpu"


def test_read_skips_groups_and_names_an_unreadable_file(tmp_path):
    path = store.write_h5(tmp_path / "s.h5", {"a": 1, "weights": {"w": np.ones(3)}, "b": np.zeros(2)}, {})
    assert set(store.read_h5(path, skip=["weights"])) == {"a", "b", "provenance"}
    broken = tmp_path / "broken.h5"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match=f"cannot read {broken}.*delete it and rerun"):
        store.read_h5(broken)


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from imp.base import store
    run = store.RunDir(sys.argv[1], "run")
    for stage in range(1000):
        # ~32 MB per file in 8 datasets, so the kill lands inside a write most of the time
        tree = {f"part_{i}": np.full(1_000_000, stage, dtype=np.float32) for i in range(8)}
        store.write_h5(run.stage_file(0, f"stage_{stage:04d}"), tree, {"stage": stage})
""")


def test_sigkill_mid_write_loses_nothing_finished(tmp_path):
    """Kill a writer (SIGKILL) while it is inside a write: every finished file is intact."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], env=env)
    folder = tmp_path / "run" / "replicate_0"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            finished = list(folder.glob("stage_*.h5")) if folder.is_dir() else []
            partial = list(folder.glob(".*.tmp")) if folder.is_dir() else []
            if len(finished) >= 2 and partial:
                writer.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert list(folder.glob(".*.tmp")), "the writer should have died inside a write"
    run = store.RunDir(tmp_path, "run")
    stages = run.stages(0)
    assert len(stages) >= 2
    for name in stages:
        index = int(name.split("_")[1])
        tree = store.read_h5(run.stage_file(0, name))
        assert tree["provenance"]["stage"] == index
        for i in range(8):
            np.testing.assert_array_equal(tree[f"part_{i}"], np.full(1_000_000, index, np.float32))
    assert stages == [f"stage_{i:04d}" for i in range(len(stages))]
    assert run.remove_partial_files() >= 1 and not list(folder.glob(".*.tmp"))


HOLDER = textwrap.dedent("""
    import sys, time
    from imp.base import store
    with store.RunLock(store.RunDir(sys.argv[1], "run")):
        print("locked", flush=True)
        time.sleep(120)
""")


def test_lock_excludes_a_second_process_and_dies_with_its_holder(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        run = store.RunDir(tmp_path, "run")
        with pytest.raises(store.RunLocked, match=f"pid {holder.pid}"):
            with store.RunLock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    with store.RunLock(store.RunDir(tmp_path, "run")):  # the kernel released it on SIGKILL
        pass


def test_is_locked_sees_a_holder_without_disturbing_it(tmp_path):
    run = store.RunDir(tmp_path, "run")
    assert not store.is_locked(run)
    with store.RunLock(run):
        assert store.is_locked(run)
    assert not store.is_locked(run)


def test_lock_is_reentrant_after_release(tmp_path):
    run = store.RunDir(tmp_path, "run")
    with store.RunLock(run):
        pass
    with store.RunLock(run, wait=True):
        assert run.lock_file.read_text().strip() == f"pid {os.getpid()}"


def test_a_waiter_never_works_in_a_folder_its_failed_creator_removed(tmp_path):
    """A command that made a new run's folder and then fails removes it while still holding
    the lock; a process that waited for the lock then locks the file that is really there."""
    import threading
    import time

    run = store.RunDir(tmp_path, "new")
    entered, held = threading.Event(), {}

    def waiter():
        entered.wait()
        with store.RunLock(run, wait=True):
            time.sleep(0.3)  # long enough for a creator that removes its folder after unlocking
            held["lock file there"] = run.lock_file.is_file()
            held["locked"] = store.is_locked(run)

    thread = threading.Thread(target=waiter)
    thread.start()
    with pytest.raises(RuntimeError):
        with store.RunLock(run):
            entered.set()
            time.sleep(0.2)  # the waiter is blocked on the lock now
            raise RuntimeError("validation failed late")
    thread.join(timeout=10)
    assert held == {"lock file there": True, "locked": True}


def test_orphaned_temporary_files_of_dead_writers_are_removed(tmp_path):
    import subprocess
    import sys

    from imp.base.names import temporary_file

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    orphan = tmp_path / temporary_file("el2n_abc.h5", dead, store.HOST)
    live = tmp_path / temporary_file("el2n_abc.h5", os.getppid(), store.HOST)  # a live process's file stays
    elsewhere = tmp_path / temporary_file("el2n_abc.h5", dead, "another-node")  # whose pids mean nothing here
    kept = tmp_path / "el2n_abc.h5"
    for path in (orphan, live, elsewhere, kept):
        path.write_bytes(b"x")
    assert store.remove_orphans(tmp_path) == 1
    assert not orphan.exists() and live.exists() and elsewhere.exists() and kept.exists()
    assert store.remove_orphans(tmp_path / "absent") == 0
