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
