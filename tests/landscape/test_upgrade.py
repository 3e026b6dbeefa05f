"""`lth upgrade` turns measurements stored before settings ids, and parameters stored
before named layers, into today's layout.

The old files are made from fresh new-layout ones by undoing the conversion, exactly as
the old code wrote them (a level file plus the measurement for perturbations and prune
checks; the curve settings once in run.h5; the parameters under their old names, the
config's prune patterns too, in the folder of that config's id), so the upgrade must give
back the same files."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from imp.base import names, store
from imp.base.config import canonical_json, from_dict, load_config, run_id
from imp.base.errors import UserError
from imp.legacy import CONFIG_BEFORE, RUN_ID_BEFORE, names_model, old_to_new
from imp.base.results import find_run, measurements
from imp.trunk import run_imp
from landscape.hooks import level_hooks
from runs.lth.cli import main

CPU = torch.device("cpu")
TINY = ["model.widths=[16]", "train.epochs='40it'", "train.eval_every='20it'", "data.batch_size=64",
        "prune.levels=1", "landscape.successive=true", "landscape.siblings=2", "landscape.per_example=true",
        "landscape.points=3", "landscape.examples=100", "landscape.perturb_sizes=[0.5]",
        "landscape.hessian=true", "landscape.hessian_examples=100", "landscape.slq_runs=2",
        "landscape.slq_steps=5", "landscape.trace_samples=0", "landscape.prune_check=[0.3, 0.6]",
        "landscape.hessian_deflate=4", "landscape.hessian_exact_limit=0"]
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
        if old == "hessian":
            store.write_h5(run.stage_file(m.replicate, f"hessian_{m.level}"), old_hessian(tree), provenance)
        elif old:
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
    for stage in run.stages(0):
        if "_random" in stage:  # random-mask prune checks came later
            run.stage_file(0, stage).unlink()


def old_hessian(tree: dict) -> dict:
    """A Hessian measurement as stored before Gauss-Newton curvature (its numbers made up
    where the new one has no counterpart: they only have to survive the upgrade)."""
    kept = ("eigenvalues", "residuals", "lanczos_iterations", "lanczos_products", "active_coordinates",
            "unpruned_weights", "examples", "bn", "eps", "conservative_fraction")
    return {**{key: tree[key] for key in kept}, "predicted_fraction": 0.5,
            "slq": {"nodes": np.linspace(0, 1, 10).reshape(2, 5), "weights": np.full((2, 5), 0.2)}}


def changed(stage: str) -> bool:
    """Measurements whose layout and settings changed since: converted as they were, and
    measured afresh when asked again (with the random-mask networks of new prune checks)."""
    return stage.startswith(("hessian_", "prune_check_")) or "_random" in stage


def make_old_names(run: store.RunDir, prune_before: dict | None = None) -> store.RunDir:
    """Rewrite the run as stored before named layers: every network file's parameters and
    masks under their old names and, with ``prune_before``, the config's prune section as
    it was then, stored in every file, the run in the folder of that config's id."""
    config = json.loads(store.read_config_json(run))
    model = names_model(from_dict(config))
    old_of = {new: old for old, new in old_to_new(model).items()}
    config_json = canonical_json(from_dict({**config, "prune": {**config.get("prune", {}), **(prune_before or {})}}))
    for path in [run.run_file] + [run.stage_file(r, stage) for r in run.replicates() for stage in run.stages(r)]:
        tree = store.read_h5(path)
        provenance = {**tree.pop(names.PROVENANCE), "config": config_json}
        for group in ("weights", "mask"):
            if group in tree:
                tree[group] = {old_of[key]: value for key, value in tree[group].items()}
        store.write_h5(path, tree, provenance)
    old = store.RunDir(run.out, run_id(from_dict(json.loads(config_json))))
    if old.path != run.path:
        os.rename(run.path, old.path)
    return old


def file_bytes(folder: Path) -> dict:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_bitwise(a: dict, b: dict, where: str) -> None:
    assert list(a) == list(b), where
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].tobytes() == b[key].tobytes(), f"{where}/{key}"


def all_trees(run: store.RunDir) -> dict:
    return {stage: strip(store.read_h5(run.stage_file(0, stage))) for stage in run.stages(0)}


def assert_same(a, b, where=""):
    if isinstance(a, dict):
        assert set(a) == set(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    else:
        np.testing.assert_array_equal(a, b, err_msg=where)


@pytest.mark.parametrize("old_names", [False, True])
def test_upgrade_gives_back_the_current_layout(tmp_path, capsys, old_names):
    config = load_config(None, TINY)
    run = run_imp(config, tmp_path, tmp_path, CPU, hooks=level_hooks(config, CPU))
    fresh = all_trees(run)
    make_legacy(run)
    if old_names:  # as the runs before named layers were: their measurements are older still
        assert make_old_names(run).path == run.path  # no prune patterns: the same run id
    old = set(run.stages(0))
    assert {"barrier_0", "instability_1", "hessian_1", "perturb_0_gaussian_0.5", "prune_check_1_0.3"} <= old
    with pytest.raises(UserError, match="lth upgrade"):
        find_run(run.run_id, tmp_path)
    assert main(["show", run.run_id, "--out", str(tmp_path)]) == 2
    assert "lth upgrade" in capsys.readouterr().err

    assert main(["upgrade", run.run_id, "--out", str(tmp_path)]) == 0
    # 1 successive, 2 instability, 2 hessian, 2 perturb, 2 levels x 2 prune checks
    out = capsys.readouterr().out
    assert "converted 11 file(s)" in out
    # rewind, 2 levels, 2 siblings, 2 perturbed, 2 levels x 2 pruned networks
    assert ("renamed the parameters in 11 file(s)" in out) == old_names
    upgraded = all_trees(run)
    hessians = {s for s in upgraded if s.startswith("hessian_")}
    # The old Hessian files did not record every setting: marked legacy, never reused.
    assert len(hessians) == 2 and all(json.loads(store.read_h5(run.stage_file(0, s))["settings"])["legacy"]
                                      for s in hessians)
    assert {s for s in upgraded if not changed(s)} == {s for s in fresh if not changed(s)}
    for stage in set(fresh) & set(upgraded):
        assert_same(fresh[stage], upgraded[stage], stage)
    for stage in hessians:
        level = stage.split("_")[1]
        assert_same(old_hessian(fresh[next(s for s in fresh if s.startswith(f"hessian_{level}_"))]),
                    strip(upgraded[stage]), stage)
    for stage in (s for s in upgraded if s.startswith("prune_check_")):
        level = stage.split("_")[2]
        new = fresh[next(s for s in fresh if s.startswith(f"prune_check_{level}_"))]
        np.testing.assert_array_equal(upgraded[stage]["test_error"], new["magnitude"]["test_error"][:, 0])
        np.testing.assert_array_equal(upgraded[stage]["matching"], new["matching"])
    assert main(["upgrade", run.run_id, "--out", str(tmp_path)]) == 0
    assert "nothing in the old layout" in capsys.readouterr().out
    # asking again with the run's settings reuses every exact conversion and measures the changed ones
    run_imp(config, tmp_path, tmp_path, CPU, hooks=level_hooks(config, CPU))
    assert set(run.stages(0)) == set(upgraded) | {s for s in fresh if changed(s)}


NAMED = ["model.widths=[16]", "train.epochs='40it'", "train.eval_every='20it'", "data.batch_size=64",
         "prune.levels=1", "prune.rewind='10it'", "prune.baselines=['reinit']", "prune.exclude=['fc.weight']"]


def test_upgrade_renames_parameters_stored_before_named_layers(tmp_path, capsys):
    config = load_config(None, NAMED)
    run = run_imp(config, tmp_path, tmp_path, CPU)
    fresh = {stage: store.read_h5(run.stage_file(0, stage)) for stage in run.stages(0)}
    old = make_old_names(run, {"exclude": ["3.weight"]})  # what "fc.weight" was called then
    assert old.run_id != run.run_id and not run.path.exists()
    before = file_bytes(tmp_path)

    # Refused in one line: lth barrier checks the run's names first (imp.legacy.check_run in
    # runs.lth.measure); the load sites (imp.legacy.load_state) are the second line of defence.
    assert main(["barrier", old.run_id, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "named before named layers (e.g. '1.weight')" in error
    assert f"lth upgrade {old.path}" in error
    assert file_bytes(tmp_path) == before
    run.path.mkdir()  # the translated config's folder is taken: refused, nothing written
    assert main(["upgrade", old.run_id, "--out", str(tmp_path)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert file_bytes(tmp_path) == before
    run.path.rmdir()

    assert main(["upgrade", old.run_id, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "prune.exclude '3.weight' -> 'fc.weight'" in out
    assert f"run {old.run_id} -> {run.run_id}" in out
    assert f"renamed the parameters in 4 file(s) of run {run.run_id}" in out  # rewind, 2 levels, reinit
    assert run.path.is_dir() and not old.path.exists()
    for stage, tree in fresh.items():
        upgraded = store.read_h5(run.stage_file(0, stage))
        for group in ("weights", "mask"):
            assert_bitwise(tree.get(group, {}), upgraded.get(group, {}), f"{stage}/{group}")
        assert_same(strip(tree), strip(upgraded), stage)
        assert upgraded[names.PROVENANCE]["config"] != canonical_json(config)  # its provenance is kept
    stored = store.read_run(run)
    assert stored[names.PROVENANCE]["config"] == canonical_json(config)
    assert json.loads(stored[CONFIG_BEFORE])["prune"]["exclude"] == ["3.weight"]
    assert stored[RUN_ID_BEFORE] == old.run_id

    assert main(["upgrade", run.run_id, "--out", str(tmp_path)]) == 0
    assert "nothing in the old layout" in capsys.readouterr().out
    after = file_bytes(tmp_path)
    # the config with today's names finds the converted run and extends it
    assert run_imp(load_config(None, NAMED + ["prune.levels=2"]), tmp_path, tmp_path, CPU).path == run.path
    assert set(run.stages(0)) == set(fresh) | {"level_2", "level_2_reinit"}
    assert all(after[path] == path.read_bytes() for path in after if path.suffix == ".h5" and path.name != "run.h5")
