"""The empirical NTK and its velocity (Paul et al. 2021, Fig. 3): the kernel against an
independent Jacobian from torch.func.jacrev, the kernel distance's invariants, and the
measurement on a run."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from imp.base import store
from landscape.ntk import distance, kernel
from runs.lth.cli import main
from tests.landscape.conftest import only


def reference(model: nn.Module, x: torch.Tensor, mask: dict) -> torch.Tensor:
    """J diag(m) J^T from the full Jacobian, one parameter tensor at a time (float64)."""
    model = model.double().eval()
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    jacobian = jacrev(lambda p: functional_call(model, {**p, **buffers}, (x.double(),)).reshape(-1))(params)
    total = 0
    for name, j in jacobian.items():
        rows = j.reshape(j.shape[0], -1)
        keep = mask[name].reshape(-1).double() if name in mask else torch.ones(rows.shape[1], dtype=torch.float64)
        total = total + (rows * keep) @ rows.T
    return total


def test_the_kernel_is_j_m_jt_of_an_mlp_with_a_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 3))
    mask = {"1.weight": torch.rand(7, 12) > 0.5, "3.weight": torch.rand(3, 7) > 0.3}
    x = torch.randn(5, 1, 3, 4)
    got = kernel(model, x, mask)
    assert got.shape == (15, 15) and got.dtype == torch.float64
    torch.testing.assert_close(got, reference(model, x, mask), rtol=0, atol=1e-12)
    torch.testing.assert_close(got, got.T, rtol=0, atol=1e-12)
    assert torch.linalg.eigvalsh(got).min() > -1e-10  # a Gram matrix


def test_the_kernel_of_a_conv_net_with_batchnorm_uses_its_running_statistics():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 4))
    model.train()
    model(torch.randn(16, 2, 4, 4))  # running statistics that differ from any batch's
    x = torch.randn(3, 2, 4, 4)
    mask = {"0.weight": torch.rand(3, 2, 3, 3) > 0.4}
    got = kernel(model, x, mask)
    assert model.training  # the model itself is left as it was
    torch.testing.assert_close(got, reference(model, x, mask), rtol=0, atol=1e-12)


def test_kernel_distance_is_zero_for_equal_kernels_and_ignores_scale():
    a = torch.randn(6, 6, dtype=torch.float64)
    a = a @ a.T
    b = torch.randn(6, 6, dtype=torch.float64)
    b = b @ b.T
    assert distance(a, a) == pytest.approx(0, abs=1e-15)
    assert distance(a, 3.5 * a) == pytest.approx(0, abs=1e-15)
    assert distance(a, b) == pytest.approx(distance(b, a), abs=1e-15) and distance(a, b) > 0
    assert distance(2 * a, 0.1 * b) == pytest.approx(distance(a, b), abs=1e-14)
    first, second = torch.diag(torch.tensor([1.0, 0.0])), torch.diag(torch.tensor([0.0, 1.0]))
    assert distance(first, second) == pytest.approx(1.0)  # orthogonal kernels


TINY = ["--set", "model.widths=[16]", "--set", "train.epochs='60it'", "--set", "train.eval_every='30it'",
        "--set", "prune.levels=1", "--quiet"]
NTK = ["--set", "landscape.ntk_examples=8", "--set", "landscape.ntk_points=4", "--set",
       "landscape.ntk_score_step='1ep'"]


def test_the_measurement_follows_the_levels_own_training(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["run", "--out", str(out), *TINY]) == 0
    (run_id,) = [p.name for p in out.iterdir()]
    assert main(["ntk", run_id, "--out", str(out), *NTK, "--levels", "1"]) == 0
    assert "ntk_velocity_high" in capsys.readouterr().out
    run = store.RunDir(out, run_id)
    tree = store.read_h5(run.stage_file(0, only(run, "ntk", 1)))
    assert tree["steps"].tolist() == [0, 20, 40, 60]  # evenly spaced from the start (rewind 0) to the end
    scores = store.read_h5(next((out / "scores").glob("el2n_*.h5")))["mean"]
    for name, group in tree["groups"].items():
        assert len(group["index"]) == 8 and len(group["distance"]) == 3
        np.testing.assert_allclose(group["velocity"], group["distance"] / 20, rtol=1e-15)
        assert np.all(group["distance"] >= 0) and np.all(group["norm"] > 0)
    order = np.argsort(scores, kind="stable")
    assert tree["groups"]["low"]["index"].tolist() == sorted(order[:8].tolist())
    assert set(tree["groups"]["high"]["index"].tolist()) == set(np.argsort(-scores, kind="stable")[:8].tolist())
    # the last kernel is the stored level's: the level was trained again on its own trajectory
    from imp.base.config import load_config
    from imp.data import load_dataset
    from imp.models import build_initial_model

    level = store.read_h5(run.stage_file(0, "level_1"))
    config = load_config(None, [TINY[i] for i in range(1, len(TINY) - 1, 2)])
    data = load_dataset(config.data, out)
    model = build_initial_model(config, data, 0)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in level["weights"].items()})
    mask = {k: torch.as_tensor(v) for k, v in level["mask"].items()}
    last = kernel(model, data.train.x[tree["groups"]["low"]["index"]], mask)
    assert float(torch.linalg.norm(last)) == pytest.approx(tree["groups"]["low"]["norm"][-1], rel=1e-9)


@pytest.mark.parametrize("setting, message", [
    ("landscape.ntk_examples=0", "landscape.ntk_examples = 0 must be from 1 to 1000"),
    ("landscape.ntk_points=1", "landscape.ntk_points = 1 must be from 2 to 101"),
    ("landscape.ntk_score=loss", "landscape.ntk_score = 'loss' is not one of"),
    ("landscape.ntk_examples=900", "the low and high groups need 1800 training examples"),
])
def test_bad_ntk_settings_are_one_line(tmp_path, capsys, setting, message):
    out = tmp_path / "results"
    assert main(["run", "--out", str(out), *TINY]) == 0
    (run_id,) = [p.name for p in out.iterdir()]
    before = sorted(p.name for p in (out / run_id / "replicate_0").iterdir())
    assert main(["ntk", run_id, "--out", str(out), *NTK, "--set", setting]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in (out / run_id / "replicate_0").iterdir()) == before

