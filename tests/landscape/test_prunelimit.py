import numpy as np
import pytest
import torch

from landscape.prunelimit import (conservative_fraction, predicted_fraction, projection_length,
                                  slq_average, sorted_squares)


def test_projection_length_counts_the_smallest_weights():
    weights = {"a": torch.tensor([3.0, -1.0, 0.5]), "b": torch.tensor([[2.0, -0.1]])}
    mask = {"a": torch.tensor([True, True, False]), "b": torch.tensor([[True, True]])}
    squares = sorted_squares(weights, mask)  # 0.01, 1, 4, 9 (0.5 is pruned)
    np.testing.assert_allclose(squares, [0.01, 1.0, 4.0, 9.0])
    np.testing.assert_allclose(projection_length(squares, [0.0, 0.25, 0.5, 1.0]),
                               np.sqrt([0.0, 0.01, 1.01, 14.01]))


def test_slq_average_is_a_quadrature():
    nodes = np.array([[1.0, 3.0], [2.0, 5.0]])
    weights = np.array([[0.5, 0.5], [0.25, 0.75]])
    average = slq_average(nodes, weights)
    assert average(np.ones_like) == 1.0
    assert average(lambda x: x) == pytest.approx((2.0 + 4.25) / 2)


def test_flat_spectrum_allows_pruning_everything():
    squares = np.sort(np.random.default_rng(0).random(100))
    average = slq_average(np.zeros((1, 3)), np.full((1, 3), 1 / 3))
    assert predicted_fraction(squares, average, eps=0.01) == 1.0
    assert conservative_fraction(squares, 0.0, eps=0.01) == 1.0


def test_the_prediction_solves_the_self_consistency_equation():
    rng = np.random.default_rng(1)
    squares = np.sort(rng.random(1000) ** 2)
    lambdas = np.concatenate([[50.0, 20.0], rng.random(98) * 2, [-0.5]])
    average = slq_average(lambdas[None, :], np.full((1, len(lambdas)), 1 / len(lambdas)))
    eps = 0.05
    p = predicted_fraction(squares, average, eps)

    def right(q):
        scale = projection_length(squares, q) ** 2 / (2 * eps)
        return np.mean(1 / (1 + np.maximum(lambdas, 0) * scale))

    grid = np.linspace(0, 1, 100001)
    crossing = grid[np.argmax([right(q) - q <= 0 for q in grid])]
    assert 0 < p < 1 and abs(p - crossing) < 2e-3
    assert abs(right(p) - p) < 2e-3  # l(p) is a step function of p, so equality holds to one weight
    bound = conservative_fraction(squares, 50.0, eps)
    assert projection_length(squares, bound) ** 2 <= 2 * eps / 50.0 + 1e-12
    assert projection_length(squares, bound + 1 / 1000) ** 2 > 2 * eps / 50.0
    assert bound < p  # one eigenvalue alone is the stricter limit here
