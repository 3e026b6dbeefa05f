"""A real single-node Slurm cluster in a private temporary folder, for tests.

``LocalSlurm`` starts ``munged``, ``slurmctld`` and ``slurmd`` (as root, one node on
127.0.0.1 with the machine's real CPUs and memory, partition ``debug``, free ports) and
stops exactly those processes on exit; ``ensure_installed`` apt-installs the daemons when
they are missing. Nothing system-wide is read or written: the munge key, socket, slurm.conf,
state, spool and logs all live in the temporary folder.

    with LocalSlurm() as cluster:
        subprocess.run(["sbatch", "--wrap", "echo hi"], env=cluster.env, cwd=folder)

Without slurmdbd there is no ``sacct`` (below), so submitit, which asks ``sacct`` for job
states, never sees a job that died without writing its result (``job.result()`` would
wait forever); the toolkit does not ask submitit: :mod:`runs.lth.slurm` reads ``squeue
-t all`` and the stored files.

What this cluster does (slurm-wlm 22.05.8, munge 0.5.15, Debian 12, root, 2 CPUs):
- daemons to ``idle`` in about 1.1 s; stopping takes 0.1-0.3 s. A job starts at the next
  backfill pass (``bf_interval=1``), so a trivial job takes 0.05-1 s from sbatch to
  COMPLETED (with the defaults it took 2-2.7 s); a submitit job about 2 s.
- jobs run as root; ``--array=0-1%1`` runs the tasks one at a time (the waiting one shows
  reason ``JobArrayTaskLimit``); ``scancel`` of a running job ends it at once, and it
  shows ``CANCELLED`` (ExitCode ``0:15``) in ``scontrol`` and ``squeue -t all``.
- refused by sbatch (exit 1): ``--gres=gpu:1`` and ``--gpus=1`` ("Invalid generic
  resource (gres) specification"), ``--constraint=gpu`` ("Invalid feature
  specification"), ``--mem=100G`` ("Memory specification can not be satisfied"),
  ``--cpus-per-task=3`` ("More processors requested than permitted"), ``--nodes=2``
  ("Node count specification invalid"), ``-p nope`` ("Invalid partition name specified").
  Accepted: ``--mem=1G``, ``--time``, ``--signal=USR2@90``, and, unchecked without
  slurmdbd, ``--qos=normal`` or any QOS name (the job shows ``QOS=(null)``) and
  ``--account=foo`` (stored as given).
- ``sinfo -h -o "%P %G"`` prints ``debug* (null)``.
- ``sacct`` needs slurmdbd: without it, it prints "Slurm accounting storage is disabled"
  and exits 1 (``jobacct_gather/linux`` does not change that). ``sacct -c`` reads the
  jobcomp/filetxt file, finished jobs only, and lists an array task under its raw job id
  (task 2_1 as job 3) with "Unknown type ArrayJobId" errors on stderr.
"""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "sinfo", "scontrol", "scancel")
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


class SlurmUnavailable(RuntimeError):
    """The cluster could not be started: ``reason`` is one line, ``logs`` the daemons' tails."""

    def __init__(self, reason: str, logs: str = ""):
        super().__init__(reason + (f"\n{logs}" if logs else ""))
        self.reason = reason
        self.logs = logs


def _which(name: str) -> str | None:
    """``name`` on PATH, or in the sbin folders a non-login root shell may lack."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def ensure_installed(timeout: float = 300.0) -> str | None:
    """None when munge and Slurm are installed (installing them with apt-get if root and
    they are missing), else a one-line reason they are not."""
    if all(_which(name) for name in ("slurmctld", "slurmd", "sbatch", "munged")):
        return None
    if os.geteuid() != 0 or not _which("apt-get"):
        return "slurm-wlm/munge are not installed and cannot be (needs root and apt-get)"
    deadline = time.monotonic() + timeout
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}

    def apt_get(*args: str) -> str | None:
        """None on success, else why not."""
        command = ["apt-get", *args]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True,
                                  timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return f"'{' '.join(command)}' took longer than {timeout:.0f} s"
        return None if done.returncode == 0 else f"'{' '.join(command)}' failed: {_apt_error(done.stderr)}"

    install = ("install", "-y", "-q", "slurm-wlm", "munge")
    failure = apt_get(*install)
    # A fresh image has no package lists yet: fetch them, and try once more.
    if failure and ("Unable to locate package" in failure or "no installation candidate" in failure):
        failure = apt_get("update", "-q") or apt_get(*install)
    return failure


def _apt_error(stderr: str) -> str:
    """apt-get's first error line ("E: Unable to locate package munge"), else its last line."""
    errors = [line.strip() for line in stderr.splitlines() if line.startswith("E:")]
    return errors[0] if errors else _last_line(stderr)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """This machine's node definition as ``slurmd -C`` prints it (NodeName=... RealMemory=...)."""
    done = subprocess.run([_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, timeout=30)
    lines = [line for line in done.stdout.splitlines() if line.startswith("NodeName=")]
    if done.returncode != 0 or not lines:
        raise SlurmUnavailable(f"'slurmd -C' failed: {_last_line(done.stderr + done.stdout)}")
    return lines[0].strip()


def _fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def slurm_conf(root: Path, node_line: str, ports: tuple[int, int]) -> str:
    """A slurm.conf for one node on 127.0.0.1 whose files all live under ``root``."""
    node = _fields(node_line)
    name, cpus, memory_mb = node["NodeName"], int(node["CPUs"]), int(node["RealMemory"])
    return f"""\
ClusterName=lthtest
SlurmctldHost={name}(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
PlugStackConfig={root}/plugstack.conf
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default every job would take the whole node's memory and jobs would run one at a time.
DefMemPerCPU={memory_mb // cpus}
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
SlurmctldTimeout=10
SlurmdTimeout=10
MessageTimeout=5
InactiveLimit=0
KillWait=2
MinJobAge=3600
ReturnToService=2
{" ".join(f"{k}={v}" for k, v in node.items() if k != "UpTime")} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes={name} Default=YES MaxTime=INFINITE State=UP
"""


class LocalSlurm:
    """A running single-node Slurm while entered. ``env`` is the environment to give
    Slurm commands (it holds ``SLURM_CONF``, which is also set in ``os.environ`` while
    entered); ``root`` is the private folder; ``node`` the node's name."""

    def __init__(self, start_timeout: float = 60.0, parent: Path | None = None):
        self.start_timeout = start_timeout
        self.parent = parent
        self.root = Path()
        self.node = ""
        self.env: dict[str, str] = {}
        self.processes: dict[str, subprocess.Popen] = {}
        self._watchdog: subprocess.Popen | None = None
        self._saved_environ: dict[str, str | None] | None = None  # os.environ's values before entering
        self._entered = False

    # -- starting ---------------------------------------------------------------------

    def __enter__(self) -> "LocalSlurm":
        if self._entered:  # already running (e.g. `with` on a cluster entered before): the same one
            return self
        if os.geteuid() != 0:
            raise SlurmUnavailable("a local Slurm needs root (slurmd runs jobs as their users)")
        missing = [name for name in DAEMONS + CLIENTS if not _which(name)]
        if missing:
            raise SlurmUnavailable(f"not installed: {', '.join(missing)}")
        self.root = Path(tempfile.mkdtemp(prefix="lth-slurm-", dir=self.parent))
        self._entered = True
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        root = self.root
        root.chmod(0o755)  # munged refuses a socket in a folder others cannot enter
        for sub in ("munge", "state", "spool", "log"):
            (root / sub).mkdir(mode=0o755)
        if len(str(root / "munge" / "munge.socket")) > 100:
            raise SlurmUnavailable(f"temporary folder path too long for a unix socket: {root}")
        conf = root / "slurm.conf"
        # Every process of this cluster (daemons, slurmstepd, jobs) carries this variable,
        # which is how the watchdog and stop() find stragglers.
        self.env = {**os.environ, "SLURM_CONF": str(conf)}
        self._start_watchdog(conf)

        key = root / "munge" / "munge.key"  # owned by root, who runs munged; munged refuses a readable key
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (root / "plugstack.conf").write_text("")  # not /etc/slurm/plugstack.conf
        socket_path = root / "munge" / "munge.socket"
        # -F: in the foreground, so the pid is ours; it then logs to stderr (log/munged.out).
        self._spawn("munged", [_which("munged"), "-F", f"--key-file={key}", f"--socket={socket_path}",
                               f"--pid-file={root}/munge/munged.pid",
                               f"--seed-file={root}/munge/munged.seed"])
        self._wait_for(socket_path.exists, 10, "munged did not create its socket")

        node_line = _node_line()
        self.node = _fields(node_line)["NodeName"]
        conf.write_text(slurm_conf(root, node_line, (_free_port(), _free_port())))
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-f", str(conf)])
        self._spawn("slurmd", [_which("slurmd"), "-D", "-f", str(conf)])
        self._wait_idle()
        exposed = ("SLURM_CONF",)
        self._saved_environ = {name: os.environ.get(name) for name in exposed}
        os.environ.update({name: self.env[name] for name in exposed})

    def _start_watchdog(self, conf: Path) -> None:
        """A process that cleans up if this one dies without stopping the cluster: it waits
        for end-of-file on its stdin, which comes when this process's end of the pipe closes."""
        env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
        self._watchdog = subprocess.Popen(
            [sys.executable, __file__, "--watch", str(self.root), str(conf)], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)

    def _spawn(self, name: str, command: list) -> None:
        with open(self.root / "log" / f"{name}.out", "wb") as out:
            self.processes[name] = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.root, start_new_session=True)

    def _wait_for(self, ready, seconds: float, failure: str) -> None:
        deadline = time.monotonic() + seconds
        while not ready():
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited with status {process.returncode}: "
                                           f"{self._worst_line(name)}", self.logs())
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"{failure} within {seconds:.0f} s", self.logs())
            time.sleep(0.1)

    def _wait_idle(self) -> None:
        """Until sinfo shows the node idle, resuming it if it comes up down or drained."""
        last_resume = 0.0

        def idle() -> bool:
            nonlocal last_resume
            state = self.command("sinfo", "-h", "-n", self.node, "-o", "%T", check=False).stdout.strip()
            if state.rstrip("*~#") in ("down", "drained", "draining") and time.monotonic() - last_resume > 2:
                self.command("scontrol", "update", f"nodename={self.node}", "state=resume", check=False)
                last_resume = time.monotonic()
            return state == "idle"

        self._wait_for(idle, self.start_timeout, f"node {self.node} did not become idle")

    # -- using --------------------------------------------------------------------------

    def command(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a Slurm client command against this cluster; its output as text."""
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                              check=check, timeout=timeout)

    def job_states(self, job_id: str) -> dict[str, str]:
        """The state of each task of a job, e.g. ``{"7_0": "COMPLETED", "7_1": "RUNNING"}``
        (finished jobs stay listed for MinJobAge = 3600 s)."""
        out = self.command("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%i %T").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_finished(self, job_id: str, timeout: float = 30.0) -> dict[str, str]:
        """``job_states`` once every task has finished (or raise TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.job_states(job_id)
            pending = [task for task, state in states.items() if state not in FINISHED]
            # A pending array shows as one line "7_[0-1]" until its tasks start.
            if states and not pending:
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout} s: {states}")
            time.sleep(0.1)

    def logs(self, lines: int = 15) -> str:
        """The last ``lines`` of each daemon's output and log file."""
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def _worst_line(self, name: str) -> str:
        """The daemon's last two error or fatal lines (else its last line), as one line."""
        lines = [line.strip() for path in sorted((self.root / "log").glob(f"{name}*"))
                 for line in path.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower() or "fatal" in line.lower()]
        return " / ".join(errors[-2:]) if errors else (lines[-1] if lines else "(no output)")

    # -- stopping -----------------------------------------------------------------------

    def stop(self) -> None:
        """Cancel every job, stop the daemons this object started, kill any process left
        carrying this cluster's SLURM_CONF (job steps, jobs) and remove the folder."""
        if not self._entered:
            return
        self._entered = False
        atexit.unregister(self.stop)
        slurmctld = self.processes.get("slurmctld")
        if slurmctld is not None and slurmctld.poll() is None:
            self.command("scancel", "--user", "root", check=False, timeout=10)
            deadline = time.monotonic() + 5
            while self.command("squeue", "-h", check=False, timeout=10).stdout.strip():
                if time.monotonic() > deadline:
                    break  # what is left is killed below, by its SLURM_CONF
                time.sleep(0.1)
        for names in (("slurmd", "slurmctld"), ("munged",)):  # slurm talks to munge while stopping
            _terminate([self.processes[name] for name in names if name in self.processes])
        if self.env:
            _kill_cluster(self.env["SLURM_CONF"])
        if self._watchdog is not None:
            self._watchdog.stdin.close()  # the watchdog finds nothing left, and exits
            self._watchdog.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)
        for name, value in (self._saved_environ or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    @property
    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}


def _terminate(processes: list, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whoever is still running after ``grace`` seconds."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cluster_pids(conf: str) -> list[int]:
    """Processes whose environment holds ``SLURM_CONF=conf``, except this one and its ancestors."""
    mark = f"SLURM_CONF={conf}".encode()
    spared, pid = set(), os.getpid()
    while pid > 1:
        spared.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in spared:
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _kill_cluster(conf: str, grace: float = 3.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = cluster_pids(conf)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and cluster_pids(conf) and time.monotonic() < deadline:
            time.sleep(0.1)


def _watch(root: str, conf: str) -> None:
    """The watchdog's body: block until the starting process is gone, then clean up."""
    sys.stdin.buffer.read()
    _kill_cluster(conf, grace=1.0)  # slurmstepd outlives a SIGTERM; SIGKILL comes after the grace
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__" and sys.argv[1:2] == ["--watch"]:
    _watch(*sys.argv[2:4])
