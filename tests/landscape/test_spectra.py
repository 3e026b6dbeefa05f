import numpy as np
import pytest
import torch

from imp.base import store
from imp.base.config import load_config
from imp.base.results import level_rows
from imp.trunk import run_imp
from landscape.hooks import level_hooks
from tests.landscape.conftest import measured, only

CPU = torch.device("cpu")
TINY = ["model.widths=[32, 16]", "train.epochs='80it'", "train.eval_every='40it'", "data.batch_size=64",
        "train.momentum=0.9", "prune.levels=1", "landscape.hessian=true", "landscape.hessian_levels=[1]",
        "landscape.hessian_examples=200", "landscape.slq_runs=3", "landscape.slq_steps=10",
        "landscape.hessian_deflate=8", "landscape.hessian_exact_limit=0",
        "landscape.trace_samples=5", "landscape.prune_check=[0.3, 0.95]", "landscape.matching_tolerance=0.02"]


def test_hessian_and_prune_check_after_a_level(tmp_path):
    config = load_config(None, TINY)
    run = run_imp(config, tmp_path, tmp_path, CPU, hooks=level_hooks(config, CPU))
    assert measured(run, "hessian", 0) == [] and measured(run, "prune_check", 0) == []
    tree = store.read_h5(run.stage_file(0, only(run, "hessian", 1)))
    eigenvalues = tree["eigenvalues"]
    assert eigenvalues.shape == (5,) and np.all(np.diff(eigenvalues) <= 0) and eigenvalues[0] > 0
    level = store.read_h5(run.stage_file(0, "level_1"))
    assert tree["unpruned_weights"] == level["kept"]
    assert tree["active_coordinates"] == level["kept"] + 32 + 16 + 10  # plus the biases
    assert tree["fixed_coordinates"] == 32 + 16 + 10
    ggn = tree["spectra"]["ggn"]
    assert ggn["method"] == "lanczos+slq" and ggn["top"].shape == (8,) and ggn["top"].min() > 0
    assert ggn["negative_mass"] == 0.0  # the Gauss-Newton curvature is positive semi-definite
    assert tree["rank_bound"] == 9 * 200 and tree["rank_bound_warning"]  # 1,800 < 10 x active
    assert tree["outside_domain"] == (tree["negative_mass"] > 0.05)
    assert tree["eps"] == 0.01 and tree["eps_mode"] == "fixed" and tree["bn"] == "eval" and tree["examples"] == 200
    for curvature in ("ggn", "hessian_abs", "hessian_positive"):
        for rule in ("magnitude", "random", "random_sampled"):
            grid = tree["predicted"][curvature][rule]
            assert grid.shape == (7,) and np.all((0 <= grid) & (grid <= 1)) and np.all(np.diff(grid) >= 0)
            assert tree["predicted"][curvature][rule + "_at_eps"] == grid[2]  # eps 0.01 is on the grid
            assert 0 <= tree["quadratic"][curvature][rule + "_at_eps"] <= 1
    removal = tree["removal"]
    assert removal["magnitude"]["count"][-1] == level["kept"] and removal["random"]["squares"][0] == 0
    # magnitude pruning removes the smallest weights: never more squared norm than random
    assert np.all(removal["magnitude"]["squares"] <= removal["random"]["squares"] * (1 + 1e-9) + 1e-12)

    dense_error = 1 - store.read_h5(run.stage_file(0, "level_0"))["final"]["test_accuracy"]
    level_error = 1 - level["final"]["test_accuracy"]
    summary = store.read_h5(run.stage_file(0, only(run, "prune_check", 1)))
    np.testing.assert_array_equal(summary["fractions"], [0.3, 0.95])
    assert summary["dense_test_error"] == dense_error and summary["level_test_error"] == level_error
    for i, fraction in enumerate((0.3, 0.95)):
        magnitude = store.read_h5(run.stage_file(0, f"pruned_1_{fraction:g}"))
        randoms = [store.read_h5(run.stage_file(0, f"pruned_1_{fraction:g}_random{s}")) for s in (0, 1)]
        removed = level["kept"] - int(np.floor(fraction * level["kept"] + 0.5))
        assert magnitude["kept"] == removed and all(r["kept"] == removed for r in randoms)
        assert magnitude["start_step"] == 0 and magnitude["fraction"] == fraction and magnitude["from_level"] == 1
        assert [r["random_mask"] for r in randoms] == [0, 1]
        masks = [np.concatenate([v.reshape(-1) for v in r["mask"].values()]) for r in [magnitude] + randoms]
        assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])
        errors = [1 - r["final"]["test_accuracy"] for r in randoms]
        assert summary["magnitude"]["test_error"][i, 0] == 1 - magnitude["final"]["test_accuracy"]
        assert summary["random"]["mean_test_error"][i] == pytest.approx(np.mean(errors))
        for rule in ("magnitude", "random"):
            mean = summary[rule]["mean_test_error"][i]
            assert summary[rule]["matching_dense"][i] == (mean <= dense_error + 0.02)
            assert summary[rule]["matching_level"][i] == (mean <= level_error + 0.02)
    grid = summary["curvature_grid"]
    assert 0.95 in grid and 0.5 in grid
    for rule in ("magnitude", "random"):
        assert summary["direction"][rule]["curvature"].shape == grid.shape
        assert np.all(summary["direction"][rule]["curvature"] >= 0)  # d^T G d with G PSD
    # |d|^2 along magnitude pruning is the projection length l^2(p) the prediction used
    for i, fraction in enumerate(grid):
        np.testing.assert_allclose(summary["direction"]["magnitude"]["squared_norm"][i],
                                   removal["magnitude"]["squares"][int(round(fraction * 1000))], rtol=1e-9)
    rise = summary["direction"]["magnitude"]["loss_rise"]
    assert rise[-1] > rise[0]  # pruning 95% by magnitude costs more training loss than 10%
    row = next(r for r in level_rows(run) if r["level"] == 1 and r["baseline"] is None)
    assert row["hessian_top_eigenvalue"] == eigenvalues[0]
    assert row["predicted_limit_random"] == tree["predicted"]["ggn"]["random_at_eps"]
    assert row["quadratic_limit_magnitude"] == tree["quadratic"]["ggn"]["magnitude_at_eps"]
    for rule in ("magnitude", "random"):
        for reference in ("dense", "level"):
            matching = summary["fractions"][summary[rule][f"matching_{reference}"]]
            assert row[f"measured_limit_{rule}_{reference}"] == max(matching, default=0.0)
    assert row["measured_max_prune_fraction"] == row["measured_limit_magnitude_dense"]


def test_outside_domain_flags_a_negative_mass_over_five_percent():
    from landscape.eigen import Spectrum
    from landscape.spectra import outside_domain

    assert outside_domain(Spectrum(100, np.concatenate([np.ones(90), -np.ones(10)])))
    assert not outside_domain(Spectrum(100, np.concatenate([np.ones(96), -np.ones(4)])))


def test_calibrated_eps_is_level_0s_loss_rise_where_it_stops_matching(tmp_path, capsys):
    from imp.data import load_dataset
    from landscape.hooks import measure_run
    from runs.lth.cli import main

    config = load_config(None, TINY)
    run = run_imp(config, tmp_path, tmp_path, CPU)
    data = load_dataset(config.data, tmp_path)
    calibrated = load_config(None, TINY + ["landscape.prune_eps_mode='calibrated'", "landscape.prune_check=[]",
                                           "landscape.prune_check=[0.3, 0.999]", "landscape.matching_tolerance=0.0"])
    with store.RunLock(run):
        (hessian,) = [m for m in measure_run(calibrated, data, run, CPU) if m.measurement == "hessian"]
    tree = store.read_h5(run.stage_file(0, hessian.stage))
    assert tree["eps_mode"] == "calibrated" and "eps" not in hessian.settings
    level0 = store.read_h5(run.stage_file(0, "pruned_0_0.999"))
    dense_error = 1 - store.read_h5(run.stage_file(0, "level_0"))["final"]["test_accuracy"]
    assert 1 - level0["final"]["test_accuracy"] > dense_error  # 99.9% pruned does not match
    check = store.read_h5(run.stage_file(0, only(run, "prune_check", 0)))  # stored by the calibration
    first = next(f for f, ok in zip(check["fractions"], check["magnitude"]["matching_dense"]) if not ok)
    rise = check["direction"]["magnitude"]["loss_rise"][list(check["curvature_grid"]).index(first)]
    assert tree["eps"] == rise > 0
    # nothing stops matching with a tolerance of 1: one line, exit 2
    assert main(["hessian", run.run_id, "--out", str(tmp_path), "--levels", "1", "--set",
                 "landscape.prune_eps_mode=calibrated", "--set", "landscape.prune_check=[0.3]",
                 "--set", "landscape.matching_tolerance=1.0"]) == 2
    assert "level 0 matches the dense network at every checked fraction (0.3)" in capsys.readouterr().err


def test_hessian_settings_make_their_own_result(tmp_path):
    """`lth hessian --k 2`, then `--k 5 --set landscape.hessian_bn=train`: the second is a
    new result with 5 eigenvalues in train mode, not the stored 2 in eval mode."""
    from imp.data import load_dataset
    from landscape.hooks import measure_run

    base = ["model.name=resnet20", "model.width=4", "train.epochs='20it'", "train.eval_every='20it'"]
    config = load_config(None, base)
    run = run_imp(config, tmp_path, tmp_path, CPU)
    data = load_dataset(config.data, tmp_path)
    asked = base + ["landscape.hessian=true", "landscape.hessian_examples=64", "landscape.slq_runs=2",
                    "landscape.slq_steps=4", "landscape.trace_samples=0", "landscape.hessian_deflate=4",
                    "landscape.hessian_exact_limit=0"]
    with store.RunLock(run):
        two = measure_run(load_config(None, asked + ["landscape.hessian_k=2"]), data, run, CPU)
        five = measure_run(load_config(None, asked + ["landscape.hessian_k=5", "landscape.hessian_bn=train"]),
                           data, run, CPU)
        again = measure_run(load_config(None, asked + ["landscape.hessian_k=2"]), data, run, CPU)
    assert again[0].stage == two[0].stage  # the same question finds the stored answer
    assert len(measured(run, "hessian", 0)) == 2
    first, second = (store.read_h5(run.stage_file(0, m[0].stage)) for m in (two, five))
    assert first["eigenvalues"].shape == (2,) and first["bn"] == "eval"
    assert second["eigenvalues"].shape == (5,) and second["bn"] == "train"
    # BatchNorm in train mode changes the answer (DESIGN §4): a stale eval-mode result would not
    assert abs(second["eigenvalues"][0] - first["eigenvalues"][0]) > 1e-3 * abs(first["eigenvalues"][0])
    assert five[0].columns["hessian_top_eigenvalue"] == second["eigenvalues"][0]


def test_more_eigenvalues_than_coordinates_is_one_line(tmp_path, capsys):
    from runs.lth.cli import main

    config = load_config(None, ["model.widths=[2]", "train.epochs='10it'", "train.eval_every='10it'"])
    run = run_imp(config, tmp_path, tmp_path, CPU)  # 64*2 + 2 + 2*10 + 10 = 160 coordinates
    assert main(["hessian", run.run_id, "--out", str(tmp_path), "--k", "170"]) == 2
    err = capsys.readouterr().err
    assert "landscape.hessian_k = 170 is more than the 160 unpruned coordinates at level 0" in err
    assert [s for s in run.stages(0) if s.startswith("hessian")] == []
