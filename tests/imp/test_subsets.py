import numpy as np
import pytest

from imp.base.errors import UserError
from imp.subsets import select

SCORES = np.array([0.5, 0.1, 0.9, 0.1, 0.7, 0.3, 0.9, 0.0])
LABELS = np.array([0, 0, 0, 0, 1, 1, 1, 1])


def test_easy_and_hard_windows_of_the_stably_sorted_scores():
    assert select(SCORES, LABELS, "easy", 3).tolist() == [1, 3, 7]  # 0.0, 0.1, 0.1
    assert select(SCORES, LABELS, "hard", 3).tolist() == [2, 4, 6]  # 0.9 (2), 0.9 (6), 0.7
    assert select(SCORES, LABELS, "easy", 2, offset=1).tolist() == [1, 3]  # ties keep position order
    assert select(SCORES, LABELS, "hard", 2, offset=1).tolist() == [4, 6]
    assert select(SCORES, LABELS, "all").tolist() == list(range(8))


def test_random_subsets_are_seeded():
    a = select(None, LABELS, "random", 4, seed=1)
    assert len(a) == 4 and len(set(a)) == 4
    assert np.array_equal(a, select(None, LABELS, "random", 4, seed=1))
    assert any(not np.array_equal(a, select(None, LABELS, "random", 4, seed=s)) for s in range(2, 6))


def test_class_balanced_splits_size_by_class_frequency():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    scores = np.arange(10, dtype=float)[::-1]
    chosen = select(scores, labels, "easy", 5, class_balanced=True)
    # shares 3, 1.5, 0.5 -> 3, 2, 0 by largest remainders (ties to the earlier class)
    assert np.bincount(labels[chosen], minlength=3).tolist() == [3, 2, 0]
    assert chosen.tolist() == [3, 4, 5, 7, 8]  # the lowest scores within each class


@pytest.mark.parametrize("size, offset, balanced, message", [
    (9, 0, False, "diet.size (9) + diet.offset (0) is larger than the training set (8 examples)"),
    (4, 5, False, "is larger than the training set"),
    (3, 5, True, "class 0 has 4 examples, fewer than its share of diet.size + diet.offset (5)"),
])
def test_impossible_subsets_are_refused(size, offset, balanced, message):
    labels = LABELS
    with pytest.raises(UserError) as error:
        select(SCORES, labels, "easy", size, offset=offset, class_balanced=balanced)
    assert message in str(error.value)


# ------------------------------------------------------------------ [subset] rules


def _subset(**values):
    from imp.base.config import SubsetConfig

    return SubsetConfig(**values)


def _ranked_from_top(scores):
    """An independent ranking: positions by decreasing score, ties by position (plain Python)."""
    return [position for _, position in sorted((-score, position) for position, score in enumerate(scores))]


def test_subset_rules_keep_exactly_the_ranked_examples():
    from imp.subsets import keep

    rng = np.random.default_rng(3)
    scores = rng.integers(0, 20, 101).astype(float)  # many ties
    labels = rng.integers(0, 3, 101)
    ranked = _ranked_from_top(scores)
    kept = round(0.3 * 101)  # 30.3 -> 30
    assert keep(_subset(keep=0.3), scores, labels).tolist() == sorted(ranked[:kept])
    easiest = [p for _, p in sorted((s, p) for p, s in enumerate(scores))][:kept]
    assert keep(_subset(keep=0.3, rule="easiest"), scores, labels).tolist() == sorted(easiest)
    skipped = round(0.25 * 101)  # 25.25 -> 25
    window = keep(_subset(keep=0.3, rule="window", offset=0.25), scores, labels)
    assert window.tolist() == sorted(ranked[skipped:skipped + kept])
    # the window at the bottom of the ranking is the easiest examples, with the paper's offset 0
    assert keep(_subset(keep=0.3, rule="window", offset=0.7), scores, labels).tolist() == \
        sorted(ranked[101 - kept:])
    chosen = keep(_subset(keep=0.3, rule="random", seed=4), None, labels)
    assert len(chosen) == kept == len(set(chosen.tolist())) and chosen.tolist() == sorted(chosen.tolist())
    assert np.array_equal(chosen, keep(_subset(keep=0.3, rule="random", seed=4), None, labels))


def test_subset_rounding_keeps_at_least_one_and_half_up():
    subset = _subset(keep=0.5)
    assert [subset.kept(n) for n in (1, 3, 5, 1437)] == [1, 2, 3, 719]
    assert _subset(keep=0.01).kept(10) == 1


def test_class_balanced_subset_keeps_each_class_its_share_of_its_hardest():
    from imp.subsets import keep

    labels = np.array([0] * 6 + [1] * 4)
    scores = np.array([5, 1, 4, 2, 3, 0, 9, 7, 8, 6], dtype=float)
    chosen = keep(_subset(keep=0.5, class_balanced=True), scores, labels)
    # 5 kept: 3 of class 0 (scores 5, 4, 3 at 0, 2, 4), 2 of class 1 (9, 8 at 6, 8)
    assert chosen.tolist() == [0, 2, 4, 6, 8]


# ------------------------------------------------------------------ coverage-centric selection


def test_ccs_gives_each_stratum_its_share_from_the_smallest_up():
    """Zheng et al. 2023, Algorithm 1, counted by hand: strata of 4, 20 and 50 examples and a
    budget of 30: the 4 first (min(4, 30 // 3)), then min(20, 26 // 2) = 13, then 13."""
    from imp.subsets import ccs

    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.uniform(0.0, 0.3, 4), rng.uniform(1.0, 1.9, 20), rng.uniform(2.1, 3.0, 50)])
    scores[[0, 4, 24]] = [0.0, 1.5, 3.0]  # the range is exactly [0, 3]: bins [0, 1), [1, 2), [2, 3]
    chosen = ccs(scores, 30, hard_cut=0.0, strata=3, seed=5)
    assert len(chosen) == 30 == len(set(chosen.tolist())) and chosen.tolist() == sorted(chosen.tolist())
    assert [int(np.sum((scores[chosen] >= lo) & (scores[chosen] < hi))) for lo, hi in ((0, 1), (1, 2), (2, 4))] == \
        [4, 13, 13]
    assert np.array_equal(chosen, ccs(scores, 30, 0.0, 3, seed=5))  # seeded
    assert not np.array_equal(chosen, ccs(scores, 30, 0.0, 3, seed=6))


def test_ccs_drops_the_hardest_first_and_refuses_a_budget_it_cannot_meet():
    from imp.base.errors import UserError
    from imp.subsets import ccs

    scores = np.arange(100, dtype=float)
    chosen = ccs(scores, 30, hard_cut=0.1, strata=3, seed=0)  # the 10 highest (90-99) go first
    assert chosen.max() < 90 and len(chosen) == 30
    # 0-89 in three bins of width 29.67: 30 examples each, 10 from each
    assert [int(np.sum((chosen >= lo) & (chosen < hi))) for lo, hi in ((0, 30), (30, 60), (60, 90))] == [10, 10, 10]
    assert ccs(scores, 90, 0.1, 3, seed=0).tolist() == list(range(90))  # everything left
    with pytest.raises(UserError, match="only 90 remain after dropping the 10 hardest"):
        ccs(scores, 91, 0.1, 3, seed=0)
    assert len(ccs(np.ones(10), 4, 0.0, 50, seed=0)) == 4  # equal scores: one bin
