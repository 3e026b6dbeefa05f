import numpy as np
import torch

from imp import store
from imp.config import load_config
from imp.results import level_rows
from imp.trunk import run_imp
from landscape.hooks import level_hooks

CPU = torch.device("cpu")
TINY = ["model.widths=[32, 16]", "train.epochs='80it'", "train.eval_every='40it'", "data.batch_size=64",
        "train.momentum=0.9", "prune.levels=1", "landscape.hessian=true", "landscape.hessian_levels=[1]",
        "landscape.hessian_examples=200", "landscape.slq_runs=3", "landscape.slq_steps=10",
        "landscape.trace_samples=5", "landscape.prune_check=[0.3, 0.95]", "landscape.matching_tolerance=0.02"]


def test_hessian_and_prune_check_after_a_level(tmp_path):
    config = load_config(None, TINY)
    run = run_imp(config, tmp_path, tmp_path, CPU, hooks=level_hooks(config, CPU))
    assert {"hessian_1", "prune_check_1_0.3", "prune_check_1_0.95"} <= set(run.stages(0))
    assert "hessian_0" not in run.stages(0)
    tree = store.read_h5(run.stage_file(0, "hessian_1"))
    eigenvalues = tree["eigenvalues"]
    assert eigenvalues.shape == (5,) and np.all(np.diff(eigenvalues) <= 0) and eigenvalues[0] > 0
    level = store.read_h5(run.stage_file(0, "level_1"))
    assert tree["unpruned_weights"] == level["kept"]
    assert tree["active_coordinates"] == level["kept"] + 32 + 16 + 10  # plus the biases
    assert 0 <= tree["conservative_fraction"] <= 1 and 0 <= tree["predicted_fraction"] <= 1
    np.testing.assert_allclose(tree["slq"]["weights"].sum(axis=1), 1.0, rtol=1e-10)
    assert tree["eps"] == 0.01 and tree["bn"] == "eval" and tree["examples"] == 200

    dense_error = 1 - store.read_h5(run.stage_file(0, "level_0"))["final"]["test_accuracy"]
    checks = {f: store.read_h5(run.stage_file(0, f"prune_check_1_{f:g}")) for f in (0.3, 0.95)}
    for fraction, check in checks.items():
        assert check["kept"] == level["kept"] - int(np.floor(fraction * level["kept"] + 0.5))
        assert check["start_step"] == 0 and check["dense_test_error"] == dense_error
        assert check["matching"] == (1 - check["final"]["test_accuracy"] <= dense_error + 0.02)
    row = next(r for r in level_rows(run) if r["level"] == 1 and r["baseline"] is None)
    assert row["hessian_top_eigenvalue"] == eigenvalues[0]
    assert row["predicted_max_prune_fraction"] == tree["predicted_fraction"]
    assert row["measured_max_prune_fraction"] == max([f for f, c in checks.items() if c["matching"]], default=0.0)
