import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from imp.base import store
from runs.lth.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = ["--set", "model.widths=[16]", "--set", "train.epochs='30it'",
        "--set", "train.eval_every='10it'", "--quiet"]


def lth(*args, env=None):
    """Run the real command in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "runs.lth.cli", *args], cwd=REPO, text=True,
                          capture_output=True, env={**os.environ, **(env or {})}, timeout=300)


def test_run_ls_show_end_to_end(tmp_path):
    result = lth("run", "runs/demo_digits.toml", "--out", str(tmp_path), *TINY, "--replicates", "2",
                 "--set", "prune.levels=2", "--set", "prune.baselines=['reinit']")
    assert result.returncode == 0, result.stderr
    run_id = result.stdout.split("run id ")[1].split(";")[0]
    assert (tmp_path / run_id / "replicate_1" / "level_2_reinit.h5").is_file()
    table = result.stdout.splitlines()
    assert table[0] == "test accuracy (mean over 2 replicate(s))"
    assert table[1].split() == ["level", "density", "imp", "reinit"]
    level, density = table[4].split()[:2]
    assert level == "2" and abs(float(density.rstrip("%")) - 64) < 0.1

    listed = lth("ls", str(tmp_path))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[1].split() == [run_id, "mlp", "digits", "3/3", "2/2", "reinit", "done"]

    for name in (run_id, str(tmp_path / run_id)):  # a run id under --out, or a folder
        shown = lth("show", name, "--out", str(tmp_path), "--json")
        assert shown.returncode == 0, shown.stderr
        summary = json.loads(shown.stdout)
        assert summary["run_id"] == run_id
        rows = summary["levels"]
        assert [(r["replicate"], r["level"], r["baseline"]) for r in rows] == [
            (r, level, baseline) for r in (0, 1) for level, baseline in
            [(0, None), (1, None), (1, "reinit"), (2, None), (2, "reinit")]]
        for row in rows:
            assert 0.0 <= row["train_accuracy"] <= 1.0 and 0.0 <= row["test_accuracy"] <= 1.0
            assert row["test_loss"] > 0
            assert abs(row["density"] - 0.8 ** row["level"]) <= 2.5 / row["prunable"]
    human = lth("show", run_id, "--out", str(tmp_path))
    assert human.returncode == 0 and f"run {run_id}" in human.stdout and "reinit" in human.stdout


# Bad input (one line, exit code 2, results kept) is tested in test_bad_input.py.


def test_equal_work_written_two_ways_is_one_run(tmp_path, capsys):
    """Digits trains on 1,437 examples, 12 iterations per epoch at batch 128: a rewind point
    of '1ep' and of '12it' is the same work, so the same run (issue 18)."""
    common = ["run", "--out", str(tmp_path), *TINY, "--set", "prune.levels=1"]
    assert main([*common, "--set", "prune.rewind='1ep'"]) == 0
    first = capsys.readouterr().out
    files = {path: path.read_bytes() for path in tmp_path.rglob("*.h5")}
    assert main([*common, "--set", "prune.rewind='12it'", "--set", "train.eval_examples=99999"]) == 0
    assert capsys.readouterr().out == first  # the same run id, table and folder
    assert sorted(tmp_path.rglob("*.h5")) == sorted(files)
    assert all(path.read_bytes() == data for path, data in files.items())  # nothing trained again
    assert main(["config", *TINY[:-1], "--set", "prune.rewind='12it'"]) == 0
    printed = capsys.readouterr().out
    assert '"rewind": "1ep"' in printed and first.split("run id ")[1].split(";")[0] in printed


def test_upgrade_moves_a_run_stored_under_the_id_of_its_spelling(tmp_path, capsys):
    """Earlier versions hashed durations as written: a run with rewind '12it' lived under
    another id than '1ep'. `lth run` names the old folder; `lth upgrade` moves it."""
    from imp.base.config import canonical_json, load_config, run_id
    from imp.base.names import PROVENANCE

    common = ["--out", str(tmp_path), *TINY, "--set", "prune.levels=1"]
    assert main(["run", *common, "--set", "prune.rewind='1ep'"]) == 0
    new_id = capsys.readouterr().out.split("run id ")[1].split(";")[0]
    written = load_config(None, [*TINY[1:-1:2], "prune.rewind='12it'"])
    old_id = run_id(written)  # the id an earlier version gave it
    run = store.RunDir(tmp_path, new_id)
    stored = store.read_run(run)
    provenance = stored.pop(PROVENANCE)
    store.write_h5(run.run_file, stored, {**provenance, "config": canonical_json(written)})
    (tmp_path / new_id).rename(tmp_path / old_id)
    files = {path.relative_to(tmp_path / old_id): path.read_bytes() for path in (tmp_path / old_id).rglob("level_*.h5")}

    assert main(["run", *common, "--set", "prune.rewind='12it'"]) == 2
    assert f"lth upgrade {old_id}" in capsys.readouterr().err and not (tmp_path / new_id).exists()
    assert main(["upgrade", old_id, "--out", str(tmp_path)]) == 0
    assert f"run {old_id} -> {new_id}" in capsys.readouterr().out
    assert not (tmp_path / old_id).exists()
    assert '"rewind":"1ep"' in store.read_run(store.RunDir(tmp_path, new_id))[PROVENANCE]["config"]
    assert main(["run", *common, "--set", "prune.rewind='12it'"]) == 0
    assert f"run id {new_id}" in capsys.readouterr().out
    assert {path: (tmp_path / new_id / path).read_bytes() for path in files} == files  # nothing trained again
    assert main(["upgrade", new_id, "--out", str(tmp_path)]) == 0
    assert "nothing in the old layout" in capsys.readouterr().out


def test_config_prints_every_field_and_the_id(capsys):
    assert main(["config", "--set", "train.lr=0.2"]) == 0
    out = capsys.readouterr().out
    body, id_line = out.rsplit("}\n", 1)
    assert json.loads(body + "}")["train"]["lr"] == 0.2
    assert id_line.startswith("run id ") and '{"train":{"lr":0.2}}' in id_line


def test_layers_lists_the_prunable_tensors_and_their_rule(capsys):
    assert main(["layers", "runs/lenet_mnist.toml", "--set", "data.dataset=digits",
                 "--set", "prune.layer_fractions={'fc2.weight' = 0.1}"]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert lines[1] == ["fc1.weight", "300x64", "19200", "0.2", "of", "remaining,", "on", "its", "own"]
    assert lines[2] == ["fc2.weight", "100x300", "30000", "0.1", "of", "remaining,", "on", "its", "own"]
    assert lines[3] == ["fc.weight", "10x100", "1000", "excluded"]
    assert lines[4][:2] == ["49200", "prunable"]


def test_scores_correlate_and_a_diet_run(tmp_path, capsys):
    common = ["--set", "model.widths=[16]", "--set", "data.label_noise=0.1", "--out", str(tmp_path), "--quiet"]
    assert main(["scores", "--score", "el2n", "--step", "3ep", *common]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("el2n: mean ") and out[1].startswith("Spearman with the input norm: ")
    assert out[2].startswith("ROC-AUC for finding the 144 permuted labels: ")
    el2n_file = out[-1].removeprefix("scores in ")
    written = Path(el2n_file).stat().st_mtime_ns
    assert main(["scores", "--score", "el2n", "--step", "36it", *common]) == 0  # 3 epochs of 12 iterations
    assert capsys.readouterr().out.splitlines()[-1] == f"scores in {el2n_file}"  # the same file, not recomputed
    assert Path(el2n_file).stat().st_mtime_ns == written
    assert main(["scores", "--score", "grand", "--step", "0", "--runs", "2", *common]) == 0
    grand_file = capsys.readouterr().out.splitlines()[-1].removeprefix("scores in ")

    assert main(["correlate", el2n_file, grand_file]) == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert table[1] == ["el2n@3ep", "grand@0it", "input_norm"]
    assert table[2][0] == "el2n@3ep" and table[2][1] == "1.000" and table[4][3] == "1.000"

    assert main(["run", *common, "--set", "train.epochs='40it'", "--set", "diet.pretrain='10it'",
                 "--set", "diet.subset=hard", "--set", "diet.size=500", "--set", f"diet.scores_file='{el2n_file}'",
                 "--set", "diet.score_step='3ep'"]) == 0
    run_id = capsys.readouterr().out.split("run id ")[1].split(";")[0]
    assert main(["show", run_id, "--out", str(tmp_path), "--json"]) == 0
    diet = json.loads(capsys.readouterr().out)["diet"]
    assert {k: diet[k] for k in ("score", "subset", "size", "pretrain")} == {
        "score": "el2n", "subset": "hard", "size": 500, "pretrain": "10it"}


def test_scores_export_and_import_are_words_after_scores(tmp_path, capsys):
    """`lth scores --score margin` as before, then the real command's `scores export` and
    `scores import` words (exit codes as a user sees them), and a refusal in one line."""
    from imp.scores import read_scores

    assert main(["scores", "--score", "margin", "--step", "0", "--set", "model.widths=[16]", "--out", str(tmp_path),
                 "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("margin: mean ") and out[0].endswith("; high = easy")
    computed = out[-1].removeprefix("scores in ")
    exported = lth("scores", "export", computed, "--format", "csv", "--to", str(tmp_path / "m.csv"))
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout == f"scores table in {tmp_path / 'm.csv'}\n"
    imported = lth("scores", "import", str(tmp_path / "m.csv"), "--dataset", "digits", "--out", str(tmp_path / "in"))
    assert imported.returncode == 0, imported.stderr
    path = imported.stdout.strip().removeprefix("scores in ")
    assert path.startswith(str(tmp_path / "in" / "scores" / "imported_digits_margin_"))
    np.testing.assert_array_equal(read_scores(path)["mean"], read_scores(computed)["mean"])
    again = lth("scores", "import", str(tmp_path / "m.csv"), "--dataset", "digits", "--out", str(tmp_path / "in"))
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert again.stderr.splitlines() == [f"lth: error: {path} exists (this file was imported before); use it as "
                                         "diet.scores_file or subset.scores_file, or delete it to import again"]
    assert main(["scores", "export", computed, "--format", "npy", "--to", str(tmp_path / "m.npy")]) == 0
    assert capsys.readouterr().out == f"scores table in {tmp_path / 'm.npy'} (metadata in m.npy.json)\n"
    assert main(["scores", "import", str(tmp_path / "m.npy"), "--dataset", "digits", "--out", str(tmp_path / "in"),
                 "--orientation", "high_is_easy", "--set", "data.augment=none"]) == 0


def test_a_subset_run_is_shown_and_measured_on_its_kept_examples(tmp_path, capsys):
    """A [subset] run (Paul et al. 2021) keeps half of digits' 1,437 training examples;
    `lth show --json` reports the subset, and a measurement evaluates the kept examples:
    the successive curve's training error at level 0 is level 0's own training error."""
    assert main(["run", "--out", str(tmp_path), *TINY, "--set", "prune.levels=1", "--set", "subset.keep=0.5",
                 "--set", "subset.rule=window", "--set", "subset.offset=0.1",
                 "--set", "subset.score_step='1ep'"]) == 0
    run_id = capsys.readouterr().out.split("run id ")[1].split(";")[0]
    assert main(["show", run_id, "--out", str(tmp_path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    subset = shown["subset"]
    assert {k: subset[k] for k in ("rule", "keep", "offset", "kept", "examples", "skipped", "budget", "score")} == {
        "rule": "window", "keep": 0.5, "offset": 0.1, "kept": 719, "examples": 1437, "skipped": 144,
        "budget": "iterations", "score": "el2n"}
    assert subset["scores_source"].endswith(".h5") and shown["diet"] is None
    assert main(["barrier", run_id, "--out", str(tmp_path), "--set", "landscape.points=3", "--silent"]) == 0
    capsys.readouterr()
    (path,) = (tmp_path / run_id / "replicate_0").glob("successive_0_*.h5")
    curve = store.read_h5(path)["curve"]
    level0 = store.read_h5(tmp_path / run_id / "replicate_0" / "level_0.h5", skip=("weights", "mask"))
    assert abs(curve["train_error"][0] - (1 - level0["final"]["train_accuracy"])) < 1e-12


def test_show_json_has_a_null_diet_without_one(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path), *TINY]) == 0
    run_id = capsys.readouterr().out.split("run id ")[1].split(";")[0]
    assert main(["show", run_id, "--out", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["diet"] is None


def test_barrier_and_perturb_on_a_finished_run(tmp_path, capsys):
    small = ["--set", "landscape.points=3", "--set", "landscape.examples=200"]
    assert main(["run", "--out", str(tmp_path), *TINY, "--set", "prune.levels=2"]) == 0
    run_id = capsys.readouterr().out.split("run id ")[1].split(";")[0]
    assert main(["barrier", run_id, "--out", str(tmp_path), "--siblings", "2", "--levels", "1", *small]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("replicate 0 level 1 successive [") and "barrier_to_next_test_error" in out[0]
    assert out[1].startswith("replicate 0 level 1 instability [") and "instability_test_error" in out[1]
    assert out[2].startswith("settings: ") and '"points": 3' in out[2] and '"copies": 2' in out[2]
    assert main(["perturb", run_id, "--out", str(tmp_path), "--sizes", "0.5", "--levels", "0", *small]) == 0
    assert (tmp_path / run_id / "replicate_0" / "perturbed_0_gaussian_0.5.h5").is_file()
    assert capsys.readouterr().out.startswith("replicate 0 level 0 perturb [")
    assert main(["show", run_id, "--out", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["levels"]
    assert "barrier_to_next_test_error" in rows[1] and "instability_test_error" in rows[1]
    assert main(["barrier", run_id, "--out", str(tmp_path), "--between", "level_2", "sibling_1_1", *small]) == 0
    table = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert table[0] == ["barrier", "between", "level_2", "and", "sibling_1_1:"]
    assert [row[:2] for row in table[2:6]] == [["raw", "test_error"], ["raw", "test_loss"], ["raw", "train_error"],
                                              ["raw", "train_loss"]]
    assert table[-1][0] == "results" and table[-1][-1].split("/")[-1].startswith("pair_")
    elsewhere = tmp_path / run_id / "replicate_0" / "level_0.h5"
    copy = tmp_path / "other" / "abc" / "replicate_1" / "level_0.h5"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(elsewhere.read_bytes())
    assert main(["barrier", run_id, "--out", str(tmp_path), "--between", str(elsewhere), str(copy), *small]) == 0
    capsys.readouterr()
    assert main(["show", run_id, "--out", str(tmp_path), "--json"]) == 0
    pairs = [m for m in json.loads(capsys.readouterr().out)["measurements"] if m["measurement"] == "pair"]
    assert sorted(m["settings"]["networks"] for m in pairs) == [["level_0", "abc.replicate_1.level_0"],
                                                                ["level_2", "sibling_1_1"]]
    assert main(["barrier", run_id, "--out", str(tmp_path), "--between", "level_2", "level_9", *small]) == 2
    assert "level_9: no such stage file" in capsys.readouterr().err
    # other curve settings are another measurement beside the first, not an error
    assert main(["barrier", run_id, "--out", str(tmp_path), "--levels", "1", "--set", "landscape.points=5"]) == 0
    assert '"points": 5' in capsys.readouterr().out
    assert main(["barrier", run_id, "--out", str(tmp_path), "--levels", "7"]) == 2
    assert "--levels 7 are not" in capsys.readouterr().err
    assert main(["barrier", run_id, "--out", str(tmp_path), "--levels", "2"]) == 2  # the last: no next level
    assert "nothing to measure" in capsys.readouterr().err
    assert main(["show", run_id[:6], "--out", str(tmp_path)]) == 0  # a unique start of the id will do
    assert capsys.readouterr().out.startswith(f"run {run_id} ")
    assert main(["barrier", run_id, "--out", str(tmp_path), "--set", "train.lr=1"]) == 2
    assert "only landscape.* settings can change" in capsys.readouterr().err


def test_a_permuted_copy_has_barrier_zero_once_aligned_each_variant_stored_apart(tmp_path, capsys):
    """`lth barrier --between A B --align weights --repair` with B a copy of A with its
    hidden units shuffled: the same function, a raw barrier above 0, exactly 0 aligned;
    raw, aligned and aligned+REPAIR stored as three results, the raw one as before."""
    import torch

    from landscape.align import permutation_spec, permute_state
    from imp.models import build_model

    small = ["--set", "landscape.points=5", "--set", "landscape.examples=300"]
    assert main(["run", "--out", str(tmp_path), "--set", "model.widths=[32, 16]", "--set", "train.epochs='60it'",
                 "--quiet"]) == 0
    run_id = capsys.readouterr().out.split("run id ")[1].split(";")[0]
    stage = tmp_path / run_id / "replicate_0" / "level_0.h5"
    tree = store.read_h5(stage)
    state = {k: torch.from_numpy(v) for k, v in tree["weights"].items()}
    spec = permutation_spec(build_model("mlp", (1, 8, 8), 10, widths=(32, 16)))
    g = torch.Generator().manual_seed(1)
    perms = {group: torch.randperm(size, generator=g) for group, size in spec.sizes.items()}
    shuffled = tmp_path / "elsewhere" / "x" / "replicate_0" / "shuffled.h5"
    shuffled.parent.mkdir(parents=True)
    store.write_h5(shuffled, {"weights": {k: v.numpy() for k, v in permute_state(spec, state, perms).items()}}, {})
    assert main(["barrier", run_id, "--out", str(tmp_path), "--between", "level_0", str(shuffled), *small]) == 0
    raw_only = capsys.readouterr().out
    assert main(["barrier", run_id, "--out", str(tmp_path), "--between", "level_0", str(shuffled),
                 "--align", "weights", "--repair", *small]) == 0
    out = capsys.readouterr().out
    rows = {(row[0], row[1]): float(row[2]) for row in (line.split() for line in out.splitlines()[2:-1])}
    assert rows[("raw", "train_loss")] > 0.05  # shuffled units: the midpoint is another network
    assert rows[("weights", "train_loss")] == 0.0 and rows[("weights", "test_error")] == 0.0
    assert rows[("weights+repair", "train_loss")] < 1e-9  # REPAIR between equal networks changes nothing
    files = out.splitlines()[-1].removeprefix("results in ").split(", ")
    assert len(set(files)) == 3 and raw_only.splitlines()[-1].removeprefix("results in ") == files[0]
    aligned = store.read_h5(files[1])
    assert aligned["align"] == "weights" and min(aligned["moved"].values()) > 0.5
    assert store.read_h5(files[2])["repair"]
    assert main(["barrier", run_id, "--out", str(tmp_path), "--between", "level_0", str(shuffled),
                 "--align", "activations", *small]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:-1]]
    assert all(float(row[2]) == 0.0 for row in rows if row[0] == "activations")


def test_hessian_on_a_finished_run(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path), *TINY, "--set", "prune.levels=1"]) == 0
    run_id = capsys.readouterr().out.split("run id ")[1].split(";")[0]
    assert main(["hessian", run_id, "--out", str(tmp_path), "--k", "3", "--check", "0.5", "--levels", "1",
                 "--examples", "100", "--set", "landscape.slq_runs=2", "--set", "landscape.hessian_deflate=4",
                 "--set", "landscape.hessian_exact_limit=0",
                 "--set", "landscape.slq_steps=5", "--set", "landscape.trace_samples=0"]) == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    # progress per level: Lanczos and each quadrature probe, for both curvatures
    for kind in ("ggn", "hessian"):
        assert f"replicate 0 level 1 hessian: {kind} Lanczos: top 4 in " in captured.err
        assert f"replicate 0 level 1 hessian: {kind} quadrature: probe 2 of 2 (5 steps)" in captured.err
    # one checked fraction brackets no limit: printed as censored, never as a bare 0
    assert re.search(r"measured_limit_random_level (< 0\.5|>= 0\.5),", out[1])
    assert "_censored" not in out[1]
    assert out[0].startswith("replicate 0 level 1 hessian [") and "hessian_top_eigenvalue" in out[0]
    assert out[1].startswith("replicate 0 level 1 prune_check [") and len(out) == 4
    assert out[1].endswith(("measured_max_prune_fraction 0.5", "measured_max_prune_fraction 0"))
    assert '"k": 3' in out[2] and '"fractions": [0.5]' in out[2]
    assert main(["show", run_id, "--out", str(tmp_path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["levels"][1]
    assert row["level"] == 1 and row["hessian_top_eigenvalue"] > 0
    assert 0 <= row["predicted_limit_random"] <= 1 and 0 <= row["measured_limit_random_level"] <= 1
    # After a Hessian, a barrier with its own curve settings is measured, not refused.
    assert main(["barrier", run_id, "--out", str(tmp_path), "--set", "landscape.points=3",
                 "--set", "landscape.examples=100"]) == 0
    assert '"points": 3' in capsys.readouterr().out
    stage = next(s for s in os.listdir(tmp_path / run_id / "replicate_0") if s.startswith("successive_0_"))
    curve = store.read_h5(tmp_path / run_id / "replicate_0" / stage)["curve"]
    assert len(curve["alpha"]) == 3


def test_layers_needs_no_data_and_names_the_layers(capsys):
    # The input shape and classes of cifar10 come from its name: no files under data.root.
    assert main(["layers", "--set", "data.dataset=cifar10", "--set", "model.name=resnet20",
                 "--set", "data.root=/nonexistent"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert "fc.weight" in names and "layer1.0.conv1.weight" in names
    assert "layer2.0.downsample.0.weight" in names and names[0] == "conv1.weight"


def test_the_output_layer_is_fc_weight_in_every_model(capsys):
    from imp.models import MODELS

    for name in sorted(MODELS):
        assert main(["layers", "--set", "data.dataset=cifar10", "--set", f"model.name={name}",
                     "--set", "prune.exclude=['fc.weight']", "--set", "data.root=/nonexistent"]) == 0, name
        last = capsys.readouterr().out.splitlines()[-2].split()  # the last tensor, then the total
        assert last[0] == "fc.weight" and last[1].startswith("10x") and last[-1] == "excluded", name



def test_version(capsys):
    from imp import __version__

    try:
        main(["--version"])
    except SystemExit as exit:
        assert exit.code == 0
    assert capsys.readouterr().out.strip() == f"lth {__version__}"


def test_quiet_keeps_the_progress_lines_and_silent_hides_them(tmp_path, capsys):
    args = ["run", *TINY[:-1], "--set", "prune.levels=1"]
    assert main([*args, "--out", str(tmp_path / "quiet"), "--quiet"]) == 0
    quiet = capsys.readouterr()
    assert "replicate 0 level_1: density" in quiet.err and "run id " in quiet.out
    assert main([*args, "--out", str(tmp_path / "silent"), "--silent"]) == 0
    silent = capsys.readouterr()
    assert silent.err == "" and silent.out.splitlines()[:-1] == quiet.out.splitlines()[:-1]  # the same table
    run_id = silent.out.split("run id ")[1].split(";")[0]
    assert main(["distance", run_id, "--out", str(tmp_path / "silent"), "--silent"]) == 0
    measured = capsys.readouterr()
    assert measured.err == "" and "distance [" in measured.out


def test_upgrade_without_the_data_keeps_the_id_and_says_so(tmp_path, capsys):
    import shutil

    from tests.imp.test_datasets import synthetic_idx, write_idx

    write_idx(tmp_path / "data" / "MNIST" / "raw", synthetic_idx(n_train=40, n_test=10, height=28, width=28),
              compressed=True)
    assert main(["run", "--out", str(tmp_path / "out"), "--set", "data.dataset=mnist", "--set",
                 f"data.root='{tmp_path / 'data'}'", "--set", "model.widths=[8]", "--set", "train.epochs='5it'",
                 "--set", "train.eval_every='5it'", "--set", "data.batch_size=16", "--quiet"]) == 0
    run_id = capsys.readouterr().out.split("run id ")[1].split(";")[0]
    shutil.rmtree(tmp_path / "data")
    assert main(["upgrade", run_id, "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id} keeps its id: its data was not found" in out and (tmp_path / "out" / run_id).is_dir()
