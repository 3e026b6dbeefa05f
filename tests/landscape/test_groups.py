"""Barriers on groups of training examples (Paul et al. 2021, Fig. 4): the groups are the
examples the scores say, every example gives the full-set barrier, bad settings are one line."""

import numpy as np
import pytest

from imp.base import store
from runs.lth.cli import main
from tests.landscape.conftest import only

TINY = ["--set", "model.widths=[16]", "--set", "train.epochs='60it'", "--set", "train.eval_every='30it'",
        "--set", "prune.rewind='10it'", "--quiet"]
CURVES = ["--set", "landscape.points=5", "--set", "landscape.examples=0", "--set", "landscape.group_score_step='1ep'"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("groups")
    assert main(["run", "--out", str(out), *TINY]) == 0
    (run_id,) = [p.name for p in out.iterdir()]
    return out, run_id


def _ranked(scores, highest):
    """Positions by score, ties by position, in plain Python (an independent ranking)."""
    key = (lambda p: (-scores[p], p)) if highest else (lambda p: (scores[p], p))
    return sorted(range(len(scores)), key=key)


def test_the_groups_are_the_lowest_and_highest_scores_and_every_example_is_the_full_barrier(run, tmp_path, capsys):
    out, run_id = run
    every = tmp_path / "every.txt"
    every.write_text("\n".join(map(str, range(1437))))  # digits' whole training set
    assert main(["groups", run_id, "--out", str(out), *CURVES, "--set", f"landscape.group_index_file='{every}'"]) == 0
    assert main(["barrier", run_id, "--out", str(out), "--siblings", "2", *CURVES[:4]]) == 0
    capsys.readouterr()
    folder = store.RunDir(out, run_id)
    tree = store.read_h5(folder.stage_file(0, only(folder, "groups", 0)))
    (scores_file,) = (out / "scores").glob("el2n_*.h5")
    scores = store.read_h5(scores_file)["mean"].tolist()
    count = round(0.1 * 1437)  # 143.7 -> 144
    groups = tree["groups"]
    assert groups["low"]["index"].tolist() == sorted(_ranked(scores, highest=False)[:count])
    assert groups["high"]["index"].tolist() == sorted(_ranked(scores, highest=True)[:count])
    assert groups["file"]["index"].tolist() == list(range(1437))
    assert tree["spawn_step"] == 10 and tree["copies"] == 2
    # every example: the curve and barrier of the siblings' instability on the training set
    instability = store.read_h5(folder.stage_file(0, only(folder, "instability", 0)))["pairs"]["0_1"]
    whole = groups["file"]["pairs"]["0_1"]
    np.testing.assert_allclose(whole["curve"]["train_error"], instability["curve"]["train_error"], rtol=0, atol=1e-12)
    for key in ("train_error", "train_loss"):
        assert whole["barrier"][key]["interpolated"] == pytest.approx(instability["barrier"][key]["interpolated"],
                                                                       abs=1e-12)
    # a group's curve is the mean of its examples' errors: low and high bracket the whole set's
    low, high = groups["low"]["pairs"]["0_1"]["curve"], groups["high"]["pairs"]["0_1"]["curve"]
    assert np.all(low["train_error"] <= whole["curve"]["train_error"] + 1e-12)
    assert np.all(high["train_error"] >= whole["curve"]["train_error"] - 1e-12)


def test_the_index_files_contents_key_the_settings(run, tmp_path, capsys):
    out, run_id = run
    chosen = tmp_path / "chosen.npy"
    np.save(chosen, np.arange(0, 1437, 7))
    arguments = ["groups", run_id, "--out", str(out), *CURVES, "--set", f"landscape.group_index_file='{chosen}'"]
    assert main(arguments) == 0
    first = capsys.readouterr().out
    np.save(chosen, np.arange(0, 1437, 5))  # the same name, other examples: another variant
    assert main(arguments) == 0
    second = capsys.readouterr().out
    ids = [text.split("groups [")[1].split("]")[0] for text in (first, second)]
    assert ids[0] != ids[1]


@pytest.mark.parametrize("setting, message", [
    ("landscape.group_fraction=0.9", "landscape.group_fraction = 0.9 must be in (0, 0.5]"),
    ("landscape.group_score=el2m", "landscape.group_score = 'el2m' is not one of"),
    ("landscape.group_index_file='{tmp}/none.npy'", "cannot read"),
    ("landscape.group_index_file='{tmp}/far.txt'", "1 of its indices are not in this run's training split"),
])
def test_bad_group_settings_are_one_line_and_store_nothing(tmp_path, capsys, setting, message):
    out = tmp_path / "results"
    assert main(["run", "--out", str(out), *TINY]) == 0  # a run of its own: no sibling trained yet
    (run_id,) = [p.name for p in out.iterdir() if p.name != "scores"]
    (tmp_path / "far.txt").write_text("3\n99999\n")
    before = sorted(p.name for p in (out / run_id / "replicate_0").iterdir())
    assert main(["groups", run_id, "--out", str(out), *CURVES, "--set", setting.format(tmp=tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in (out / run_id / "replicate_0").iterdir()) == before  # no sibling, no result
