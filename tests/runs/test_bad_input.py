"""The bad-input matrix: every mistake a user can make ends with one line on stderr,
``lth: error: ...`` naming the problem and how to fix it, exit code 2, no traceback, and
the results folder byte for byte as it was.

Every case runs against a copy of one finished tiny run (trained once for the module),
so a command that wrongly trains, rewrites or deletes a stored file is caught.
"""

import argparse
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runs.lth.cli import _parser, main

REPO = Path(__file__).resolve().parents[2]
TINY = ["--set", "model.widths=[16]", "--set", "train.epochs='2ep'", "--set", "prune.levels=1", "--quiet"]
SWEEP_AXES = '[sweep]\n"train.lr" = [0.1, 0.05]\n'


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, str]:
    """A results folder holding one finished run (levels 0 and 1), and its run id."""
    out = tmp_path_factory.mktemp("finished")
    assert main(["run", "--out", str(out), *TINY]) == 0
    (run_id,) = [p.name for p in out.iterdir()]
    return out, run_id


@pytest.fixture
def results(finished, tmp_path) -> Path:
    """A fresh copy of the finished run's results folder for one case."""
    return Path(shutil.copytree(finished[0], tmp_path / "results"))


def snapshot(folder: Path) -> dict[Path, bytes]:
    """Every file's bytes (lock files excepted: a failed command may leave an empty one)."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".lock"}


def error_line(stderr: str) -> str:
    """The ``lth: error: ...`` line (progress lines come before it)."""
    return next(line for line in stderr.splitlines() if line.startswith("lth: error: "))


def assert_one_error_line(stderr: str, *words: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("lth: error: ")]
    assert len(errors) == 1, stderr
    assert all("lth: error" not in line for line in stderr.splitlines() if line not in errors), stderr
    for word in words:
        assert word in errors[0], f"{word!r} not in {errors[0]!r}"


# ---------------------------------------------------------------- setups: files a case needs


def write(name: str, text: str):
    """A case setup writing a file (a config) beside the results folder."""
    def setup(out: Path, run_id: str, tmp: Path) -> None:
        (tmp / name).write_text(text)
    return setup


def write_bytes(name: str, content: bytes):
    """A case setup writing a file of raw bytes (a config in another encoding)."""
    def setup(out: Path, run_id: str, tmp: Path) -> None:
        (tmp / name).write_bytes(content)
    return setup


def mnist_root(name: str, content: bytes):
    """A data root whose MNIST training images are ``content``."""
    def setup(out: Path, run_id: str, tmp: Path) -> None:
        raw = tmp / name / "MNIST" / "raw"
        raw.mkdir(parents=True)
        (raw / "train-images-idx3-ubyte.gz").write_bytes(content)
    return setup


def truncate(stage: str):
    """Cut a stored file of the run to half its length (a copy that stopped short)."""
    def setup(out: Path, run_id: str, tmp: Path) -> None:
        path = out / run_id / stage
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return setup


def overwrite(stage: str):
    """Replace a stored file of the run with bytes that are not HDF5."""
    def setup(out: Path, run_id: str, tmp: Path) -> None:
        (out / run_id / stage).write_bytes(b"this is not an HDF5 file\n" * 40)
    return setup


def nan_weights(stage: str):
    """Put a NaN into a stored network's weights (as an earlier version stored diverged runs)."""
    def setup(out: Path, run_id: str, tmp: Path) -> None:
        from imp.base import store

        path = out / run_id / stage
        tree = store.read_h5(path)
        provenance = tree.pop("provenance")
        name = next(iter(tree["mask"]))
        tree["weights"][name] = tree["weights"][name] * np.nan
        store.write_h5(path, tree, provenance)
    return setup


def manifest(name: str, text: str):
    """A sweep's list of runs in the results folder, holding ``text``."""
    def setup(out: Path, run_id: str, tmp: Path) -> None:
        (out / "sweeps").mkdir()
        (out / "sweeps" / name).write_text(text)
    return setup


def score_table(name: str, dataset: str, count: int, label: int = 0):
    """A CSV scores table (imp.scoreio) in ``{tmp}/in`` of ``count`` examples, all labelled
    ``label``, that says it scores ``dataset``; well formed, its index_hash is right."""
    def setup(out: Path, run_id: str, tmp: Path) -> None:
        from imp.scoreio import index_hash

        index = np.arange(count)
        meta = {"dataset": dataset, "split": "train", "examples": count,
                "index_hash": index_hash(index, np.full(count, label)), "score": "el2n", "step": "1ep", "runs": 1,
                "orientation": "high_is_hard"}
        (tmp / "in").mkdir(exist_ok=True)
        (tmp / "in" / name).write_text("".join(f"# {k}: {v}\n" for k, v in meta.items()) + "index,label,score\n"
                                       + "".join(f"{i},{label},0.5\n" for i in index))
    return setup


def write_in(name: str, text: str):
    """A case setup writing a file into ``{tmp}/in`` (tables stay out of ``{tmp}`` itself)."""
    def setup(out: Path, run_id: str, tmp: Path) -> None:
        (tmp / "in").mkdir(exist_ok=True)
        (tmp / "in" / name).write_text(text)
    return setup


IDX_HEADER = b"\x00\x00\x08\x03" + (60000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
RUN = ["run", "--out", "{out}", *TINY]


def REGISTERED(arguments: list[str]) -> list[list[str]]:
    """The argv of each measurement's own subcommand (landscape.registry), with ``arguments``."""
    from landscape.registry import REGISTRY

    return [[m.kind, *arguments] for m in REGISTRY if m.command]


def bad_run(*overrides: str) -> list[str]:
    return [*RUN, *(a for o in overrides for a in ("--set", o))]


# (id, arguments with {out}, {run} and {tmp} filled in, words the error line holds, setup)
CASES = [
    # config files and overrides
    ("malformed-toml", ["run", "{tmp}/bad.toml", "--out", "{out}"], ["bad.toml", "not valid TOML", "line 2"],
     write("bad.toml", "[train]\nlr = = 0.1\n")),
    ("missing-config-file", ["run", "{tmp}/missing.toml", "--out", "{out}"], ["missing.toml' not found"], None),
    ("unknown-key-in-file", ["run", "{tmp}/typo.toml", "--out", "{out}"],
     ["unknown key 'train.lrr'; did you mean 'train.lr'?"], write("typo.toml", "[train]\nlrr = 0.1\n")),
    ("unknown-section-in-file", ["run", "{tmp}/typo.toml", "--out", "{out}"],
     ["unknown key 'trian'; did you mean 'train'?"], write("typo.toml", "[trian]\nlr = 0.1\n")),
    ("unknown-key-in-set", bad_run("train.lrr=0.1"), ["unknown key 'train.lrr'; did you mean 'train.lr'?"], None),
    ("set-without-section", bad_run("lr=0.1"), ["override 'lr=0.1' must look like section.key=value"], None),
    ("lr-is-a-word", bad_run('train.lr="fast"'), ["train.lr must be a number, got 'fast'"], None),
    ("lr-is-a-word-in-file", ["run", "{tmp}/lr.toml", "--out", "{out}"], ["train.lr must be a number, got 'fast'"],
     write("lr.toml", '[train]\nlr = "fast"\n')),
    ("levels-not-integer", bad_run("prune.levels=1.5"), ["prune.levels must be an integer, got 1.5"], None),
    ("batch-size-is-a-word", bad_run('data.batch_size="x"'), ["data.batch_size must be an integer, got 'x'"], None),
    # values out of range
    *[(f"fraction-{value}", bad_run(f"prune.fraction={value}"), ["prune.fraction must be in (0, 1), e.g. 0.2"], None)
      for value in ("0", "1", "1.5", "-0.1")],
    ("negative-levels", bad_run("prune.levels=-1"), ["prune.levels must be >= 0"], None),
    ("allocation-typo", bad_run("prune.allocation=erd"),
     ["prune.allocation = 'erd' is not one of", "did you mean 'erk'?"], None),
    ("allocation-with-layerwise-strategy", bad_run("prune.allocation=lamp", "prune.strategy=layerwise"),
     ["prune.allocation = 'lamp' decides each tensor's count itself", "remove prune.strategy = 'layerwise'"], None),
    ("rewind-after-training", bad_run("prune.rewind='100ep'"),
     ["prune.rewind = 100ep (1200 iterations) is not before the end", "choose a smaller prune.rewind"], None),
    ("subset-keep-zero", bad_run("subset.keep=0"), ["subset.keep must be in (0, 1]"], None),
    ("subset-window-past-the-end", bad_run("subset.keep=0.6", "subset.rule=window", "subset.offset=0.5"),
     ["subset.offset", "subset.keep + subset.offset <= 1"], None),
    ("subset-offset-without-window", bad_run("subset.keep=0.5", "subset.offset=0.1"),
     ["subset.offset only applies to subset.rule = 'window'"], None),
    ("subset-ccs-keys-without-ccs", bad_run("subset.keep=0.5", "subset.ccs_strata=10"),
     ["subset.ccs_hard_cut and subset.ccs_strata only apply to subset.rule = 'ccs'"], None),
    ("subset-ccs-budget-past-the-cut", bad_run("subset.keep=0.6", "subset.rule=ccs", "subset.ccs_hard_cut=0.5"),
     ["subset.keep + subset.ccs_hard_cut <= 1"], None),
    ("subset-and-groups", bad_run("subset.keep=0.5", "landscape.groups=true"),
     ["landscape.groups: the groups measurement ranks the whole training set", "subset.keep < 1"], None),
    ("subset-and-diet", bad_run("subset.keep=0.5", "diet.pretrain='10it'"),
     ["cannot be combined with diet.pretrain"], None),
    ("subset-scores-file-missing", bad_run("subset.keep=0.5", "subset.scores_file='{tmp}/none.h5'"),
     ["none.h5", "not found", "lth scores"], None),
    ("diet-subset-larger-than-data", bad_run("diet.pretrain='10it'", "diet.subset=random", "diet.size=100000"),
     ["diet.size (100000)", "larger than the training set (1437 examples)", "choose a smaller diet.size"], None),
    ("lr-zero", bad_run("train.lr=0"), ["train.lr must be positive"], None),
    ("lr-negative", bad_run("train.lr=-1"), ["train.lr must be positive"], None),
    ("batch-size-zero", bad_run("data.batch_size=0"), ["data.batch_size must be positive"], None),
    ("batch-size-negative", bad_run("data.batch_size=-5"), ["data.batch_size must be positive"], None),
    ("replicates-zero", [*RUN, "--replicates", "0"], ["--replicates must be at least 1"], None),
    # models and data
    ("unknown-model", bad_run("model.name=resnet2O"), ["model.name = 'resnet2O' is not one of", "did you mean 'resnet20'?"],
     None),
    ("unknown-model-far", bad_run("model.name=lenet5"), ["model.name = 'lenet5' is not one of"], None),
    ("unknown-dataset", bad_run("data.dataset=imagenet"), ["data.dataset = 'imagenet' is not one of"], None),
    ("missing-data-root", bad_run("data.dataset=mnist", "data.root='{tmp}/nowhere'"),
     ["mnist: train-images-idx3-ubyte.gz not found under", "nowhere/MNIST/raw", "point data.root"], None),
    ("data-root-is-a-file", bad_run("data.dataset=mnist", "data.root='{tmp}/a-file'"),
     ["a-file is a file, not a folder", "point data.root"], write("a-file", "x")),
    ("garbage-mnist-file", bad_run("data.dataset=mnist", "data.root='{tmp}/garbage'"),
     ["cannot read", "train-images-idx3-ubyte.gz", "download it again"], mnist_root("garbage", b"\x89garbage" * 50)),
    ("truncated-mnist-file", bad_run("data.dataset=mnist", "data.root='{tmp}/short'"),
     ["train-images-idx3-ubyte.gz (its header promises 60000x28x28 bytes, it holds 1000", "download it again"],
     mnist_root("short", gzip.compress(IDX_HEADER + bytes(1000)))),
    ("cut-gzip-mnist-file", bad_run("data.dataset=mnist", "data.root='{tmp}/cut'"),
     ["cannot read", "train-images-idx3-ubyte.gz", "download it again"],
     mnist_root("cut", gzip.compress(IDX_HEADER + bytes(10000))[:60])),
    # a sweep file given to a run command, a run config given to `lth sweep`, bad axes
    ("sweep-file-to-run", ["run", "{tmp}/grid.toml", "--out", "{out}"],
     ["is a sweep file (it has a [sweep] table); run it with `lth sweep"], write("grid.toml", SWEEP_AXES)),
    ("sweep-file-to-config", ["config", "{tmp}/grid.toml"],
     ["is a sweep file (it has a [sweep] table); run it with `lth sweep"], write("grid.toml", SWEEP_AXES)),
    ("run-config-to-sweep", ["sweep", "{tmp}/plain.toml", "--out", "{out}"],
     ["plain.toml has no [sweep] table", "`lth run` takes plain run configs"], write("plain.toml", "[train]\nlr = 0.1\n")),
    ("sweep-axis-unknown-key", ["sweep", "{tmp}/grid.toml", "--out", "{out}"],
     ["grid.toml, [sweep] table: unknown key 'train.foo'; valid keys in train: epochs, optimizer, lr"],
     write("grid.toml", '[sweep]\n"train.foo" = [1, 2]\n')),
    ("sweep-axis-misspelled", ["sweep", "{tmp}/grid.toml", "--out", "{out}"],
     ["unknown key 'prune.rewnd'; did you mean 'prune.rewind'?"], write("grid.toml", '[sweep]\n"prune.rewnd" = ["0it"]\n')),
    ("sweep-slurm-table-typo", ["sweep", "{tmp}/grid.toml", "--out", "{out}"],
     ["unknown key 'slurm.partiton'; did you mean 'slurm.partition'?"],
     write("grid.toml", SWEEP_AXES + '[slurm]\npartiton = "gpu"\n')),
    ("sweep-follow-without-slurm", ["sweep", "{tmp}/grid.toml", "--out", "{out}", "--follow"],
     ["--follow follows Slurm jobs (--executor slurm)"], write("grid.toml", SWEEP_AXES)),
    ("sweep-axis-empty", ["sweep", "{tmp}/grid.toml", "--out", "{out}"],
     ["sweep axis 'train.lr' needs a non-empty list of values"], write("grid.toml", '[sweep]\n"train.lr" = []\n')),
    ("sweep-axis-wrong-type", ["sweep", "{tmp}/grid.toml", "--out", "{out}"],
     ["train.lr must be a number, got 'fast'", "at the sweep point train.lr = 'fast'"],
     write("grid.toml", '[sweep]\n"train.lr" = [0.1, "fast"]\n')),
    ("sweep-section-not-a-table", ["sweep", "{tmp}/grid.toml", "--out", "{out}"],
     ["grid.toml: train must be a table of keys"], write("grid.toml", 'train = 3\n[sweep]\n"train.lr" = [0.1]\n')),
    ("garbage-sweep-manifest", ["ls", "{out}"], ["cannot read", "sweeps/bad.json", "rerun `lth sweep`"],
     manifest("bad.json", "{oops")),
    # run ids that do not exist, for every command that takes them
    *[(f"no-such-run-{argv[0]}", argv, ["'nope' is not a run folder, nor a run id under", "`lth ls` lists the runs"], None)
      for argv in (["show", "nope", "--out", "{out}"], ["barrier", "nope", "--out", "{out}"],
                   ["perturb", "nope", "--out", "{out}", "--sizes", "0.5"], ["hessian", "nope", "--out", "{out}"],
                   ["plot", "nope", "--out", "{out}", "--figures", "{tmp}/figures"],
                   ["report", "nope", "--out", "{out}", "--html", "{tmp}/report.html"],
                   ["compare", "{run}", "nope", "--out", "{out}", "--by", "train.lr"],
                   ["upgrade", "nope", "--out", "{out}"],
                   ["export", "nope", "--out", "{out}", "--table", "levels", "--file", "{tmp}/levels.csv"],
                   *REGISTERED(["nope", "--out", "{out}"]))],
    ("no-such-folder-to-ls", ["ls", "{tmp}/nowhere"], ["nowhere is not a folder"], None),
    ("config-in-utf16", ["run", "{tmp}/c.toml", "--out", "{out}"], ["c.toml is UTF-16 text", "save it as UTF-8"],
     write_bytes("c.toml", '[train]\nlr = 0.1\n'.encode("utf-16"))),
    ("config-not-utf8", ["run", "{tmp}/c.toml", "--out", "{out}"], ["c.toml is not UTF-8 text", "save it as UTF-8"],
     write_bytes("c.toml", b"# caf\xe9\n[train]\nlr = 0.1\n")),
    ("baselines-without-levels", bad_run("prune.levels=0", "prune.baselines=['reinit']"),
     ["prune.baselines are trained at pruning levels 1 and up", "set prune.levels >= 1"], None),
    ("align-typo", ["barrier", "{run}", "--out", "{out}", "--set", "landscape.align=weight"],
     ["landscape.align = 'weight' is not one of", "did you mean 'weights'?"], None),
    ("repair-not-a-boolean", bad_run("landscape.repair=1"), ["landscape.repair must be true or false, got 1"], None),
    ("levels-not-finished", ["barrier", "{run}", "--out", "{out}", "--levels", "1", "7", "9"],
     ["has levels 0-1 finished; --levels 7 9 are not"], None),
    ("correlate-a-config", ["correlate", "{tmp}/c.toml"], ["c.toml is not a scores file (not HDF5 at all)"],
     write("c.toml", "[train]\nlr = 0.1\n")),
    # scores: margin and AUM (Pleiss et al. 2020), and score interchange (imp.scoreio)
    ("scores-aum-at-step-0", ["scores", "--score", "aum", "--step", "0", "--out", "{out}", *TINY],
     ["aum averages margins over the first t steps", "t = 0 has none", "(e.g. --step 1ep)"], None),
    ("scores-aum-shorter-than-an-epoch", ["scores", "--score", "aum", "--step", "5it", "--out", "{out}", *TINY],
     ["aum after 5it (5 iterations) would leave examples never presented", "at least one epoch (12 iterations"],
     None),
    ("scores-export-unknown-format", ["scores", "export", "{tmp}/c.toml", "--format", "xlsx"],
     ["unknown format 'xlsx'; give --format csv, npy or parquet"], write("c.toml", "x = 1\n")),
    ("scores-export-not-a-scores-file", ["scores", "export", "{tmp}/c.toml", "--format", "csv"],
     ["c.toml is not a scores file (not HDF5 at all)"], write("c.toml", "x = 1\n")),
    ("scores-import-unknown-format", ["scores", "import", "{tmp}/in/t.txt", "--dataset", "digits", "--out", "{out}"],
     ["cannot tell the format of", "t.txt from its name; name it .csv, .npy or .parquet"], write_in("t.txt", "1\n")),
    ("scores-import-malformed", ["scores", "import", "{tmp}/in/t.csv", "--dataset", "digits", "--out", "{out}"],
     ["t.csv is not a well-formed scores table: its metadata lacks dataset", "`lth scores export`"],
     write_in("t.csv", "garbage\n")),
    ("scores-import-another-dataset", ["scores", "import", "{tmp}/in/t.csv", "--dataset", "digits", "--out", "{out}"],
     ["t.csv scores the data set 'mnist', not 'digits'; give --dataset mnist"], score_table("t.csv", "mnist", 3)),
    ("scores-import-another-count", ["scores", "import", "{tmp}/in/t.csv", "--dataset", "digits", "--out", "{out}"],
     ["t.csv scores 3 examples but the training set of digits here has 1437", "--set the [data] options"],
     score_table("t.csv", "digits", 3)),
    ("scores-import-other-labels", ["scores", "import", "{tmp}/in/t.csv", "--dataset", "digits", "--out", "{out}"],
     ["t.csv scores other examples or labels", "--set the [data] options the scores were computed with"],
     score_table("t.csv", "digits", 1437)),
    ("scores-import-other-settings", ["scores", "import", "{tmp}/in/t.csv", "--dataset", "digits", "--out", "{out}",
                                      "--set", "train.lr=1"],
     ["`lth scores import` takes only [data] settings; drop --set train.lr=1"], score_table("t.csv", "digits", 1437)),
    ("hessian-k-too-large", ["hessian", "{run}", "--out", "{out}", "--k", "100000"],
     ["landscape.hessian_k must be from 1 to 200"], None),
    ("hessian-negative-examples", ["hessian", "{run}", "--out", "{out}", "--examples", "-1"],
     ["landscape.hessian_examples must be >= 0 (0 = the whole training set)"], None),
    ("calibrated-eps-without-checks", ["hessian", "{run}", "--out", "{out}", "--set",
                                       "landscape.prune_eps_mode=calibrated"],
     ["prune_eps_mode = \"calibrated\" needs landscape.prune_check fractions"], None),
    ("eps-mode-typo", ["hessian", "{run}", "--out", "{out}", "--set", "landscape.prune_eps_mode=calibrate"],
     ["landscape.prune_eps_mode"], None),
    ("plot-into-a-file", ["plot", "{run}", "--out", "{out}", "--figures", "{tmp}/c.toml"],
     ["c.toml is a file, not a folder; give --figures a folder"], write("c.toml", "x = 1\n")),
    ("report-into-a-folder", ["report", "{run}", "--out", "{out}", "--html", "{tmp}"],
     ["is a folder; give --html a file name"], None),
    ("export-of-nothing-measured", ["export", "{run}", "--out", "{out}", "--table", "barriers", "--file",
                                    "{tmp}/b.csv"], ["the runs have no barriers rows"], None),
    ("export-into-a-folder", ["export", "{run}", "--out", "{out}", "--table", "levels", "--file", "{tmp}"],
     ["is a folder; give --file a file name"], None),
    ("compare-by-a-typo", ["compare", "{run}", "--out", "{out}", "--by", "prune.rewnd"],
     ["unknown key 'prune.rewnd'; did you mean 'prune.rewind'?"], None),
    # divergence is bad input too: never a stored NaN network, never a barrier of 0 between NaNs
    ("infinite-learning-rate", bad_run("train.lr=inf"), ["train.lr must be a finite number"], None),
    ("nan-perturbation", ["perturb", "{run}", "--out", "{out}", "--sizes", "nan"],
     ["landscape.perturb_sizes[0] must be a finite number"], None),
    ("huge-perturbation", ["perturb", "{run}", "--out", "{out}", "--sizes", "1e30"],
     ["landscape.perturb_sizes must be finite numbers of at most 1000"], None),
    *[(f"stored-nan-network-{argv[0]}", argv, ["replicate_0/level_1.h5 holds non-finite weights", "lower train.lr"],
       nan_weights("replicate_0/level_1.h5"))
      for argv in (["barrier", "{run}", "--out", "{out}"], ["hessian", "{run}", "--out", "{out}"],
                   [*RUN, "--set", "prune.levels=2"])],
]

# Damaged results files, for every command that reads a stored run.
RUN_ID_COMMANDS = {
    "run": RUN,
    "ls": ["ls", "{out}"],
    "show": ["show", "{run}", "--out", "{out}"],
    "barrier": ["barrier", "{run}", "--out", "{out}"],
    "perturb": ["perturb", "{run}", "--out", "{out}", "--sizes", "0.5"],
    "hessian": ["hessian", "{run}", "--out", "{out}"],
    "plot": ["plot", "{run}", "--out", "{out}", "--figures", "{tmp}/figures"],
    "report": ["report", "{run}", "--out", "{out}", "--html", "{tmp}/report.html"],
    "compare": ["compare", "{run}", "--out", "{out}", "--by", "train.lr"],
    "upgrade": ["upgrade", "{run}", "--out", "{out}"],
    "export": ["export", "{run}", "--out", "{out}", "--table", "levels", "--file", "{tmp}/levels.csv"],
    **{argv[0]: argv for argv in REGISTERED(["{run}", "--out", "{out}"])},
}
DAMAGE = {
    "truncated-stage": (truncate("replicate_0/level_1.h5"),
                        ["cannot read", "replicate_0/level_1.h5", "truncated file", "delete it and rerun"]),
    "garbage-run-file": (overwrite("run.h5"),
                         ["cannot read", "run.h5", "delete it and rerun `lth run` with the run's config"]),
}
CASES += [(f"{damage}-{command}", argv, words, setup)
          for damage, (setup, words) in DAMAGE.items() for command, argv in RUN_ID_COMMANDS.items()]
# A damaged rewind point must not pass for a finished stage, though nothing reads it to show the levels.
CASES += [(f"truncated-rewind-point-{command}", RUN_ID_COMMANDS[command],
           ["cannot read", "replicate_0/rewind.h5", "level_0.h5, then rerun `lth run`"], truncate("replicate_0/rewind.h5"))
          for command in ("run", "ls", "show")]


def fill(argv: list[str], out: Path, run_id: str, tmp: Path) -> list[str]:
    return [arg.format(out=out, run=run_id, tmp=tmp) for arg in argv]


@pytest.mark.parametrize("argv, words, setup", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_input_is_one_line_exit_code_2_and_keeps_the_results(finished, results, tmp_path, capsys,
                                                                 argv, words, setup):
    run_id = finished[1]
    if setup is not None:
        setup(results, run_id, tmp_path)
    before = snapshot(results)
    capsys.readouterr()
    assert main(fill(argv, results, run_id, tmp_path)) == 2
    assert_one_error_line(capsys.readouterr().err, *(fill(words, results, run_id, tmp_path)))
    assert snapshot(results) == before
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "figures").exists()
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".csv", ".parquet")]


def test_a_diverging_run_stops_in_one_line_and_stores_no_network(results, tmp_path, capsys):
    before = snapshot(results)
    assert main(fill(bad_run("train.lr=1e6"), results, "", tmp_path)) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, "replicate 0 level_", ": the training loss became nan at step",
                          "lower train.lr (now 1e+06)")
    diverged = error_line(err).split("replicate 0 ")[1].split(":")[0]  # the stage that diverged, e.g. level_1
    after = snapshot(results)
    assert {path: data for path, data in after.items() if path in before} == before
    assert not any(path.name == f"{diverged}.h5" for path in set(after) - set(before))  # it is not stored


def test_a_level_that_empties_a_layer_is_refused(results, tmp_path, capsys):
    before = snapshot(results)
    assert main(fill(bad_run("prune.fraction=0.95", "prune.levels=4", "model.widths=[32, 16]"),
                     results, "", tmp_path)) == 2
    err = capsys.readouterr().err
    assert_one_error_line(err, "would prune every weight of", "prune.allow_empty_layers = true")
    refused = error_line(err).split("replicate 0 ")[1].split(" ")[0]  # e.g. level_3
    after = snapshot(results)
    assert {path: data for path, data in after.items() if path in before} == before
    assert not any(path.name == f"{refused}.h5" for path in set(after) - set(before))
    # allowed on purpose, the same run goes on and trains the empty network
    assert main(fill(bad_run("prune.fraction=0.95", "prune.levels=4", "model.widths=[32, 16]",
                             "prune.allow_empty_layers=true"), results, "", tmp_path)) == 0
    assert any(path.name == "level_4.h5" for path in snapshot(results))


def test_a_late_rejection_leaves_no_phantom_run(results, tmp_path, capsys):
    """Rejected after the run's folder was made (the rewind point past the end, or a
    diverged dense network): the folder goes, with its lock and run.h5."""
    folders = sorted(p.name for p in results.iterdir())
    for overrides in (["prune.rewind=1000ep"], ["train.lr=1e6", "model.widths=[32, 16]", "train.momentum=0.9"]):
        assert main(fill(bad_run(*overrides), results, "", tmp_path)) == 2
        assert_one_error_line(capsys.readouterr().err)
        assert sorted(p.name for p in results.iterdir()) == folders


def test_a_full_disk_is_one_line_and_keeps_every_finished_file(results, tmp_path, capsys, monkeypatch):
    import errno

    from imp.base import store

    before = snapshot(results)

    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", full)
    assert main(fill([*RUN, "--set", "prune.levels=2"], results, "", tmp_path)) == 2
    assert_one_error_line(capsys.readouterr().err, "no space left on the device while writing",
                          "free some space and rerun the command to resume")
    assert snapshot(results) == before
    assert not [p for p in results.rglob("*") if p.name.endswith(store.TEMPORARY_SUFFIX)]


@pytest.fixture
def small_disk(tmp_path):
    """A real 600 KiB file system (tmpfs), or a skip where this process may not mount one
    (mounting needs root)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the simulated ENOSPC test stands in")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_real_full_disk_is_one_line_and_a_rerun_with_space_resumes(small_disk):
    """The run's level files (about 270 KiB each for the default MLP) fill the disk after
    level 0: one line, exit 2, no traceback or crash, the finished files readable and
    untouched by the rerun that resumes once the disk has room."""
    out = small_disk / "results"
    argv = ["run", "--out", str(out), "--set", "train.epochs='30it'", "--set", "prune.levels=3", "--quiet"]
    full = subprocess.run([sys.executable, "-m", "runs.lth.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 2, full.stderr
    assert_one_error_line(full.stderr, "no space left on the device while writing", str(out),
                          "free some space and rerun the command to resume")
    from imp.base import store

    (run,) = store.find_runs(out)
    store.check_files(run)  # every file under its final name is whole
    assert not [p for p in out.rglob("*") if p.name.endswith(store.TEMPORARY_SUFFIX)]
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("level_*.h5")}
    assert finished  # level 0 was done before the disk filled

    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    resumed = subprocess.run([sys.executable, "-m", "runs.lth.cli", *argv], cwd=REPO, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == finished
    assert len(list(out.rglob("level_*.h5"))) == 4


def test_parquet_without_pyarrow_is_one_line(finished, results, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as where the optional extra is not installed
    before = snapshot(results)
    argv = ["export", "{run}", "--out", "{out}", "--table", "levels", "--format", "parquet", "--file", "{tmp}/l.parquet"]
    assert main(fill(argv, results, finished[1], tmp_path)) == 2
    assert_one_error_line(capsys.readouterr().err, "needs pyarrow")
    assert snapshot(results) == before and not (tmp_path / "l.parquet").exists()


def test_a_garbage_data_file_found_through_lth_data(results, tmp_path, capsys, monkeypatch):
    mnist_root("data", b"\x89garbage" * 50)(results, "", tmp_path)
    monkeypatch.setenv("LTH_DATA", str(tmp_path / "data"))
    before = snapshot(results)
    assert main(fill(bad_run("data.dataset=mnist"), results, "", tmp_path)) == 2
    assert_one_error_line(capsys.readouterr().err, f"cannot read {tmp_path / 'data'}/MNIST/raw/train-images-idx3-ubyte.gz",
                          "download it again")
    assert snapshot(results) == before


def test_the_matrix_covers_every_command_that_takes_run_ids():
    (commands,) = [a.choices for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    takes_runs = {name for name, parser in commands.items()
                  if any(action.dest in ("run", "runs") and not action.option_strings for action in parser._actions)}
    assert takes_runs == {"show", "barrier", "perturb", "hessian", "plot", "report", "compare", "upgrade", "export",
                          *(argv[0] for argv in REGISTERED([]))}
    ids = {case[0] for case in CASES}
    assert all(f"no-such-run-{command}" in ids and f"truncated-stage-{command}" in ids for command in takes_runs)


# ---------------------------------------------------------------- a results folder that is not writable


# `lth run` of a new config (it needs a new run folder), `lth scores` (a new scores file) and
# `lth sweep` (its list of runs).
UNWRITABLE = {"run": [*RUN, "--set", "train.seed=1"],
              "scores": ["scores", "--score", "el2n", "--step", "0", "--out", "{out}", *TINY],
              "sweep": ["sweep", "{tmp}/grid.toml", "--out", "{out}"]}
GRID = '[model]\nwidths = [16]\n[train]\nepochs = "2ep"\n[sweep]\n"train.seed" = [1]\n'


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions, so nothing is unwritable")
@pytest.mark.parametrize("command", UNWRITABLE)
def test_an_unwritable_results_folder_is_one_line(results, tmp_path, capsys, command):
    (tmp_path / "grid.toml").write_text(GRID)
    before = snapshot(results)
    results.chmod(0o500)
    try:
        assert main(fill(UNWRITABLE[command], results, "", tmp_path)) == 2
    finally:
        results.chmod(0o755)
    assert_one_error_line(capsys.readouterr().err, "cannot write", str(results), "writable",
                          "choose another --out folder")
    assert snapshot(results) == before


@pytest.mark.parametrize("command", UNWRITABLE)
def test_an_unwritable_results_folder_as_the_os_reports_it(results, tmp_path, capsys, monkeypatch, command):
    """The same, for any user (root included): the folder refuses what the OS would refuse."""
    real_mkdir, real_access = Path.mkdir, os.access

    def mkdir(self, *args, **kwargs):
        if Path(self).parent == results:
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    def access(path, mode, *args, **kwargs):
        return Path(path) != results and real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(os, "access", access)
    (tmp_path / "grid.toml").write_text(GRID)
    before = snapshot(results)
    assert main(fill(UNWRITABLE[command], results, "", tmp_path)) == 2
    assert_one_error_line(capsys.readouterr().err, "cannot write", str(results), "writable",
                          "choose another --out folder")
    assert snapshot(results) == before


# ---------------------------------------------------------------- the real command, as a user runs it


def lth(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runs.lth.cli", *args], cwd=REPO, text=True, capture_output=True,
                          env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize("case", ["malformed-toml", "garbage-run-file-show", "truncated-stage-run",
                                  "no-such-run-show"])
def test_no_traceback_from_the_real_command(finished, results, tmp_path, case):
    argv, words, setup = next(c[1:] for c in CASES if c[0] == case)
    if setup is not None:
        setup(results, finished[1], tmp_path)
    before = snapshot(results)
    result = lth(*fill(argv, results, finished[1], tmp_path))
    assert result.returncode == 2
    assert_one_error_line(result.stderr, *fill(words, results, finished[1], tmp_path))
    assert snapshot(results) == before


def test_no_traceback_for_missing_data_from_the_environment(tmp_path):
    result = lth("run", "--set", "data.dataset=cifar10", "--out", str(tmp_path),
                 env={"LTH_DATA": str(tmp_path / "nodata")})
    assert result.returncode == 2
    assert_one_error_line(result.stderr, f"cifar10: data_batch_1 not found under {tmp_path / 'nodata'}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions, so nothing is unwritable")
def test_no_traceback_from_the_real_command_in_an_unwritable_folder(results, tmp_path):
    before = snapshot(results)
    results.chmod(0o500)
    try:
        result = lth(*fill(UNWRITABLE["run"], results, "", tmp_path))
    finally:
        results.chmod(0o755)
    assert result.returncode == 2
    assert_one_error_line(result.stderr, "cannot write", "choose another --out folder")
    assert snapshot(results) == before


def test_a_network_whose_outputs_overflow_is_refused(results, tmp_path, capsys):
    """One enormous update leaves finite weights whose outputs overflow: no loss during
    training shows it, the final evaluation does."""
    before = snapshot(results)
    assert main(fill(bad_run("train.lr=1e38", "train.epochs='1it'"), results, "", tmp_path)) == 2
    assert_one_error_line(capsys.readouterr().err, "replicate 0 level_0: the final", "the network diverged",
                          "lower train.lr")
    assert snapshot(results) == before
