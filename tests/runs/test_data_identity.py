"""A run, a scores file and a cache know the data they were made from (its fingerprint),
and refuse other data in one line: data.root is not part of the run id."""

import shutil

import numpy as np
import pytest
import torch

from imp.base.config import load_config
from imp.base.errors import UserError
from imp.data import fingerprint, load_dataset
from imp.datasets import read_digits
from imp.base.duration import Duration
from imp.scores import ScoreSpec, load_or_compute, read_scores
from runs.lth.cli import main
from tests.imp.test_datasets import image_tree, write_png

IMAGES = ["--set", "data.dataset=imagefolder", "--set", "model.widths=[8]", "--set", "train.epochs='4it'",
          "--set", "train.eval_every='4it'", "--set", "data.batch_size=4", "--set", "prune.levels=1", "--quiet"]


def test_the_fingerprint_follows_the_files_not_the_folder(tmp_path):
    raw = read_digits(tmp_path)
    assert fingerprint(raw) == fingerprint(read_digits(tmp_path)) and len(fingerprint(raw)) == 16
    one_label = raw.y_train.copy()
    one_label[5] = (one_label[5] + 1) % 10
    assert fingerprint(raw) != fingerprint(type(raw)(raw.x_train, one_label, raw.x_test, raw.y_test, 10, 16.0, False))
    one_pixel = raw.x_test.copy()
    one_pixel[0, 0, 3, 3] += 1  # position 0 is always among the sampled inputs
    assert fingerprint(raw) != fingerprint(type(raw)(raw.x_train, raw.y_train, one_pixel, raw.y_test, 10, 16.0, False))
    for name in ("a", "b"):  # the same images in two folders
        image_tree(tmp_path / name, np.random.default_rng(0))
    config = load_config(None, ["data.dataset=imagefolder"])
    prints = [load_dataset(config.data, tmp_path / name).fingerprint for name in ("a", "b")]
    assert prints[0] == prints[1] and prints[0]


def snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*.h5"))}


def test_a_run_refuses_other_data_under_the_same_config(tmp_path, capsys, monkeypatch):
    image_tree(tmp_path / "a", np.random.default_rng(0))
    image_tree(tmp_path / "b", np.random.default_rng(1))  # other images, the same layout
    out = str(tmp_path / "results")
    assert main(["run", "--out", out, "--set", f"data.root='{tmp_path / 'a'}'", *IMAGES]) == 0
    run_id = capsys.readouterr().out.split("run id ")[1].split(";")[0]
    before = snapshot(tmp_path / "results")
    assert main(["run", "--out", out, "--set", f"data.root='{tmp_path / 'b'}'", *IMAGES,
                 "--set", "prune.levels=2"]) == 2
    err = capsys.readouterr().err
    assert err.count("lth: error:") == 1 and "was trained on other data than this imagefolder" in err
    assert "point data.root at the data it was trained on" in err and "Traceback" not in err
    assert snapshot(tmp_path / "results") == before
    # the same files elsewhere are the same data: the run extends
    shutil.copytree(tmp_path / "a", tmp_path / "copy", ignore=shutil.ignore_patterns(".lth-cache.npz"))
    assert main(["run", "--out", out, "--set", f"data.root='{tmp_path / 'copy'}'", *IMAGES,
                 "--set", "prune.levels=2"]) == 0
    capsys.readouterr()
    # the files the run was trained on change under it: measuring it is refused too
    write_png(tmp_path / "copy" / "train" / "cat" / "000.png", np.zeros((5, 7, 3), np.uint8))
    before = snapshot(tmp_path / "results")
    assert main(["barrier", run_id, "--out", out]) == 2
    assert "was trained on other data" in capsys.readouterr().err
    assert snapshot(tmp_path / "results") == before


def test_scores_of_other_data_are_refused(tmp_path):
    image_tree(tmp_path / "a", np.random.default_rng(0))
    image_tree(tmp_path / "b", np.random.default_rng(1))
    config = load_config(None, ["data.dataset=imagefolder", "model.widths=[8]", "data.batch_size=4"])
    a, b = (load_dataset(config.data, tmp_path / name) for name in ("a", "b"))
    spec = ScoreSpec("el2n", Duration(iterations=2))
    tree, path = load_or_compute(config, a, spec, tmp_path / "results", threads=None)
    assert tree["data_fingerprint"] == a.fingerprint and read_scores(path, a)["data_fingerprint"] == a.fingerprint
    with pytest.raises(UserError, match="scores other data than this imagefolder"):
        load_or_compute(config, b, spec, tmp_path / "results", threads=None)  # the cached file is a's
    with pytest.raises(UserError, match="scores other data"):
        read_scores(path, b)


def test_correlate_refuses_scores_of_different_data(tmp_path, capsys):
    image_tree(tmp_path / "a", np.random.default_rng(0))
    image_tree(tmp_path / "b", np.random.default_rng(1))
    config = load_config(None, ["data.dataset=imagefolder", "model.widths=[8]", "data.batch_size=4"])
    spec = ScoreSpec("el2n", Duration(iterations=2))
    paths = [load_or_compute(config, load_dataset(config.data, tmp_path / name), spec, tmp_path / name / "out",
                             threads=None)[1] for name in ("a", "b")]
    assert main(["correlate", str(paths[0]), str(paths[0])]) == 0
    capsys.readouterr()
    assert main(["correlate", *map(str, paths)]) == 2
    err = capsys.readouterr().err
    assert err.count("lth: error:") == 1 and "computed on different data" in err
