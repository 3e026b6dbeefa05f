import dataclasses

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from imp.base.config import load_config
from imp.data import load_dataset
from imp.base.duration import Duration
from imp.base.errors import UserError
from imp.models import build_initial_model
from imp.pergrad import grad_norms
from imp.scores import (Forgetting, ScoreSpec, compute_scores, el2n, load_or_compute, ranks,
                        read_scores, roc_auc, score_id, scores_path, spearman)
from imp.base.seeds import Seeds, derive_seed

TINY = ["model.widths=[32]", "data.batch_size=64", "train.momentum=0.9", "train.lr=0.05"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    config = load_config(None, TINY)
    return config, load_dataset(config.data, tmp_path_factory.mktemp("data"))


def test_el2n_is_the_distance_of_the_softmax_to_the_one_hot_label(setup):
    config, data = setup
    model = build_initial_model(config, data, 3)
    split = data.train.subset(torch.arange(50))
    with torch.no_grad():
        probabilities = torch.softmax(model(split.x).double(), 1)
    expected = [float(torch.linalg.vector_norm(p - torch.eye(10, dtype=torch.float64)[y]))
                for p, y in zip(probabilities, split.y)]
    np.testing.assert_allclose(el2n(model, split).numpy(), expected, rtol=1e-12)


def test_forgetting_counts_correct_to_incorrect_transitions():
    tracker = Forgetting(4)
    labels = torch.tensor([0, 1, 0, 1])
    right = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    wrong = right.flip(1)
    for logits_of in ([right[0], wrong[1], wrong[2], right[3]],   # presentations 1
                      [wrong[0], right[1], wrong[2], wrong[3]],   # 0 and 3 forget
                      [right[0], wrong[1], wrong[2], right[3]],   # 1 forgets
                      [wrong[0], right[1], wrong[2], right[3]]):  # 0 forgets again
        tracker(0, torch.arange(4), torch.stack(logits_of), labels)
    assert tracker.scores().tolist() == [2.0, 1.0, float("inf"), 1.0]  # 2 was never learned
    part = Forgetting(3)
    part(0, torch.tensor([2]), right[:1], torch.tensor([0]))
    assert part.scores().tolist() == [float("inf"), float("inf"), 0.0]  # never presented = never learned


def score_run_model(config, data, run):
    """The model of score run ``run`` at initialisation, rebuilt independently."""
    train_config = dataclasses.replace(config.train, seed=derive_seed(config.train.seed, "scores", run))
    return build_initial_model(config, data, Seeds.from_config(train_config).init)


def test_grand_at_step_0_uses_the_initial_weights(setup):
    config, data = setup
    tree = compute_scores(config, data, ScoreSpec("grand", Duration(), runs=2))
    for run in range(2):
        model = score_run_model(config, data, run)
        np.testing.assert_array_equal(tree["per_run"][run], grad_norms(model, data.train.x, data.train.y).numpy())
    np.testing.assert_allclose(tree["mean"], tree["per_run"].mean(0))
    assert not np.allclose(tree["per_run"][0], tree["per_run"][1])  # independent inits
    later = compute_scores(config, data, ScoreSpec("grand", Duration(iterations=20)))
    assert not np.allclose(later["per_run"][0], tree["per_run"][0])
    assert tree["iterations"] == 0 and later["iterations"] == 20


def test_scores_of_one_run_and_their_file(setup, tmp_path):
    config, data = setup
    spec = ScoreSpec("forgetting", Duration(epochs=3))
    tree, path = load_or_compute(config, data, spec, tmp_path)
    assert path == scores_path(tmp_path, config, spec) and path.name == f"forgetting_{score_id(config, spec)}.h5"
    assert tree["per_run"].shape == (1, len(data.train)) and tree["runs"] == 1
    assert np.all(tree["mean"] >= 0) and np.isfinite(tree["mean"]).mean() > 0.9
    stamp = path.stat().st_mtime_ns
    again, _ = load_or_compute(config, data, spec, tmp_path)  # read back, not recomputed
    assert path.stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again["mean"], tree["mean"])
    assert score_id(config, spec) != score_id(config, ScoreSpec("forgetting", Duration(epochs=3), runs=2))
    other = load_dataset(load_config(None, TINY + ["data.validation=100"]).data, tmp_path)
    with pytest.raises(UserError, match="scores a different training set"):
        read_scores(path, other)
    with pytest.raises(UserError, match="not found"):
        read_scores(tmp_path / "missing.h5")


def test_el2n_early_in_training_ranks_permuted_labels_at_the_top(tmp_path):
    """The data-diet observation (Paul et al. 2021, Sec. 5) at toy scale: after a few
    epochs the network fits the clean majority first, so examples with permuted labels
    keep a large error. Here 10% noise on digits, EL2N after 5 epochs."""
    config = load_config(None, TINY + ["data.label_noise=0.1"])
    data = load_dataset(config.data, tmp_path)
    tree = compute_scores(config, data, ScoreSpec("el2n", Duration(epochs=5)))
    assert tree["noisy"].sum() == round(0.1 * len(data.train))
    assert roc_auc(tree["mean"], tree["noisy"]) > 0.9


def test_ranks_spearman_and_auc_match_scipy_and_sklearn():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 20, 500).astype(float)  # many ties
    b = a + rng.normal(0, 5, 500)
    a[:5] = np.inf
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert ranks(np.array([3.0, 1.0, 3.0, np.inf])).tolist() == [2.5, 1.0, 2.5, 4.0]
    positive = rng.random(500) < 0.2
    finite = np.where(np.isinf(a), 1e9, a)
    assert roc_auc(a, positive) == pytest.approx(roc_auc_score(positive, finite), abs=1e-12)


def test_a_subset_runs_scores_train_the_runs_own_schedule(tmp_path):
    """Digits at batch 100: 15 iterations per epoch on all 1,437 examples, 8 on the 719 a
    half keeps. With subset.budget = "epochs", "80it" and "10ep" are one run (80 steps);
    its scores train with an 80-step cosine schedule, the one a run of "80it" on all the
    data has, not a 150-step one."""
    base = ["data.batch_size=100", "model.widths=[8]", "train.schedule=cosine", "train.eval_every='40it'"]
    subset = ["subset.keep=0.5", "subset.budget=epochs"]
    data = load_dataset(load_config(None, base).data, tmp_path)
    spec = ScoreSpec("el2n", Duration(iterations=30))
    paths = [load_or_compute(load_config(None, base + extra), data, spec, tmp_path)[1]
             for extra in (subset + ["train.epochs='80it'"], subset + ["train.epochs='10ep'"],
                           ["train.epochs='80it'"])]
    assert paths[0] == paths[1] == paths[2]
    assert load_or_compute(load_config(None, base + ["train.epochs='10ep'"]), data, spec, tmp_path)[1] != paths[0]
