import numpy as np
import pytest

from imp.base import store
from imp.base.config import run_id
from imp.base.errors import UserError
from runs.lth.cli import main
from runs.lth.sweep import load_sweep, read_manifests, run_point, run_sweep, submit_sweep, _plain

SWEEP = """
[model]
widths = [16]
[train]
epochs = "40it"
eval_every = "20it"
[data]
batch_size = 64
[prune]
levels = 1
[sweep]
"prune.rewind" = ["0it", "10it"]
"train.lr" = [0.1, 0.05]
replicates = 2
"""


def write(tmp_path, text=SWEEP, name="grid.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_grid_expands_in_the_order_written(tmp_path):
    sweep = load_sweep(write(tmp_path))
    assert sweep.name == "grid" and sweep.replicates == 2
    points = [(str(c.prune.rewind), c.train.lr) for c in sweep.configs]
    assert points == [("0it", 0.1), ("0it", 0.05), ("10it", 0.1), ("10it", 0.05)]
    assert len({run_id(c) for c in sweep.configs}) == 4
    assert all(c.model.widths == (16,) and c.prune.levels == 1 for c in sweep.configs)


def test_set_changes_the_base_config_of_every_point(tmp_path):
    sweep = load_sweep(write(tmp_path), ["model.widths=[8]", "prune.levels=2"])
    assert all(c.model.widths == (8,) and c.prune.levels == 2 for c in sweep.configs)
    assert [c.train.lr for c in sweep.configs] == [0.1, 0.05, 0.1, 0.05]  # the axes as written
    with pytest.raises(UserError, match="train.lr is an axis of the sweep; change its values in"):
        load_sweep(write(tmp_path), ["train.lr=0.3"])
    with pytest.raises(UserError, match="unknown key 'model.widht'"):
        load_sweep(write(tmp_path), ["model.widht=[8]"])


def test_a_linked_axis_sets_its_keys_together(tmp_path):
    text = SWEEP.replace('"train.lr" = [0.1, 0.05]',
                         '"diet.subset,diet.size,diet.pretrain" = [["all", 0, "0it"], ["easy", 50, "10it"]]')
    sweep = load_sweep(write(tmp_path, text))
    points = [(str(c.prune.rewind), c.diet.subset, c.diet.size, str(c.diet.pretrain)) for c in sweep.configs]
    assert points == [("0it", "all", 0, "0it"), ("0it", "easy", 50, "10it"),
                      ("10it", "all", 0, "0it"), ("10it", "easy", 50, "10it")]


@pytest.mark.parametrize("text, message", [
    (SWEEP.replace('"prune.rewind"', '"prune.rewnd"'), "unknown key 'prune.rewnd'; did you mean 'prune.rewind'?"),
    (SWEEP.replace('"train.lr" = [0.1, 0.05]', '"train.lr" = []'), "sweep axis 'train.lr' needs a non-empty list"),
    (SWEEP.replace('"train.lr"', '"lr"'), "sweep axis 'lr' must look like section.key"),
    (SWEEP.replace("replicates = 2", "replicates = 0"), "sweep.replicates must be a positive integer"),
    (SWEEP.replace('"train.lr" = [0.1, 0.05]', '"train.lr,train.momentum" = [[0.1, 0.9], [0.1]]'),
     "the linked sweep axis 'train.lr,train.momentum' needs lists of 2 values, one per key"),
    (SWEEP.replace('"train.lr" = [0.1, 0.05]', '"train.lr,train.momentm" = [[0.1, 0.9]]'),
     "did you mean 'train.momentum'?"),
    (SWEEP.replace('"train.lr" = [0.1, 0.05]', '"diet.subset,diet.size" = [["easy", 0]]'),
     "diet.size must be positive for diet.subset = 'easy' (at the sweep point prune.rewind = '0it', "
     "diet.subset = 'easy', diet.size = 0)"),
    (SWEEP.split("[sweep]")[0], "has no [sweep] table; `lth run` takes plain run configs"),
    (SWEEP.replace('[0.1, 0.05]', '[0.1, -1.0]'), "train.lr must be positive"),
])
def test_bad_sweep_files(tmp_path, text, message):
    with pytest.raises(UserError) as error:
        load_sweep(write(tmp_path, text))
    assert message in str(error.value)


def test_a_sweep_file_given_to_lth_run_is_named(tmp_path, capsys):
    assert main(["run", str(write(tmp_path)), "--out", str(tmp_path)]) == 2
    assert "is a sweep file (it has a [sweep] table); run it with `lth sweep" in capsys.readouterr().err


def finals(out, sweep):
    return {run_id(c): store.read_h5(store.RunDir(out, run_id(c)).stage_file(r, "level_1"))["weights"]
            for c in sweep.configs for r in range(sweep.replicates)}


def test_sequential_and_parallel_sweeps_agree_and_resume(tmp_path, capsys):
    sweep = load_sweep(write(tmp_path, SWEEP.replace('"train.lr" = [0.1, 0.05]', '"train.lr" = [0.1]')))
    lines = []
    run_sweep(sweep, tmp_path / "seq", threads=1, report=lines.append)
    assert [line.split(": ")[1] for line in lines] == ["done", "done"]
    files = sorted((tmp_path / "seq").rglob("level_*.h5"))
    assert len(files) == 2 * 2 * 2  # runs x replicates x levels
    stamps = [f.stat().st_mtime_ns for f in files]
    run_sweep(sweep, tmp_path / "seq", threads=1, report=lines.append)  # resume: nothing to do
    assert [f.stat().st_mtime_ns for f in files] == stamps

    run_sweep(sweep, tmp_path / "par", workers=2, threads=1, report=lines.append)
    sequential, parallel = finals(tmp_path / "seq", sweep), finals(tmp_path / "par", sweep)
    for key in sequential:
        np.testing.assert_array_equal(sequential[key]["fc1.weight"], parallel[key]["fc1.weight"])
    assert read_manifests(tmp_path / "par")[0]["runs"] == [run_id(c) for c in sweep.configs]
    assert main(["ls", str(tmp_path / "par")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "sweep grid: 2/2 runs done, 0 running"


def test_every_point_is_checked_against_its_data_before_any_trains(tmp_path, capsys, monkeypatch):
    """The second point's data set is missing: one line naming it, and the first point,
    which alone would train, has not started."""
    monkeypatch.setenv("LTH_DATA", str(tmp_path / "no-data"))
    path = write(tmp_path, SWEEP.replace('"train.lr" = [0.1, 0.05]', '"data.dataset" = ["digits", "mnist"]')
                 .replace('"prune.rewind" = ["0it", "10it"]', '"prune.rewind" = ["0it"]'))
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "lth: error: sweep point " in err and "mnist" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_a_run_held_elsewhere_is_skipped(tmp_path):
    config = load_sweep(write(tmp_path)).configs[0]
    with store.RunLock(store.RunDir(tmp_path, run_id(config))):
        line = run_point(_plain(config), str(tmp_path), 1, "cpu", 1)
    assert line == f"{run_id(config)}: skipped, another process is writing it"
    assert not list(tmp_path.rglob("level_*.h5"))


def test_the_slurm_path_through_submitits_local_executor(tmp_path):
    submitit = pytest.importorskip("submitit")
    sweep = load_sweep(write(tmp_path, SWEEP.replace('"train.lr" = [0.1, 0.05]', '"train.lr" = [0.1]')))
    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    executor.update_parameters(timeout_min=10)
    lines = []
    jobs = submit_sweep(sweep, tmp_path / "out", executor, device="cpu", report=lines.append)
    assert [job.result() for job in jobs] == [f"{run_id(c)}: done" for c in sweep.configs]
    assert all("submitted as job" in line for line in lines)
    assert len(list((tmp_path / "out").rglob("level_1.h5"))) == 2 * 2


def test_a_sweep_passes_each_runs_progress_lines_through(tmp_path, capfd):
    from runs.lth.cli import main

    text = SWEEP.replace('"train.lr" = [0.1, 0.05]\n', "").replace("replicates = 2", "replicates = 1")
    assert main(["sweep", str(write(tmp_path, text)), "--out", str(tmp_path / "out"), "--threads", "1"]) == 0
    err = capfd.readouterr().err
    ids = {run_id(c) for c in load_sweep(write(tmp_path, text)).configs}
    for name in ids:
        assert f"{name} replicate 0 level_0: density 100.00%" in err and f"{name} replicate 0 level_1:" in err
    assert main(["sweep", str(write(tmp_path, text)), "--out", str(tmp_path / "quiet"), "--threads", "1",
                 "--silent"]) == 0
    captured = capfd.readouterr()
    assert "level_0" not in captured.err and "replicate 0" not in captured.err  # --silent: no progress lines
    assert all(f"{name}: done" in captured.out for name in ids)  # what each point did is still said


def test_sigterm_stops_the_parallel_workers_and_a_rerun_resumes(tmp_path):
    """SIGTERM to `lth sweep --executor parallel`: the sweep and both its workers stop
    (nothing of its process group is left running), and the same command then finishes
    every point."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    path = write(tmp_path, SWEEP.replace('epochs = "40it"', 'epochs = "1000it"')
                 .replace('"train.lr" = [0.1, 0.05]', '"train.lr" = [0.1]').replace("replicates = 2", ""))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "runs.lth.cli", "sweep", str(path), "--out", str(out),
               "--executor", "parallel", "--workers", "2", "--threads", "1"]
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(command, cwd=repo, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*/replicate_0"))) < 2:  # both workers have started their runs
        assert process.poll() is None and time.monotonic() < deadline, "the workers never started"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143 and "rerun the sweep to resume" in err and "Traceback" not in err
    deadline = time.monotonic() + 30
    while True:  # every process of the sweep's group is gone (the workers were stopped)
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() < deadline, "a worker of the stopped sweep is still running"
        time.sleep(0.2)
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert [line.split(": ")[1] for line in done.stdout.splitlines()] == ["done", "done"]


def test_two_points_that_are_the_same_run_run_once(tmp_path, capsys):
    """'1ep' and '23it' are the same rewind point on digits at batch 64 (23 iterations per
    epoch), and subset rules at subset.keep = 1 all train on everything."""
    path = write(tmp_path, SWEEP.replace('"prune.rewind" = ["0it", "10it"]', '"prune.rewind" = ["1ep", "23it"]')
                 .replace('"train.lr" = [0.1, 0.05]', '"subset.rule" = ["hardest", "random"]')
                 .replace("replicates = 2", "replicates = 1"))
    assert main(["sweep", str(path), "--out", str(tmp_path / "out"), "--silent"]) == 0
    captured = capsys.readouterr()
    assert "points 1 and 2 are the same run" in captured.err and "points 1 and 3" in captured.err
    assert "points 1 and 4" in captured.err and captured.out.count(": done") == 1
    assert len([p for p in (tmp_path / "out").iterdir() if (p / "run.h5").is_file()]) == 1
