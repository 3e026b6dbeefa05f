"""Two ``lth sweep`` processes on one sweep file and one results folder, started together,
share the runs through the run locks: every run finishes, every stage file is written
exactly once, and the results equal a sweep run alone."""

import subprocess
import sys
import time
from pathlib import Path

from imp.base import store
from runs.lth.cli import main
from tests.runs.test_kill import REPO, TINY, assert_same_results, stamp, stored_files, toml

GRID = "\n".join(["[sweep]", '"train.lr" = [0.1, 0.05, 0.02]', "replicates = 2"])


def test_two_sweep_processes_finish_every_run_exactly_once(tmp_path):
    sweep = tmp_path / "grid.toml"
    sweep.write_text(toml(TINY) + GRID)
    out = tmp_path / "shared"
    command = [sys.executable, "-m", "runs.lth.cli", "sweep", str(sweep), "--out", str(out), "--threads", "1"]
    processes = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    first_seen: dict[Path, tuple[int, int]] = {}
    while any(p.poll() is None for p in processes):
        watch(out, first_seen)
        time.sleep(0.01)
    watch(out, first_seen)
    outputs = [p.communicate() for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err for _, err in outputs]

    # each run was computed by one process; the other found it locked, or already finished
    lines = [dict(line.split(": ", 1) for line in out_.splitlines() if ": " in line and "sweep" not in line)
             for out_, _ in outputs]
    run_ids = sorted(lines[0])
    assert len(run_ids) == 3 and sorted(lines[1]) == run_ids
    assert all(a == "done" or b == "done" for a, b in zip(*(  # at least one finished it
        [line[r] for r in run_ids] for line in lines)))
    rewritten = [str(p) for p, first in first_seen.items() if p.exists() and stamp(p) != first]
    assert not rewritten, f"written twice: {rewritten}"
    assert len([p for p in first_seen if p.name != store.RUN_FILE]) == 3 * 2 * 10  # runs x replicates x stages

    assert main(["sweep", str(sweep), "--out", str(tmp_path / "alone"), "--threads", "1"]) == 0
    assert_same_results(tmp_path / "alone", out, "(two processes vs one)")


def watch(out: Path, first_seen: dict[Path, tuple[int, int]]) -> None:
    """Remember the identity (inode, mtime) each stage file had when first seen."""
    for path in stored_files(out) if out.is_dir() else ():
        if path.name != store.RUN_FILE:  # run.h5 is updated in place by design (plan, settings)
            try:
                first_seen.setdefault(path, stamp(path))
            except FileNotFoundError:
                pass
