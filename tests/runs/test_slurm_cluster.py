"""The local Slurm cluster the Slurm tests run against: jobs and arrays run to completion,
and stopping it, or killing the process that started it, leaves none of its processes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.runs import slurm_cluster
from tests.runs.slurm_cluster import LocalSlurm, SlurmUnavailable, cluster_pids, ensure_installed

REPO = Path(__file__).resolve().parents[2]


def running(pid: int, root: Path) -> bool:
    """Whether ``pid`` is still a live process of the cluster in ``root`` (zombies are not:
    a container's init may never reap them)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return state != "Z" and str(root).encode() in command


def start_or_skip() -> LocalSlurm:
    """A cluster of the test's own (entered), or a skip saying why none can run."""
    reason = ensure_installed()
    if reason:
        pytest.skip(f"no local Slurm: {reason}")
    try:
        return LocalSlurm().__enter__()
    except SlurmUnavailable as error:
        pytest.skip(f"no local Slurm: {error.reason}")


def test_a_job_runs_and_writes_its_output(slurm_cluster, tmp_path):
    output = tmp_path / "hi.out"
    job = slurm_cluster.command("sbatch", "--parsable", "-o", str(output), "--wrap", "echo hi").stdout.strip()
    assert slurm_cluster.wait_finished(job) == {job: "COMPLETED"}
    assert output.read_text() == "hi\n"


def test_every_task_of_an_array_runs(slurm_cluster, tmp_path):
    job = slurm_cluster.command("sbatch", "--parsable", "--array=0-1", "-o", str(tmp_path / "task_%a.out"),
                        "--wrap", "echo $SLURM_ARRAY_TASK_ID").stdout.strip()
    assert slurm_cluster.wait_finished(job) == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}
    assert [(tmp_path / f"task_{task}.out").read_text() for task in (0, 1)] == ["0\n", "1\n"]


def test_a_daemon_that_fails_to_start_is_named_with_its_error(monkeypatch):
    start_or_skip().stop()  # Slurm can run here, so a failure below is the broken config's
    good = slurm_cluster.slurm_conf
    monkeypatch.setattr(slurm_cluster, "slurm_conf", lambda *args: good(*args) + "NoSuchKey=1\n")
    cluster = LocalSlurm()
    with pytest.raises(SlurmUnavailable) as raised:
        cluster.__enter__()
    assert raised.value.reason.startswith("slurmctld exited with status 1: ")
    assert "unrecognized key: NoSuchKey" in raised.value.reason
    assert "--- slurmctld.out" in raised.value.logs
    assert not [name for name, pid in cluster.pids.items() if running(pid, cluster.root)]
    assert not cluster.root.exists()


def test_stopping_leaves_no_process_and_no_folder(tmp_path):
    with start_or_skip() as cluster:
        job = cluster.command("sbatch", "--parsable", "-o", str(tmp_path / "long.out"),
                              "--wrap", "sleep 300").stdout.strip()
        deadline = time.monotonic() + 20
        while cluster.job_states(job) != {job: "RUNNING"} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cluster.job_states(job) == {job: "RUNNING"}
        conf, pids, root = cluster.env["SLURM_CONF"], cluster.pids, cluster.root
        assert os.environ["SLURM_CONF"] == conf
    assert not [name for name, pid in pids.items() if running(pid, root)]
    assert cluster_pids(conf) == []  # no slurmstepd, no job
    assert not root.exists()
    assert os.environ.get("SLURM_CONF") != conf


def test_killing_the_starter_leaves_no_process(tmp_path):
    """The starting process dies by SIGKILL, so no __exit__ or atexit runs: the watchdog cleans up."""
    reason = ensure_installed()
    if reason:
        pytest.skip(f"no local Slurm: {reason}")
    starter = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from tests.runs.slurm_cluster import LocalSlurm, SlurmUnavailable\n"
         "try:\n    cluster = LocalSlurm().__enter__()\n"
         "except SlurmUnavailable as error:\n    print('unavailable', error.reason, flush=True); sys.exit()\n"
         "job = cluster.command('sbatch', '--parsable', '-o', '/dev/null', '--wrap', 'sleep 300')"
         ".stdout.strip()\n"
         "while cluster.job_states(job) != {job: 'RUNNING'}:\n    time.sleep(0.1)\n"
         "print(cluster.root, cluster.env['SLURM_CONF'], *cluster.pids.values(), flush=True)\n"
         "time.sleep(300)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = starter.stdout.readline().split()
        if line[:1] == ["unavailable"]:
            pytest.skip(f"no local Slurm: {' '.join(line[1:])}")
        assert line, "the starting process died before its cluster ran a job"
        root, conf, pids = Path(line[0]), line[1], [int(pid) for pid in line[2:]]
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
    deadline = time.monotonic() + 20
    while (root.exists() or cluster_pids(conf)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if running(pid, root)]
    assert cluster_pids(conf) == []
    assert not root.exists()
