"""`lth upgrade` turns measurements stored before settings ids into today's layout.

The old files are made from fresh new-layout ones by undoing the conversion, exactly as
the old code wrote them (a level file plus the measurement for perturbations and prune
checks; the curve settings once in run.h5), so the upgrade must give back the same files."""

import json

import numpy as np
import pytest
import torch

from imp import names, store
from imp.config import load_config
from imp.errors import UserError
from imp.results import find_run, measurements
from imp.trunk import run_imp
from landscape.hooks import level_hooks
from runs.cli import main

CPU = torch.device("cpu")
TINY = ["model.widths=[16]", "train.epochs='40it'", "train.eval_every='20it'", "data.batch_size=64",
        "prune.levels=1", "landscape.successive=true", "landscape.siblings=2", "landscape.per_example=true",
        "landscape.points=3", "landscape.examples=100", "landscape.perturb_sizes=[0.5]",
        "landscape.hessian=true", "landscape.hessian_examples=100", "landscape.slq_runs=2",
        "landscape.slq_steps=5", "landscape.trace_samples=0", "landscape.prune_check=[0.3, 0.6]"]
MEASUREMENT_KEYS = (*names.MEASUREMENT_ATTRS, names.COLUMNS_GROUP)


def strip(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k not in MEASUREMENT_KEYS and k != names.PROVENANCE}


def make_legacy(run: store.RunDir) -> None:
    """Rewrite the run's measurements in the layout before settings ids."""
    provenance = store.read_run(run)[names.PROVENANCE]
    curve = {"points": 3, "examples": 100, "bn": "reestimate", "bn_examples": 2048}
    stored = {k: v for k, v in store.read_run(run).items() if k != names.PROVENANCE}
    store.write_h5(run.run_file, {**stored, "landscape_settings": json.dumps(curve)}, provenance)
    for m in measurements(run):
        path = run.stage_file(m.replicate, m.stage)
        tree = strip(store.read_h5(path))
        old = {"successive": "barrier", "instability": "instability", "hessian": "hessian"}.get(m.measurement)
        if old:
            store.write_h5(run.stage_file(m.replicate, f"{old}_{m.level}"), tree, provenance)
        elif m.measurement == "perturb":
            network = run.stage_file(m.replicate, tree.pop("network"))
            level = strip(store.read_h5(network))
            store.write_h5(run.stage_file(m.replicate, f"perturb_{m.level}_{tree['direction']}_{tree['size']:g}"),
                           {**level, **tree}, provenance)
            network.unlink()
        else:
            for i, fraction in enumerate(tree["fractions"]):
                network = run.stage_file(m.replicate, names.pruned_stage(m.level, fraction))
                level = strip(store.read_h5(network))
                level.update({"from_level": m.level, "dense_test_error": tree["dense_test_error"],
                              "matching_tolerance": tree["matching_tolerance"], "matching": bool(tree["matching"][i])})
                store.write_h5(run.stage_file(m.replicate, f"prune_check_{m.level}_{fraction:g}"), level, provenance)
                network.unlink()
        path.unlink()


def all_trees(run: store.RunDir) -> dict:
    return {stage: strip(store.read_h5(run.stage_file(0, stage))) for stage in run.stages(0)}


def assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    else:
        np.testing.assert_array_equal(a, b, err_msg=where)


def test_upgrade_gives_back_the_current_layout(tmp_path, capsys):
    config = load_config(None, TINY)
    run = run_imp(config, tmp_path, tmp_path, CPU, hooks=level_hooks(config, CPU))
    fresh = all_trees(run)
    make_legacy(run)
    old = set(run.stages(0))
    assert {"barrier_0", "instability_1", "hessian_1", "perturb_0_gaussian_0.5", "prune_check_1_0.3"} <= old
    with pytest.raises(UserError, match="lth upgrade"):
        find_run(run.run_id, tmp_path)
    assert main(["show", run.run_id, "--out", str(tmp_path)]) == 2
    assert "lth upgrade" in capsys.readouterr().err

    assert main(["upgrade", run.run_id, "--out", str(tmp_path)]) == 0
    # 1 successive, 2 instability, 2 hessian, 2 perturb, 2 levels x 2 prune checks
    assert "converted 11 file(s)" in capsys.readouterr().out
    upgraded = all_trees(run)
    hessians = {s for s in upgraded if s.startswith("hessian_")}
    # The old Hessian files did not record every setting: marked legacy, never reused.
    assert len(hessians) == 2 and all(json.loads(store.read_h5(run.stage_file(0, s))["settings"])["legacy"]
                                      for s in hessians)
    assert set(upgraded) - hessians == set(fresh) - {s for s in fresh if s.startswith("hessian_")}
    for stage in set(fresh) & set(upgraded):
        assert_same(fresh[stage], upgraded[stage], stage)
    for stage in hessians:
        level = stage.split("_")[1]
        assert_same(fresh[next(s for s in fresh if s.startswith(f"hessian_{level}_"))], upgraded[stage], stage)
    assert main(["upgrade", run.run_id, "--out", str(tmp_path)]) == 0
    assert "nothing in the old layout" in capsys.readouterr().out
    # asking again with the run's settings reuses every exact conversion and adds only the Hessians
    run_imp(config, tmp_path, tmp_path, CPU, hooks=level_hooks(config, CPU))
    assert set(run.stages(0)) == set(upgraded) | {s for s in fresh if s.startswith("hessian_")}
