"""`lth sweep --executor slurm` against a real Slurm (tests/runs/slurm_cluster.py: munged,
slurmctld and slurmd on this machine): one job array, a job cancelled mid-run, the
sweep submitted again, and every stored number equal to a local sweep's. Skipped, with
the reason, where the daemons cannot start."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from imp.base import store
from imp.base.config import run_id
from runs.lth import slurm
from runs.lth.cli import main
from runs.lth.sweep import check_points, finished, load_sweep, read_manifests

REPO = Path(__file__).resolve().parents[2]
SWEEP = """
[model]
widths = [256, 256]
[train]
epochs = "1000it"
eval_every = "500it"
[data]
batch_size = 256
[prune]
levels = 3
[sweep]
"train.lr" = [0.1, 0.05]
"""


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"waited {seconds:.0f} s for {what}"
        time.sleep(0.05)


def numbers(out, config) -> dict:
    """Every stored level's weights and final metrics of a run."""
    run = store.RunDir(out, run_id(config))
    found = {}
    for stage in sorted(run.stages(0)):
        if stage.startswith("level_"):
            tree = store.read_h5(run.stage_file(0, stage), only=("weights", "final"))
            found[stage] = tree
    return found


def test_a_sweep_runs_as_one_array_survives_a_cancel_and_matches_a_local_sweep(slurm_cluster, tmp_path, capsys):
    path = tmp_path / "grid.toml"
    path.write_text(SWEEP)
    out = tmp_path / "slurm"
    argv = ["sweep", str(path), "--out", str(out), "--executor", "slurm", "--cpus-per-job", "1", "--minutes", "10",
            "--array-parallelism", "1", "--mem", "1G", "--qos", "normal", "--account", "lth",
            "--setup", "echo setup line ran"]
    assert main(argv + ["--partition", "nope"]) == 2  # checked before anything is queued
    assert "Slurm has no partition 'nope'; its partitions: debug" in capsys.readouterr().err
    assert main(argv + ["--gpus-per-job", "1"]) == 2
    assert "partition debug has no GPUs" in capsys.readouterr().err
    assert not out.exists()

    # the same sweep locally, on the core the one-at-a-time jobs leave free, to compare with
    local = subprocess.Popen([sys.executable, "-m", "runs.lth.cli", "sweep", str(path), "--out", str(tmp_path / "local"),
                              "--threads", "1", "--silent"], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    assert main(argv) == 0
    said = capsys.readouterr().out
    sweep = check_points(load_sweep(path), out, report=lambda line: None)  # as submitted: canonical ids
    ids = [run_id(c) for c in sweep.configs]
    (manifest,) = read_manifests(out)
    jobs = [manifest["jobs"][i] for i in ids]
    assert len({job.split("_")[0] for job in jobs}) == 1 and [job.split("_")[1] for job in jobs] == ["0", "1"]
    assert f"lr=0.05 ({ids[1]}): submitted as job {jobs[1]}" in said
    base = jobs[0].split("_")[0]  # squeue -j also matches an earlier array task whose raw id is base
    listed = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-j", base, "-o", "%i|%j"],
                            capture_output=True, text=True, env=slurm_cluster.env).stdout.split()
    assert {line.split("|")[1] for line in listed if line.startswith(f"{base}_")} == {"lth:grid"}

    # The second task (it runs after the first: parallelism 1) is cancelled once level 0 is
    # stored. Its step gets SIGTERM, which submitit ignores (Slurm's warning before
    # preemption), and is killed KillWait + 2 s (4 s here) later: by then it has stored at
    # most another level or two (2 s each), never level 3.
    second = out / ids[1] / "replicate_0"
    wait_for(lambda: (second / "level_0.h5").is_file(), 300, "the second point's level 0")
    subprocess.run(["scancel", jobs[1]], check=True, env=slurm_cluster.env)
    lines = []
    configs = dict(zip(ids, sweep.configs))
    assert slurm.follow(manifest, out, lambda i: finished(configs[i], out, 1), poll=0.5, report=lines.append) == 1
    assert f"lr=0.1 ({ids[0]}) job {jobs[0]}: done" in lines
    assert any(line.startswith(f"lr=0.05 ({ids[1]}) job {jobs[1]}: failed (CANCELLED") for line in lines)
    assert lines[-1] == "sweep grid: 1/2 runs done, 1 not"
    kept = sorted(p.name for p in second.glob("level_*.h5"))
    assert "level_0.h5" in kept and "level_3.h5" not in kept

    # submitted again: only the cancelled point, which resumes; --follow waits for it
    assert main(argv + ["--follow", "--poll", "0.5"]) == 0
    said = capsys.readouterr().out
    assert f"lr=0.1 ({ids[0]}): already finished, not submitted" in said
    again = read_manifests(out)[0]["jobs"]
    assert again[ids[0]] == jobs[0] and again[ids[1]] != jobs[1]
    assert said.splitlines()[-1] == "sweep grid: 2/2 runs done"
    log = slurm.log_tail(out, again[ids[1]], lines=200)
    assert any(f"{ids[1]} replicate 0 level_3: density" in line for line in log)  # progress lines in the job's log
    assert not any("level_0: density" in line for line in log)  # level 0 was kept, not trained again
    from submitit.core.utils import JobPaths

    assert "setup line ran" in JobPaths(slurm.log_folder(out), again[ids[1]], 0).stdout.read_text()

    assert local.wait(timeout=300) == 0, local.stderr.read()
    for config in sweep.configs:
        here, there = numbers(out, config), numbers(tmp_path / "local", config)
        assert sorted(here) == sorted(there) == ["level_0", "level_1", "level_2", "level_3"]
        for stage in here:
            assert here[stage]["final"] == there[stage]["final"]
            for name, value in there[stage]["weights"].items():
                np.testing.assert_array_equal(here[stage]["weights"][name], value, err_msg=f"{stage} {name}")
    assert main(["ls", str(out)]) == 0
    assert "sweep grid (Slurm):" in capsys.readouterr().out
