"""Every benchmark under runs/bench, each in its own process, then one summary table.

    PYTHONPATH=. python -m runs.bench [--quick] [--only NAME ...]

Runs ``python -m runs.bench.<name>`` for each script in :data:`BENCHMARKS` as a
subprocess (a clean process each: no warm caches, thread settings or allocations carried
over), echoes its output as it comes, and ends with one table:
benchmark | what is compared | ratio (toolkit vs baseline) | target | met?. Every ratio is
"how many times better the toolkit is": above 1 means the toolkit is faster or needs
fewer products. ``--quick`` passes each script its smallest sensible arguments
(:attr:`Benchmark.quick`); the ratios then come from fewer examples and repeats and
move more from run to run.

The ratios are read from the lines the scripts already print, one regular expression
per number, whose group ``ratio`` is the number taken (the first match in the output):

==================  ==========================================================================
script              line read (the number taken in <angle brackets>)
==================  ==========================================================================
train_throughput    ``ratio (toolkit / baseline examples per second): <6.55>``
grand_speed         ``LeNet-300-100 ratios: toolkit / naive <48.3>, toolkit / vmap 110.1`` and
                    ``ResNet-20 ratio: toolkit / naive <1.1> (1.3 in chunks of 64)``
barrier_speed       ``ratio naive / toolkit auto: <4.26> (plain 1.02)``
hessian_speed       after the ``**dense**`` heading, and again after ``**pruned ...**``:
                    ``at tol 1e-3 (both defaults): PyHessian / toolkit HVPs <5.4>x, ...``
imp_end_to_end      ``ratio (plain / toolkit seconds): <1.28>``
prune_limit_cost    ``ratio (old / new error against exact): <269.5>``
batched_replicates  ``ratio sequential / batched: LeNet-300-100 <0.68>x, ResNet-20 <0.73>x``
                    (one line, both numbers; "toolkit" here is the batched trainer)
data_path           ``ratio (previous / toolkit seconds): <0.91> (CIFAR-10-shaped; ...)``
==================  ==========================================================================

A new script should print its ratio as one line ``ratio (<what> / <what>): <number>``
and get an entry in :data:`BENCHMARKS`. A script that fails, or whose line is missing,
shows as such in the table and makes the exit status 1; a target not met does not
(timings depend on the machine and its load). A target the runner cannot judge, such as
batched_replicates' "> 1 on GPU" while every script runs with its default (CPU)
arguments, is given as text (:attr:`Ratio.target_text`) and its "met?" is "-".
"""

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runs.bench.train_throughput import machine_facts

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"(?P<ratio>\d+(?:\.\d+)?)"


@dataclass(frozen=True)
class Ratio:
    """One number read from a script's output: group ``ratio`` of the first match of ``pattern``."""

    compared: str  # what is compared, as the table says it
    pattern: str
    target: float | None = None  # the toolkit should reach at least this; None = reported only
    target_text: str | None = None  # shown as the target instead, for a target the table cannot
    # judge here (e.g. one that holds only on a GPU, while the runner runs on the CPU)


@dataclass(frozen=True)
class Benchmark:
    name: str  # the module runs.bench.<name>
    quick: tuple[str, ...]  # arguments for --quick
    ratios: tuple[Ratio, ...]


BENCHMARKS = (
    Benchmark("train_throughput", ("--repeats", "1"), (
        Ratio("training examples/s, LeNet-300-100 on MNIST: resident tensors / DataLoader",
              r"^ratio \(toolkit / baseline examples per second\): " + NUMBER),
    )),
    Benchmark("grand_speed", ("--repeats", "1", "--examples", "512", "--naive-examples", "64",
                              "--conv-examples", "64", "--conv-naive-examples", "8"), (
        Ratio("GraNd examples/s, LeNet-300-100: ghost norms / naive per-example loop",
              r"^LeNet-300-100 ratios: toolkit / naive " + NUMBER, target=30),
        Ratio("GraNd examples/s, ResNet-20: toolkit / naive per-example loop",
              r"^ResNet-20 ratio: toolkit / naive " + NUMBER),
    )),
    Benchmark("barrier_speed", ("--repeats", "1", "--examples", "2048"), (
        Ratio("seconds per 25-point LMC curve: naive loop / evaluate_path (auto)",
              r"^ratio naive / toolkit auto: " + NUMBER, target=4),
    )),
    Benchmark("hessian_speed", ("--examples", "250"), (
        Ratio("HVPs for top-5 at tol 1e-3, dense: PyHessian / Lanczos",
              r"^\*\*dense\*\*[\s\S]*?^at tol 1e-3 \(both defaults\): PyHessian / toolkit HVPs " + NUMBER + "x",
              target=3),
        Ratio("HVPs for top-5 at tol 1e-3, pruned: PyHessian / Lanczos",
              r"^\*\*pruned[\s\S]*?^at tol 1e-3 \(both defaults\): PyHessian / toolkit HVPs " + NUMBER + "x",
              target=3),
    )),
    Benchmark("imp_end_to_end", ("--levels", "2", "--epochs", "1"), (
        Ratio("seconds of a whole IMP run, LeNet-300-100 on MNIST: plain PyTorch / run_imp",
              r"^ratio \(plain / toolkit seconds\): " + NUMBER),
    )),
    Benchmark("prune_limit_cost", ("--examples", "1000", "--deflate", "20"), (
        Ratio("prune-limit error against eigh, MLP: Hessian 10 x 30 (old) / deflated Gauss-Newton (new)",
              r"^ratio \(old / new error against exact\): " + NUMBER, target=10),
    )),
    Benchmark("batched_replicates", ("--repeats", "1", "--lenet-steps", "50", "--resnet-steps", "1"), (
        Ratio("seconds to train 4 replicates, LeNet-300-100: one after another / train_batched",
              r"^ratio sequential / batched: LeNet-300-100 " + NUMBER + "x",
              target_text="> 1 on GPU; none on CPU"),
        Ratio("seconds to train 4 replicates, ResNet-20: one after another / train_batched",
              r"^ratio sequential / batched: .*ResNet-20 " + NUMBER + "x",
              target_text="> 1 on GPU; none on CPU"),
    )),
    Benchmark("data_path", ("--repeats", "1"), (
        Ratio("seconds of an epoch's minibatches, CIFAR-10-shaped: floats + per-step draws / bytes + epoch draws",
              r"^ratio \(previous / toolkit seconds\): " + NUMBER,
              target_text="> 1 on GPU; none on CPU (floats there)"),
    )),
)


def parse_ratios(benchmark: Benchmark, output: str) -> list[float | None]:
    """The numbers of ``benchmark.ratios`` in a script's ``output``; None where a line is missing."""
    found = []
    for ratio in benchmark.ratios:
        match = re.search(ratio.pattern, output, re.MULTILINE)
        found.append(None if match is None else float(match["ratio"]))
    return found


def run_script(benchmark: Benchmark, arguments: list[str]) -> tuple[int, str, float]:
    """Run ``python -m runs.bench.<name> arguments`` from the repository root, echoing its
    output; returns the exit status, the output (stdout and stderr) and the wall seconds."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", f"runs.bench.{benchmark.name}", *arguments]
    print(f"\n=== {' '.join(['python'] + command[1:])}", flush=True)
    start, lines = time.perf_counter(), []
    with subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    seconds = time.perf_counter() - start
    print(f"=== {benchmark.name}: exit status {process.returncode}, {seconds:.0f} s", flush=True)
    return process.returncode, "".join(lines), seconds


def summary_rows(benchmark: Benchmark, status: int, output: str) -> list[list[str]]:
    """Table rows of one finished script: benchmark, compared, ratio, target, met?"""
    rows = []
    for ratio, value in zip(benchmark.ratios, parse_ratios(benchmark, output)):
        target = ratio.target_text or ("none (report)" if ratio.target is None else f">= {ratio.target:g}x")
        if value is None:
            shown, met = (f"failed (exit status {status})" if status else "line not found"), "?"
        else:
            shown = f"{value}x"
            met = "-" if ratio.target is None else ("yes" if value >= ratio.target else "no")
        rows.append([benchmark.name, ratio.compared, shown, target, met])
    return rows


def main() -> None:
    names = [benchmark.name for benchmark in BENCHMARKS]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="each script's smallest sensible arguments")
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"some of: {', '.join(names)}")
    args = parser.parse_args()

    chosen = [benchmark for benchmark in BENCHMARKS if not args.only or benchmark.name in args.only]
    started, rows, failed, notes = time.perf_counter(), [], False, []
    for benchmark in chosen:
        status, output, seconds = run_script(benchmark, list(benchmark.quick) if args.quick else [])
        rows += summary_rows(benchmark, status, output)
        failed |= status != 0 or None in parse_ratios(benchmark, output)
        notes += [f"{benchmark.name}: {line.strip()}" for line in output.splitlines()
                  if line.startswith(("warning:", "data:"))]

    print(f"\n## Summary ({'--quick' if args.quick else 'default arguments'}; "
          f"{time.perf_counter() - started:.0f} s in all)\n")
    print("| benchmark | what is compared | ratio (toolkit vs baseline) | target | met? |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if notes:
        print("\n" + "\n".join(notes))
    facts = machine_facts(1)
    facts[3] = "intra-op threads: each script's own (all default to 1)"
    print("\n" + "\n".join(facts))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
