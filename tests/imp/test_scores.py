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
from imp.scores import (ORIENTATION, SCORES, AreaUnderMargin, Forgetting, ScoreSpec, compute_scores, el2n, hardness,
                        load_or_compute, margin, ranks, read_scores, roc_auc, score_id, scores_path, spearman)
from imp.base.seeds import Seeds, derive_seed
from imp.train import train

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


# ---------------------------------------------------------------- margin and AUM (Pleiss et al. 2020)


def naive_margin(row: list[float], label: int) -> float:
    """``z_y - max_{j != y} z_j`` of one example's logits, in plain Python."""
    return row[label] - max(value for j, value in enumerate(row) if j != label)


def test_margin_is_the_true_logit_minus_the_largest_other_one(setup):
    config, data = setup
    tree = compute_scores(config, data, ScoreSpec("margin", Duration(), runs=2))
    assert tree["orientation"] == "high_is_easy" and tree["dataset"] == "digits"
    for run in range(2):
        model = score_run_model(config, data, run).eval()
        expected = []
        with torch.no_grad():
            for i in range(len(data.train)):  # one example at a time
                row = model(data.train.x[i:i + 1])[0].double().tolist()
                expected.append(naive_margin(row, int(data.train.y[i])))
        # float32 logits: a batch of 1 sums its matrix products in another order than a batch of 2048
        np.testing.assert_allclose(tree["per_run"][run], expected, rtol=0, atol=1e-5)
    assert (tree["mean"] < 0).any() and (tree["mean"] > 0).any()
    assert margin(score_run_model(config, data, 0), data.train, batch_size=100).shape == (len(data.train),)


def test_aum_tracker_averages_the_margins_of_each_presentation():
    tracker = AreaUnderMargin(3)
    labels = torch.tensor([0, 1, 2])
    tracker(0, torch.tensor([0, 1]), torch.tensor([[3.0, 1.0, 2.0], [0.0, 1.0, 4.0]]), labels[:2])
    tracker(1, torch.tensor([2, 0]), torch.tensor([[1.0, 1.0, 1.0], [0.0, 5.0, -1.0]]), labels[[2, 0]])
    # example 0: margins 3 - 2 = 1 and 0 - 5 = -5; example 1: 1 - 4 = -3; example 2: 1 - 1 = 0
    assert tracker.scores().tolist() == [-2.0, -3.0, 0.0]
    unseen = AreaUnderMargin(2)
    unseen(0, torch.tensor([1]), torch.tensor([[0.0, 1.0]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="never presented"):
        unseen.scores()


def test_aum_is_the_mean_margin_over_the_training_presentations_replayed(setup):
    """AUM after 1 epoch + 5 steps against the same training replayed with a hook that keeps
    every minibatch's logits, averaged per example in a plain loop."""
    config, data = setup
    spec = ScoreSpec("aum", Duration(epochs=1, iterations=5))
    tree = compute_scores(config, data, spec)
    steps = tree["iterations"]
    assert steps == data.iterations_per_epoch(config.data.batch_size) + 5
    train_config = dataclasses.replace(config.train, seed=derive_seed(config.train.seed, "scores", 0))
    seeds = Seeds.from_config(train_config)
    model = build_initial_model(config, data, seeds.init)
    seen: dict[int, list[float]] = {}

    def record(step, positions, logits, labels):
        for position, row, label in zip(positions.tolist(), logits.double().tolist(), labels.tolist()):
            seen.setdefault(position, []).append(naive_margin(row, label))

    train(model, data, config.train, config.data.batch_size, seeds, end_step=steps, on_batch=record)
    assert sorted(seen) == list(range(len(data.train))) and max(map(len, seen.values())) == 2
    expected = [sum(seen[i]) / len(seen[i]) for i in range(len(data.train))]
    np.testing.assert_allclose(tree["mean"], expected, rtol=1e-9, atol=1e-12)
    assert tree["orientation"] == "high_is_easy"


def test_aum_needs_at_least_one_epoch(setup):
    config, data = setup
    with pytest.raises(UserError, match="t = 0 has none"):
        ScoreSpec("aum", Duration())
    with pytest.raises(UserError, match="at least one epoch"):
        compute_scores(config, data, ScoreSpec("aum", Duration(iterations=5)))


def test_hardness_orients_the_mean_so_that_higher_is_harder():
    mean = np.array([0.5, -1.0, 2.0])
    assert hardness({"mean": mean}).tolist() == [0.5, -1.0, 2.0]  # files before orientations: high = hard
    assert hardness({"mean": mean, "orientation": "high_is_hard"}).tolist() == [0.5, -1.0, 2.0]
    assert hardness({"mean": mean, "orientation": "high_is_easy"}).tolist() == [-0.5, 1.0, -2.0]
    with pytest.raises(UserError, match="unknown score orientation 'sideways'"):
        hardness({"mean": mean, "orientation": "sideways"})
    assert {score: ORIENTATION[score] for score in SCORES} == {
        "el2n": "high_is_hard", "grand": "high_is_hard", "forgetting": "high_is_hard",
        "margin": "high_is_easy", "aum": "high_is_easy"}


def test_hardest_on_margins_keeps_the_lowest_margins(setup, tmp_path):
    """A [subset] run and a diet choosing from a margin file: `hardest` / `hard` take the
    lowest margins, `easiest` / `easy` the highest; on EL2N the highest and lowest values."""
    from imp.base.config import load_config as load
    from imp.diet import choose_kept, choose_subset

    config, data = setup
    paths = {score: load_or_compute(config, data, ScoreSpec(score, Duration(iterations=10)), tmp_path)[1]
             for score in ("margin", "el2n")}
    count = len(data.train)
    kept = round(0.2 * count)
    for score, path in paths.items():
        mean = read_scores(path)["mean"]
        low, high = np.sort(np.argsort(mean, kind="stable")[:kept]), np.sort(np.argsort(-mean, kind="stable")[:kept])
        hard, easy = (low, high) if score == "margin" else (high, low)
        for rule, expected in (("hardest", hard), ("easiest", easy)):
            subset = load(None, [*TINY, "subset.keep=0.2", f"subset.rule={rule}", f"subset.score={score}",
                                 f"subset.scores_file='{path}'"])
            np.testing.assert_array_equal(choose_kept(subset, data, tmp_path)["positions"], expected)
        diet = load(None, [*TINY, "diet.pretrain='5it'", "diet.subset=hard", f"diet.size={kept}",
                           f"diet.score={score}", f"diet.scores_file='{path}'"])
        np.testing.assert_array_equal(choose_subset(diet, data, tmp_path)["positions"], hard)
