"""Slurm sweeps without a cluster: options, pre-submission checks against stand-in Slurm
commands, arrays through submitit's local executor, states and following. The real
cluster is in test_slurm_sweep.py."""

import argparse
import json
import stat

import pytest

from imp.base.config import run_id
from imp.base.errors import UserError
from runs.lth import slurm
from runs.lth.cli import main
from runs.lth.sweep import finished, load_sweep, read_manifests, run_point, submit_sweep, _plain

SWEEP = """
[model]
widths = [16]
[train]
epochs = "30it"
eval_every = "10it"
[data]
batch_size = 64
[prune]
levels = 1
[sweep]
"train.lr" = [0.1, 0.05]
"""


def cli_args(**given):
    keys = ["partition", "gpus_per_job", "cpus_per_job", "minutes", "mem", "account", "qos", "constraint",
            "array_parallelism", "array_chunk"]
    return argparse.Namespace(**{**{key: None for key in keys}, "sbatch": [], "setup": [], **given})


def fake_slurm(tmp_path, monkeypatch, sinfo: str, squeue: str = "", sacct: str | None = None):
    """Stand-ins for Slurm's commands, alone on PATH, printing canned answers (with the
    shell's own printf: nothing else is on PATH)."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    answers = {"sinfo": sinfo, "squeue": squeue, "sbatch": "", "srun": ""}
    if sacct is not None:
        answers["sacct"] = sacct
    for name, text in answers.items():
        path = folder / name
        assert "'" not in text
        path.write_text(f"#!/bin/sh\nprintf '%s' '{text}'\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", str(folder))


def test_the_slurm_table_and_the_command_line_merge_key_by_key():
    table = {"partition": "cpu", "mem": "8G", "setup": "module load x", "sbatch": {"exclude": "node07"}}
    opts = slurm.options(table, cli_args(partition="gpu", gpus_per_job=1, sbatch=["nice=10"], setup=["echo hi"]))
    assert (opts.partition, opts.mem, opts.gpus_per_job, opts.minutes) == ("gpu", "8G", 1, slurm.DEFAULT_MINUTES)
    assert opts.sbatch == (("exclude", "node07"), ("nice", "10")) and opts.setup == ("module load x", "echo hi")
    assert slurm.options(None) == slurm.SlurmOptions()


@pytest.mark.parametrize("table, given, message", [
    ({"partiton": "x"}, {}, "unknown key 'slurm.partiton'; did you mean 'slurm.partition'?"),
    ({"gpus_per_job": "1"}, {}, "slurm.gpus_per_job must be an integer"),
    ({"setup": [1]}, {}, "slurm.setup must be a list of shell lines"),
    ({"sbatch": "exclude=node07"}, {}, "slurm.sbatch must be a table of sbatch options"),
    ({}, {"minutes": 0}, "slurm.minutes must be at least 1"),
    ({}, {"sbatch": ["array=0-3"]}, "--sbatch array: the sweep sets it itself"),
    ({}, {"sbatch": ["exclude"]}, "--sbatch 'exclude' must look like KEY=VALUE"),
])
def test_bad_slurm_options_are_one_line(table, given, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("?", r"\?")):
        slurm.options(table, cli_args(**given))


SINFO = "debug*|(null)\ngpu|gpu:a100:4\n"


@pytest.mark.parametrize("opts, device, message", [
    (slurm.SlurmOptions(partition="gpus"), "auto", "Slurm has no partition 'gpus'; did you mean 'gpu'?"),
    (slurm.SlurmOptions(gpus_per_job=1), "auto", "partition debug has no GPUs (sinfo shows no gpu resources); "
                                                 "choose a GPU partition with --partition (gpu)"),
    (slurm.SlurmOptions(), "cuda", "--device cuda needs a GPU in every job; add --gpus-per-job 1"),
])
def test_the_cluster_is_checked_before_anything_is_queued(tmp_path, monkeypatch, opts, device, message):
    fake_slurm(tmp_path, monkeypatch, SINFO)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        slurm.preflight(opts, device)
    slurm.preflight(slurm.SlurmOptions(partition="gpu", gpus_per_job=2), "auto")  # fine: says nothing
    assert slurm.partitions() == {"debug": ("", True), "gpu": ("gpu:a100:4", False)}


def test_without_slurm_on_path_the_sweep_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "grid.toml").write_text(SWEEP)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing of Slurm's here
    assert main(["sweep", str(tmp_path / "grid.toml"), "--out", str(tmp_path / "out"), "--executor", "slurm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lth: error: --executor slurm needs Slurm's sbatch, srun, sinfo, squeue on PATH, and they are not "
                   "here; run the sweep on a cluster's login node, or use --executor local or parallel"]
    assert not (tmp_path / "out").exists()


def test_a_job_that_asked_for_a_gpu_and_sees_none_fails_instead_of_training_on_the_cpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    config = load_sweep(write(tmp_path)).configs[0]
    with pytest.raises(UserError, match="this job asked Slurm for a GPU .* but sees none"):
        run_point(_plain(config), str(tmp_path / "out"), 1, "auto", 1, False, True)
    assert not (tmp_path / "out").exists()


def write(tmp_path, text=SWEEP):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    return path


def test_points_go_as_one_array_with_labels_and_finished_points_are_not_submitted_again(tmp_path):
    submitit = pytest.importorskip("submitit")
    sweep = load_sweep(write(tmp_path))
    assert sweep.labels == ["lr=0.1", "lr=0.05"]
    out = tmp_path / "out"
    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    executor.update_parameters(timeout_min=10)
    lines = []
    jobs = submit_sweep(sweep, out, executor, device="cpu", report=lines.append)
    assert [job.result() for job in jobs] == [f"{run_id(c)}: done" for c in sweep.configs]
    ids = [run_id(c) for c in sweep.configs]
    assert lines == [f"lr=0.1 ({ids[0]}): submitted as job {jobs[0].job_id}",
                     f"lr=0.05 ({ids[1]}): submitted as job {jobs[1].job_id}"]
    (manifest,) = read_manifests(out)
    assert manifest["jobs"] == {i: str(job.job_id) for i, job in zip(ids, jobs)}
    assert manifest["labels"] == dict(zip(ids, sweep.labels))
    assert all(finished(c, out, 1) for c in sweep.configs)
    assert not finished(sweep.configs[0], out, 2)  # a second replicate is work left
    lines.clear()
    assert submit_sweep(sweep, out, executor, device="cpu", report=lines.append) == []
    assert lines == [f"lr=0.1 ({ids[0]}): already finished, not submitted",
                     f"lr=0.05 ({ids[1]}): already finished, not submitted"]
    assert read_manifests(out)[0]["jobs"] == manifest["jobs"]  # the jobs that did the work are kept


def test_a_point_still_in_the_queue_is_not_submitted_twice(tmp_path):
    submitit = pytest.importorskip("submitit")
    sweep = load_sweep(write(tmp_path))
    out = tmp_path / "out"
    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    first = submit_sweep(sweep, out, executor, device="cpu", report=lambda line: None)
    [job.result() for job in first]
    manifest = read_manifests(out)[0]
    (out / run_id(sweep.configs[0])).rename(tmp_path / "gone")  # as if point 0 had not run
    lines = []
    queued = {manifest["jobs"][run_id(sweep.configs[0])]: "PENDING"}
    assert submit_sweep(sweep, out, executor, device="cpu", report=lines.append,
                        in_queue=lambda jobs: {j: s for j, s in queued.items() if j in jobs}) == []
    assert lines[0].endswith(f"still pending as job {manifest['jobs'][run_id(sweep.configs[0])]}, not submitted again")


def test_states_and_follow_from_the_queue_the_files_and_the_logs(tmp_path, monkeypatch):
    ids = ["aaaa", "bbbb", "cccc", "dddd"]
    manifest = {"name": "grid", "runs": ids, "labels": {"aaaa": "lr=0.1"},
                "jobs": {"aaaa": "7_0", "bbbb": "7_1", "cccc": "7_2"}}
    fake_slurm(tmp_path, monkeypatch, SINFO, squeue="7_1|RUNNING\n7_2|PENDING\n")
    states = slurm.states(manifest, lambda run: run == "aaaa")
    assert states == {"aaaa": ("done", "finished"), "bbbb": ("running", "RUNNING"), "cccc": ("queued", "PENDING"),
                      "dddd": ("not submitted", "")}
    fake_slurm(tmp_path, monkeypatch, SINFO, squeue="", sacct="7_1|CANCELLED by 0\n7_2|TIMEOUT\n")
    logs = slurm.log_folder(tmp_path / "out")
    logs.mkdir(parents=True)
    (logs / "7_1_0_log.err").write_text("".join(f"line {i}\n" for i in range(30)) + "bbbb replicate 0 level_1: x\n")
    lines = []
    assert slurm.follow(manifest, tmp_path / "out", lambda run: run == "aaaa", poll=0, report=lines.append) == 1
    assert lines[:4] == ["lr=0.1 (aaaa) job 7_0: done", "bbbb job 7_1: failed (CANCELLED)",
                         "cccc job 7_2: failed (TIMEOUT)", "dddd job -: not submitted"]
    assert lines[4].startswith("bbbb job 7_1 ended without finishing: its log ends\n    line 21")
    assert lines[4].endswith("    bbbb replicate 0 level_1: x")
    assert lines[-1] == "sweep grid: 1/4 runs done, 3 not"
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # no sacct: the files and the queue are enough
    assert slurm.states(manifest, lambda run: False)["bbbb"] == ("failed", "gone from the queue, not finished")
    everything = {**manifest, "runs": ["aaaa"]}
    assert slurm.follow(everything, tmp_path / "out", lambda run: True, poll=0, report=lambda line: None) == 0


def test_ls_shows_a_slurm_sweeps_points_jobs_and_states(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    (out / "sweeps").mkdir(parents=True)
    manifest = {"name": "grid", "replicates": 1, "runs": ["aaaa", "bbbb"], "labels": {"aaaa": "lr=0.1", "bbbb": "lr=0.05"},
                "jobs": {"aaaa": "7_0", "bbbb": "7_1"}}
    (out / "sweeps" / "grid.json").write_text(json.dumps(manifest))
    fake_slurm(tmp_path, monkeypatch, SINFO, squeue="7_0|PENDING\n7_1|RUNNING\n")
    assert main(["ls", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sweep grid (Slurm):" in text
    rows = [line.split() for line in text.splitlines()[text.splitlines().index("sweep grid (Slurm):") + 2:]]
    assert rows == [["lr=0.1", "aaaa", "7_0", "queued", "(PENDING)"], ["lr=0.05", "bbbb", "7_1", "running"]]


def test_every_option_reaches_the_job_script(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    fake_slurm(tmp_path, monkeypatch, SINFO)
    opts = slurm.options({"mem": "16G", "account": "proj", "qos": "normal", "constraint": "a100",
                          "setup": ["module load cuda/12.4"], "sbatch": {"exclude": "node07"}},
                         cli_args(partition="gpu", gpus_per_job=1, cpus_per_job=4, minutes=90, array_parallelism=3,
                                  sbatch=["nice=10"], setup=["echo ready"]))
    made = slurm.executor(tmp_path / "out", "grid", opts)
    script = made._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    lines = script.splitlines()
    for expected in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=4",
                     "#SBATCH --time=90", "#SBATCH --mem=16G", "#SBATCH --account=proj", "#SBATCH --qos=normal",
                     "#SBATCH --constraint=a100", "#SBATCH --exclude=node07", "#SBATCH --nice=10",
                     "#SBATCH --job-name=lth:grid", "module load cuda/12.4", "echo ready"):
        assert expected in lines, expected
    assert lines.index("module load cuda/12.4") < lines.index("echo ready") < next(
        i for i, line in enumerate(lines) if "submitit.core._submit" in line)
    assert made._executor.parameters.get("array_parallelism") == 3


class RecordingExecutor:
    """Stands in for submitit's: records which submissions went together in one batch."""

    def __init__(self):
        self.batches, self.current, self.count = [], None, 0

    def batch(self):
        import contextlib

        @contextlib.contextmanager
        def together():
            self.current = []
            yield
            self.batches.append(self.current)
            self.current = None
        return together()

    def submit(self, function, *args):
        self.count += 1
        self.current.append(args)
        return argparse.Namespace(job_id=f"9_{self.count - 1}")


@pytest.mark.parametrize("chunk, sizes", [(0, [5]), (2, [2, 2, 1]), (5, [5])])
def test_arrays_are_chunked_for_clusters_that_cap_their_length(chunk, sizes):
    made = RecordingExecutor()
    jobs = slurm.submit(made, print, [(i,) for i in range(5)], chunk)
    assert [len(b) for b in made.batches] == sizes
    assert [b for batch in made.batches for b in batch] == [(i,) for i in range(5)] and len(jobs) == 5
