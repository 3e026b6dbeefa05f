"""Kill and resume: ``lth run`` and ``lth sweep`` killed (SIGKILL) at random moments, over
and over, then finished, must leave exactly the files of an uninterrupted run.

Each attempt resumes the same results folder and dies by one of three kinds of kill:
inside its N-th file write (``LTH_TEST_KILL_IN_WRITE``, after the data and before the
rename), at a random time, or shortly after the last trunk stage of level 1 appears,
which is when the landscape stages of that level run. After every kill, every stored
file must open and no stage finished before the attempt may have been rewritten. The
attempts stop at a time budget; the last run completes, and every stored number must
equal the uninterrupted run's.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from imp.base import store
from runs.lth.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = ["model.widths=[32, 16]", "train.epochs='6ep'", "train.eval_every='3ep'", "data.batch_size=64",
        "prune.levels=2", "prune.baselines=['reinit']",
        "landscape.successive=true", "landscape.siblings=2", "landscape.sibling_levels=[1]",
        "landscape.points=5", "landscape.examples=200"]
# The measurements that rank the whole training set (not for the sweep's [subset] runs).
RANKED = ["landscape.groups=true", "landscape.group_score_step='20it'", "landscape.ntk=true",
          "landscape.ntk_examples=4", "landscape.ntk_points=3", "landscape.ntk_score_step='20it'"]
DIET = ["diet.pretrain='10it'", "diet.subset='random'", "diet.size=300"]  # the run rewinds to a diet
SETTINGS = [item for setting in TINY + RANKED + DIET for item in ("--set", setting)]
SUBSET = ["subset.keep=0.5", "subset.score_step='10it'"]  # the sweep trains on the hardest half
SWEEP = "\n".join(["[sweep]", '"train.lr" = [0.1, 0.05]'])  # the sweep rewinds to step 10
TIMING = {"train_seconds", "provenance"}  # what may differ between two identical runs


def test_lth_run_killed_at_random_moments_resumes_to_the_uninterrupted_result(tmp_path):
    assert main(["run", "--out", str(tmp_path / "whole"), "--quiet", *SETTINGS]) == 0
    kill_and_resume(lambda out: ["run", "--out", str(out), "--quiet", *SETTINGS], tmp_path, budget=25)


def test_lth_sweep_killed_at_random_moments_resumes_to_the_uninterrupted_result(tmp_path):
    sweep = tmp_path / "grid.toml"
    sweep.write_text(toml([*TINY, "prune.rewind='10it'", *SUBSET]) + SWEEP)
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "whole"), "--threads", "1"]) == 0
    kill_and_resume(lambda out: ["sweep", str(sweep), "--out", str(out), "--threads", "1"], tmp_path, budget=15)


def kill_and_resume(arguments, tmp_path: Path, budget: float) -> None:
    """Until ``budget`` seconds have passed, start over in a new folder: run the command
    (``arguments(out)``) and SIGKILL it again and again until it gets to finish; check
    the folder after each kill, and the finished folder against ``tmp_path / "whole"``."""
    seed = int.from_bytes(os.urandom(4), "little")
    rng, kills, deadline = random.Random(seed), [], time.monotonic() + budget
    kinds = ["write", "landscape", "time"]
    while not kills or time.monotonic() < deadline:  # a cycle runs on until its run completes
        out = tmp_path / f"killed_{len(kills)}"
        command = [sys.executable, "-m", "runs.lth.cli", *arguments(out)]
        while True:
            finished = stage_files(out)
            kind = kinds[len(kills) % len(kinds)] if time.monotonic() < deadline else "none"
            kill = start_and_kill(command, out, kind, rng)
            if kill is None:  # the attempt finished before its kill
                break
            kills.append(kill)
            context = f"(seed {seed}, kills {kills})"
            for path in stored_files(out):
                store.read_h5(path)  # raises if a kill left a file unreadable
            rewritten = [str(p.relative_to(out)) for p in finished if stamp(p) != finished[p]]
            assert not rewritten, f"finished stages were written again: {rewritten} {context}"
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 0, f"{done.stderr} (seed {seed}, kills {kills})"
        assert not [p for p in out.rglob("*") if p.name.endswith(store.TEMPORARY_SUFFIX)]
        assert_same_results(tmp_path / "whole", out, f"(seed {seed}, kills {kills})")
    print(kills)


def start_and_kill(command: list[str], out: Path, kind: str, rng: random.Random) -> str | None:
    """One attempt; returns a description of the kill, or None if the command finished."""
    if kind == "none":
        return None
    env = dict(os.environ)
    if kind == "write":
        nth = rng.randint(1, 4)
        env[store.KILL_IN_WRITE] = str(nth)
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        if kind == "write":
            process.wait(timeout=120)
            return None if process.returncode == 0 else f"in write {nth}"
        if kind == "landscape" and not any(out.rglob("level_1_reinit.h5")):
            while not any(out.rglob("level_1_reinit.h5")):
                if process.poll() is not None:
                    return None
                time.sleep(0.005)
            delay = rng.uniform(0.0, 0.3)
        else:
            kind, delay = "time", rng.uniform(1.0, 5.0)  # the interpreter and torch take ~2 s to start
        time.sleep(delay)
        if process.poll() is not None:
            return None
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        return f"{kind} +{delay:.2f}s"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        assert process.returncode in (0, -signal.SIGKILL), process.stderr.read().decode()
        process.stderr.close()


def stored_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.h5") if not p.name.startswith("."))


def stage_files(out: Path) -> dict[Path, tuple[int, int]]:
    """Every finished stage file (not run.h5, which a resume may rewrite) and its identity."""
    return {p: stamp(p) for p in stored_files(out) if p.name != store.RUN_FILE and "scores" not in p.parts}


def stamp(path: Path) -> tuple[int, int]:
    """A file's inode and modification time: a rewrite (a new file renamed over it) changes both."""
    status = path.stat()
    return status.st_ino, status.st_mtime_ns


def assert_same_results(whole: Path, killed: Path, context: str) -> None:
    """Every stored file of ``killed`` holds the numbers of ``whole``'s (timings, provenance
    and the folder's own name in stored paths aside)."""
    names = [p.relative_to(whole) for p in stored_files(whole)]
    assert [p.relative_to(killed) for p in stored_files(killed)] == names, context
    for name in names:
        assert_same_tree(store.read_h5(whole / name), store.read_h5(killed / name), f"{name} {context}",
                         (str(killed), str(whole)))


def assert_same_tree(a: dict, b: dict, where: str, folders: tuple[str, str]) -> None:
    assert set(a) == set(b), where
    for key in set(a) - TIMING:
        if isinstance(a[key], dict):
            assert_same_tree(a[key], b[key], f"{where}: {key}", folders)
        elif isinstance(a[key], str):
            assert a[key] == b[key].replace(*folders), f"{where}: {key}"
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{where}: {key}")


def toml(settings: list[str]) -> str:
    """The ``--set section.key=value`` settings as a TOML file."""
    sections: dict[str, list[str]] = {}
    for setting in settings:
        key, value = setting.split("=", 1)
        section, name = key.split(".", 1)
        sections.setdefault(section, []).append(f"{name} = {value}")
    return "".join(f"[{section}]\n" + "\n".join(lines) + "\n\n" for section, lines in sections.items())
