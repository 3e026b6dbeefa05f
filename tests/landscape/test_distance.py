"""The weight-distance and mask-overlap measurement, added through the registry alone."""

import numpy as np
import torch

from imp.base import store
from imp.base.config import load_config, to_dict
from imp.base.results import level_rows
from imp.trunk import run_imp
from landscape.hooks import level_hooks
from runs.lth.cli import main
from tests.landscape.conftest import measured, only

CPU = torch.device("cpu")
TINY = ["model.widths=[32, 16]", "train.epochs='40it'", "train.eval_every='20it'", "data.batch_size=64",
        "prune.levels=2", "prune.rewind='10it'"]


def test_distance_during_a_run_against_a_direct_computation(tmp_path):
    config = load_config(None, TINY + ["landscape.distance=true"])
    assert to_dict(config, defaults=True, platform=True)["landscape"]["distance"] is True  # as `lth config` shows
    run = run_imp(config, tmp_path, tmp_path, CPU, hooks=level_hooks(config, CPU))
    assert len(measured(run, "distance")) == 2 and measured(run, "distance", 2) == []
    for level in (0, 1):
        a, b = (store.read_h5(run.stage_file(0, f"level_{level + i}")) for i in (0, 1))
        tree = store.read_h5(run.stage_file(0, only(run, "distance", level)))
        flat = [np.concatenate([t["weights"][n].ravel().astype(np.float64) for n in sorted(a["mask"])]) for t in (a, b)]
        assert np.isclose(tree["weight_distance"], np.linalg.norm(flat[0] - flat[1]), rtol=1e-12)
        assert np.isclose(tree["relative_weight_distance"], tree["weight_distance"] / np.linalg.norm(flat[0]))
        masks = [np.concatenate([t["mask"][n].ravel() for n in sorted(a["mask"])]) for t in (a, b)]
        jaccard = np.sum(masks[0] & masks[1]) / np.sum(masks[0] | masks[1])
        assert tree["mask_jaccard"] == jaccard == b["kept"] / a["kept"]  # nested masks
        assert 0 < tree["weight_distance"]
    rows = {r["level"]: r for r in level_rows(run) if r["baseline"] is None}
    assert rows[1]["mask_jaccard_to_next"] == store.read_h5(run.stage_file(0, only(run, "distance", 1)))["mask_jaccard"]


def test_distance_has_its_own_command(tmp_path, capsys):
    config = load_config(None, TINY)
    run = run_imp(config, tmp_path, tmp_path, CPU)
    assert main(["distance", run.run_id, "--out", str(tmp_path), "--levels", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("replicate 0 level 1 distance [") and "mask_jaccard_to_next 0.8" in out
    assert measured(run, "distance", 0) == [] and len(measured(run, "distance", 1)) == 1
    assert main(["distance", run.run_id, "--out", str(tmp_path), "--levels", "2"]) == 2  # no level 3
