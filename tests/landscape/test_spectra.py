import numpy as np
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
    assert 0 <= tree["conservative_fraction"] <= 1 and 0 <= tree["predicted_fraction"] <= 1
    np.testing.assert_allclose(tree["slq"]["weights"].sum(axis=1), 1.0, rtol=1e-10)
    assert tree["eps"] == 0.01 and tree["bn"] == "eval" and tree["examples"] == 200

    dense_error = 1 - store.read_h5(run.stage_file(0, "level_0"))["final"]["test_accuracy"]
    checks = {f: store.read_h5(run.stage_file(0, f"pruned_1_{f:g}")) for f in (0.3, 0.95)}
    summary = store.read_h5(run.stage_file(0, only(run, "prune_check", 1)))
    np.testing.assert_array_equal(summary["fractions"], [0.3, 0.95])
    assert summary["dense_test_error"] == dense_error and summary["matching_tolerance"] == 0.02
    for i, (fraction, check) in enumerate(checks.items()):
        assert check["kept"] == level["kept"] - int(np.floor(fraction * level["kept"] + 0.5))
        assert check["start_step"] == 0 and check["fraction"] == fraction and check["from_level"] == 1
        assert summary["test_error"][i] == 1 - check["final"]["test_accuracy"]
        assert summary["matching"][i] == (1 - check["final"]["test_accuracy"] <= dense_error + 0.02)
    checks = {f: {"matching": summary["matching"][i]} for i, f in enumerate(summary["fractions"])}
    row = next(r for r in level_rows(run) if r["level"] == 1 and r["baseline"] is None)
    assert row["hessian_top_eigenvalue"] == eigenvalues[0]
    assert row["predicted_max_prune_fraction"] == tree["predicted_fraction"]
    assert row["measured_max_prune_fraction"] == max([f for f, c in checks.items() if c["matching"]], default=0.0)


def test_hessian_settings_make_their_own_result(tmp_path):
    """`lth hessian --k 2`, then `--k 5 --set landscape.hessian_bn=train`: the second is a
    new result with 5 eigenvalues in train mode, not the stored 2 in eval mode."""
    from imp.data import load_dataset
    from landscape.hooks import measure_run

    base = ["model.name=resnet20", "model.width=4", "train.epochs='20it'", "train.eval_every='20it'"]
    config = load_config(None, base)
    run = run_imp(config, tmp_path, tmp_path, CPU)
    data = load_dataset(config.data, tmp_path)
    asked = base + ["landscape.hessian=true", "landscape.hessian_examples=64", "landscape.slq_runs=1",
                    "landscape.slq_steps=4", "landscape.trace_samples=0"]
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
