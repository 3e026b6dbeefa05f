"""Determinism on the CPU: one config and seed give the same numbers, bit for bit, in two
separate runs (BatchNorm, augmentation, a data diet with scores, landscape stages);
different replicates and different seeds give different numbers."""

import numpy as np

from imp.base import store
from runs.lth.cli import main
from tests.runs.test_kill import assert_same_results, stored_files

SETTINGS = ["model.name='resnet20'", "model.width=4", "data.augment='flip_crop'", "train.epochs='3ep'",
            "train.eval_every='3ep'", "train.momentum=0.9", "data.batch_size=128", "prune.levels=1",
            "prune.baselines=['random']", "diet.pretrain='5it'", "diet.subset='easy'", "diet.size=500",
            "diet.score_step='1ep'", "landscape.successive=true", "landscape.points=3",
            "landscape.examples=100", "landscape.bn_examples=100"]


def lth_run(out, *extra):
    args = [item for setting in [*SETTINGS, *extra] for item in ("--set", setting)]
    assert main(["run", "--out", str(out), "--quiet", "--replicates", "2", *args]) == 0
    return {p.relative_to(out): store.read_h5(p) for p in stored_files(out)}


def test_same_config_same_numbers_and_replicates_and_seeds_differ(tmp_path):
    first = lth_run(tmp_path / "a")
    lth_run(tmp_path / "b")
    assert_same_results(tmp_path / "a", tmp_path / "b", "(two runs of one config)")

    [run] = {path.parts[0] for path in first if path.parts[0] != "scores"}
    level = {r: first[store.Path(run, f"replicate_{r}", "level_1.h5")] for r in (0, 1)}
    assert level[0]["seeds"] != level[1]["seeds"]
    assert not np.array_equal(level[0]["weights"]["fc.weight"], level[1]["weights"]["fc.weight"])
    assert not np.array_equal(level[0]["mask"]["fc.weight"], level[1]["mask"]["fc.weight"])

    reseeded = lth_run(tmp_path / "c", "train.seed=1")
    [other] = {path.parts[0] for path in reseeded if path.parts[0] != "scores"}
    a = first[store.Path(run, "replicate_0", "level_0.h5")]["weights"]["fc.weight"]
    b = reseeded[store.Path(other, "replicate_0", "level_0.h5")]["weights"]["fc.weight"]
    assert not np.array_equal(a, b)
