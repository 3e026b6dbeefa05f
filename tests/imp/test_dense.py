import numpy as np
import pytest
import torch

from imp import store
from imp.config import load_config, run_id
from imp.dense import DENSE_STAGE, run_dense

TINY = ["model.widths=[16]", "train.epochs='40it'", "train.eval_every='20it'", "data.batch_size=64"]


def test_dense_run_stores_results_and_resumes(tmp_path):
    config = load_config(None, TINY)
    run = run_dense(config, tmp_path, tmp_path / "data", torch.device("cpu"), replicates=2)
    assert run.path == tmp_path / run_id(config)
    first = store.read_h5(run.stage_file(0, DENSE_STAGE))
    assert first["iterations"] == 40
    assert list(first["eval"]["step"]) == [0, 20, 40]
    assert first["steps"]["train_loss"].shape == (40,)
    assert 0.0 <= first["final"]["test_accuracy"] <= 1.0
    assert set(first["weights"]) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    assert first["provenance"]["config"] == '{"data":{"batch_size":64},"model":{"widths":[16]},' \
        '"train":{"epochs":"40it","eval_every":"20it"}}'
    second = store.read_h5(run.stage_file(1, DENSE_STAGE))
    assert not np.array_equal(first["weights"]["1.weight"], second["weights"]["1.weight"])

    # A rerun with more replicates trains only the new one.
    stamp = run.stage_file(0, DENSE_STAGE).stat().st_mtime_ns
    run_dense(config, tmp_path, tmp_path / "data", torch.device("cpu"), replicates=3)
    assert run.stage_file(0, DENSE_STAGE).stat().st_mtime_ns == stamp
    assert run.replicates() == [0, 1, 2]


def test_replicate_zero_is_reproducible(tmp_path):
    config = load_config(None, TINY)
    a = run_dense(config, tmp_path / "a", tmp_path, torch.device("cpu"))
    b = run_dense(config, tmp_path / "b", tmp_path, torch.device("cpu"))
    wa = store.read_h5(a.stage_file(0, DENSE_STAGE))["weights"]
    wb = store.read_h5(b.stage_file(0, DENSE_STAGE))["weights"]
    for key in wa:
        np.testing.assert_array_equal(wa[key], wb[key])


def test_label_noise_is_recorded(tmp_path):
    config = load_config(None, TINY + ["data.label_noise=0.1", "data.validation=100"])
    run = run_dense(config, tmp_path, tmp_path, torch.device("cpu"))
    result = store.read_h5(run.stage_file(0, DENSE_STAGE))
    noise = result["label_noise"]
    assert len(noise["index"]) == round(0.1 * (1437 - 100))
    assert sorted(noise["clean_labels"]) == sorted(noise["noisy_labels"])
    assert "validation_accuracy" in result["final"]


def test_a_locked_run_is_refused(tmp_path):
    config = load_config(None, TINY)
    with store.RunLock(store.RunDir(tmp_path, run_id(config))):
        with pytest.raises(store.RunLocked):
            run_dense(config, tmp_path, tmp_path, torch.device("cpu"))
