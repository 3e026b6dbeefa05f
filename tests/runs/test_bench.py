"""The benchmark runner's ratio parser, on the lines the scripts printed in real runs.

Nothing is timed here: the canned outputs below are excerpts of real runs on the 2-core
CPU (2026-11-21; prune_limit_cost 2026-11-28). One smoke test runs batched_replicates at tiny sizes (a few seconds),
only to check that it runs and prints the line the runner reads.
"""

import sys
from pathlib import Path

import pytest

from runs.bench import batched_replicates
from runs.bench.__main__ import BENCHMARKS, parse_ratios, summary_rows

OUTPUTS = {
    "train_throughput": """\
| toolkit | 1.06 | 56,815 | 1.04, 1.07 | 95.54% |
| baseline | 6.92 | 8,674 | 6.76, 7.07 | 95.59% |

warning: other processes kept up to 1.0 cores busy during a run; the machine was contended, so rerun when it is idle

ratio (toolkit / baseline examples per second): 6.55

cpu: AMD EPYC
""",
    "grand_speed": """\
| LeNet-300-100 | toolkit | 2,048 | 0.019 | 108,334 | 1.0 |
| ResNet-20 (w16) | toolkit vs naive, relative difference on 32 examples: max 4.9e-04, median 2.8e-08 | | | | |

LeNet-300-100 ratios: toolkit / naive 48.3, toolkit / vmap 110.1
ResNet-20 ratio: toolkit / naive 1.1 (1.3 in chunks of 64)

cpu: AMD EPYC
""",
    "barrier_speed": """\
toolkit plain vs naive: max |loss difference| 1.3e-07, max |error difference| 1.1e-16
barriers (interpolated / mean): train_loss 0.0000 / 0.0241, train_error 0.0044 / 0.0045

ratio naive / toolkit auto: 4.26 (plain 1.02)

cpu: AMD EPYC
""",
    "hessian_speed": """\
**dense**: reference top-5 (Lanczos, tol 1e-10, 21 products): 24.3514, 20.6817, 20.4252, 19.1087, 18.3224

| PyHessian power iteration | 1e-06 | 369 | 6.90 | 18.7 | 5.2e-05 | yes | 1.0 |

at tol 1e-3 (both defaults): PyHessian / toolkit HVPs 5.4x, seconds 4.1x; PyHessian's error 10.4x the 1e-3 target
cheapest setting reaching 1e-3: toolkit tol 0.03 (14 HVPs, 0.31 s), PyHessian tol 0.0001 (192 HVPs, 3.53 s): 13.7x the HVPs, 11.2x the seconds

**pruned to density 0.200 (restricted Hessian)**: reference top-5 (Lanczos, tol 1e-10, 23 products): 9.63875, 9.12365

at tol 1e-3 (both defaults): PyHessian / toolkit HVPs 6.4x, seconds 5.0x; PyHessian's error 12.4x the 1e-3 target
cheapest setting reaching 1e-3: toolkit tol 0.03 (15 HVPs, 0.35 s), PyHessian tol 0.0001 (194 HVPs, 3.52 s): 12.9x the HVPs, 10.1x the seconds
""",
    "imp_end_to_end": """\
toolkit: 20.67 s in all, 18.75 s of it training and evaluating (the rest: data loading, pruning, HDF5 writes); other load 1.0 cores
plain:   26.40 s in all, 25.05 s of it in the levels (the rest: data loading); other load 1.0 cores

ratio (plain / toolkit seconds): 1.28

cpu: AMD EPYC
""",
    "batched_replicates": """\
| ResNet-20 (w16) | batched | 4 x 3 | 8.94 | 9.32, 8.55 | 1.3 | 0.0 |
| ResNet-20 (w16) | batched vs sequential final state (density 0.500), max relative difference: parameters 2.0e-02, buffers 3.4e-05 | | | | | |

ratio sequential / batched: LeNet-300-100 0.68x, ResNet-20 0.73x

cpu: AMD EPYC
""",
    "prune_limit_cost": """largest error against exact: new 0.001 (1150 products), old 0.269

| new: GGN, deflated Lanczos + 10 x 100 | 1150 | 128.2 | 0.111 | 1.0 |
| old: Hessian 10 x 30 on 1,000 examples | 300 | 7.9 | 0.026 | 1.0 |

seconds new / old: 16.3

ratio (old / new error against exact): 269.5

cpu: Intel(R) Xeon(R) Processor
""",
}
OUTPUTS["data_path"] = """\
| data | toolkit s/epoch | previous s/epoch | cpu default s/epoch | previous / toolkit |
|---|---|---|---|---|
| CIFAR-10-shaped | 1.110 | 1.007 | 0.977 | 0.91 |
| MNIST-shaped | 0.141 | 0.068 | 0.067 | 0.48 |

ratio (previous / toolkit seconds): 0.91 (CIFAR-10-shaped; MNIST-shaped 0.48)
"""

EXPECTED = {
    "data_path": [0.91],
    "train_throughput": [6.55],
    "grand_speed": [48.3, 1.1],
    "barrier_speed": [4.26],
    "hessian_speed": [5.4, 6.4],
    "imp_end_to_end": [1.28],
    "batched_replicates": [0.68, 0.73],
    "prune_limit_cost": [269.5],
}
BY_NAME = {benchmark.name: benchmark for benchmark in BENCHMARKS}


def test_every_script_in_runs_bench_has_an_entry():
    scripts = {path.stem for path in (Path(__file__).resolve().parents[2] / "runs" / "bench").glob("*.py")}
    assert set(BY_NAME) == scripts - {"__init__", "__main__"}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parses_the_ratio_lines_of_real_output(name):
    assert parse_ratios(BY_NAME[name], OUTPUTS[name]) == EXPECTED[name]


def test_a_missing_line_is_none_not_another_number():
    # Without its ratio line, the other "ratio"-like numbers in the output must not be taken.
    text = OUTPUTS["barrier_speed"].replace("ratio naive / toolkit auto: 4.26 (plain 1.02)", "")
    assert parse_ratios(BY_NAME["barrier_speed"], text) == [None]
    assert parse_ratios(BY_NAME["train_throughput"], OUTPUTS["imp_end_to_end"]) == [None]


def test_hessian_ratios_belong_to_their_headings():
    pruned_only = OUTPUTS["hessian_speed"].split("**pruned", 1)[1]
    assert parse_ratios(BY_NAME["hessian_speed"], "**pruned" + pruned_only) == [None, 6.4]


def test_summary_rows_compare_with_the_targets():
    rows = summary_rows(BY_NAME["grand_speed"], 0, OUTPUTS["grand_speed"])
    assert [row[2:] for row in rows] == [["48.3x", ">= 30x", "yes"], ["1.1x", "none (report)", "-"]]
    low = OUTPUTS["barrier_speed"].replace("auto: 4.26", "auto: 3.9")
    assert summary_rows(BY_NAME["barrier_speed"], 0, low)[0][2:] == ["3.9x", ">= 4x", "no"]
    assert summary_rows(BY_NAME["barrier_speed"], 1, "Traceback ...")[0][2:] == [
        "failed (exit status 1)", ">= 4x", "?"]


def test_a_target_given_as_text_is_shown_and_not_judged():
    rows = summary_rows(BY_NAME["batched_replicates"], 0, OUTPUTS["batched_replicates"])
    assert [row[2:] for row in rows] == [["0.68x", "> 1 on GPU; none on CPU", "-"],
                                         ["0.73x", "> 1 on GPU; none on CPU", "-"]]


def test_data_path_runs_at_tiny_sizes(monkeypatch, capsys):
    """Smoke test: the script checks that its three paths give the same minibatches, times
    them and prints the line the runner reads. Tiny sizes; the numbers mean nothing."""
    from runs.bench import data_path

    monkeypatch.setattr(sys, "argv", ["data_path", "--repeats", "1", "--fraction", "0.01"])
    data_path.main()
    out = capsys.readouterr().out
    assert parse_ratios(BY_NAME["data_path"], out)[0] > 0 and "| MNIST-shaped |" in out


def test_batched_replicates_runs_at_tiny_sizes(monkeypatch, capsys):
    """Smoke test: the script runs end to end (both sides, both models, the agreement check)
    and prints the line the runner reads. Tiny sizes; the numbers mean nothing."""
    monkeypatch.setattr(sys, "argv", [
        "batched_replicates", "--replicates", "2", "--repeats", "1", "--lenet-steps", "3",
        "--resnet-steps", "2", "--lenet-batch", "8", "--resnet-batch", "4", "--examples", "32",
        "--width", "4"])
    batched_replicates.main()
    output = capsys.readouterr().out
    assert "max relative difference: parameters" in output
    assert None not in parse_ratios(BY_NAME["batched_replicates"], output)
