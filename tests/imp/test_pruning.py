import numpy as np
import pytest
import torch
from torch import nn

from imp.base.errors import UserError
from imp.models import build_model
from imp.pruning import (MaskEnforcer, apply_mask, density, full_mask, groups, kept, magnitude_prune,
                         oneshot_prune, prunable_tensors, random_mask, round_half_up)


def random_weights(shapes, seed=0, integers=False):
    g = torch.Generator().manual_seed(seed)
    if integers:  # many exact ties
        return {n: torch.randint(-3, 4, s, generator=g).float() for n, s in shapes.items()}
    return {n: torch.randn(*s, generator=g) for n, s in shapes.items()}


SHAPES = {"a.weight": (30, 20), "b.weight": (10, 30), "c.weight": (4, 10)}


def reference_prune(weights, mask, names, count):
    """Independent reference: numpy lexsort by (|w|, position) over kept entries."""
    flat_w = np.concatenate([weights[n].numpy().ravel() for n in names])
    flat_m = np.concatenate([mask[n].numpy().ravel() for n in names])
    candidates = np.flatnonzero(flat_m)
    order = np.lexsort((candidates, np.abs(flat_w[candidates])))
    flat_m = flat_m.copy()
    flat_m[candidates[order[:count]]] = False
    out, start = {}, 0
    for n in names:
        size = weights[n].numel()
        out[n] = flat_m[start:start + size].reshape(weights[n].shape)
        start += size
    return out


def test_round_half_up():
    assert [round_half_up(x) for x in (0.5, 1.5, 2.5, 2.49, 0.0)] == [1, 2, 3, 2, 0]


def test_global_pruning_removes_exactly_round_fraction_of_remaining():
    weights = random_weights(SHAPES)
    mask = full_mask(weights, SHAPES)
    remaining = kept(mask)
    for level in range(1, 11):
        weights = random_weights(SHAPES, seed=level)  # new weights every level, as after training
        new = magnitude_prune(weights, mask, 0.2)
        assert kept(new) == remaining - round_half_up(0.2 * remaining)
        assert all(not (new[n] & ~mask[n]).any() for n in mask)  # nested: nothing revived
        mask, remaining = new, kept(new)
        # Each rounding of k moves kept by <= 0.5, and later levels shrink that error by 0.8:
        # |kept - 0.8^L N| <= 0.5 (1 + 0.8 + 0.8^2 + ...) = 2.5 weights.
        assert abs(density(mask) - 0.8 ** level) <= 2.5 / 940


def test_global_pruning_matches_the_reference_with_ties():
    weights = random_weights(SHAPES, integers=True)
    mask = full_mask(weights, SHAPES)
    for level in range(4):
        new = magnitude_prune(weights, mask, 0.3)
        count = kept(mask) - kept(new)
        expected = reference_prune(weights, mask, list(SHAPES), count)
        for n in SHAPES:
            np.testing.assert_array_equal(new[n].numpy(), expected[n])
        mask = new


def test_ties_are_broken_by_position():
    weights = {"x.weight": torch.ones(2, 5), "y.weight": torch.ones(3)}
    mask = full_mask(weights, weights)
    new = magnitude_prune(weights, mask, 0.5)  # round(0.5 * 13) = 7: the first 7 positions
    assert new["x.weight"].reshape(-1).tolist() == [False] * 7 + [True] * 3
    assert new["y.weight"].tolist() == [True] * 3
    assert all(torch.equal(new[n], magnitude_prune(weights, mask, 0.5)[n]) for n in new)


def test_smallest_magnitudes_go_first_regardless_of_sign():
    weights = {"w": torch.tensor([0.5, -0.1, 3.0, -2.0, 0.2])}
    new = magnitude_prune(weights, full_mask(weights, weights), 0.4)
    assert new["w"].tolist() == [True, False, True, True, False]


def test_pruned_weights_are_not_candidates_even_when_large():
    weights = {"w": torch.tensor([100.0, 1.0, 2.0, 3.0, 4.0])}
    mask = {"w": torch.tensor([False, True, True, True, True])}
    new = magnitude_prune(weights, mask, 0.5)  # round(0.5 * 4) = 2 more
    assert new["w"].tolist() == [False, False, False, True, True]


def test_layerwise_pruning_prunes_each_tensor_by_its_own_count():
    weights = random_weights(SHAPES)
    mask = full_mask(weights, SHAPES)
    for _ in range(3):
        new = magnitude_prune(weights, mask, 0.2, strategy="layerwise")
        for n in SHAPES:
            assert int(new[n].sum()) == int(mask[n].sum()) - round_half_up(0.2 * int(mask[n].sum()))
            expected = reference_prune(weights, mask, [n], int(mask[n].sum()) - int(new[n].sum()))
            np.testing.assert_array_equal(new[n].numpy(), expected[n])
        mask = new


def test_rate_overrides_prune_their_tensor_apart():
    weights = random_weights(SHAPES)
    mask = full_mask(weights, SHAPES)
    new = magnitude_prune(weights, mask, 0.2, layer_fractions={"c.*": 0.1})
    assert int(new["c.weight"].sum()) == 40 - 4
    shared = 600 + 300
    assert int(new["a.weight"].sum()) + int(new["b.weight"].sum()) == shared - round_half_up(0.2 * shared)
    assert groups(SHAPES, "global", 0.2, {"c.*": 0.1}) == [(["c.weight"], 0.1), (["a.weight", "b.weight"], 0.2)]


def test_exclusions_are_not_pruned_and_not_counted():
    model = build_model("mlp", (1, 8, 8), 10, widths=(16,))
    assert prunable_tensors(model) == ["fc1.weight", "fc.weight"]
    names = prunable_tensors(model, exclude=["fc.*"])
    assert names == ["fc1.weight"]
    weights = dict(model.named_parameters())
    mask = magnitude_prune(weights, full_mask(weights, names), 0.2)
    assert list(mask) == ["fc1.weight"] and kept(mask) == 1024 - round_half_up(0.2 * 1024)


@pytest.mark.parametrize("exclude, fractions, message", [
    (["fc2.weight"], {},
     "prune.exclude pattern 'fc2.weight' matches no prunable tensor; this model's are: fc1.weight, fc.weight"),
    (["*"], {}, "prune.exclude leaves no tensor to prune"),
    (["fc.weight"], {"fc.weight": 0.1}, "prune.layer_fractions pattern 'fc.weight' matches no prunable tensor"),
])
def test_patterns_that_match_nothing_are_errors(exclude, fractions, message):
    model = build_model("mlp", (1, 8, 8), 10, widths=(16,))
    with pytest.raises(UserError) as error:
        prunable_tensors(model, exclude, fractions)
    assert message in str(error.value)


def test_oneshot_matches_the_target_counts_by_magnitude():
    weights = random_weights(SHAPES)
    start = full_mask(weights, SHAPES)
    target = start
    for level in range(3):
        target = magnitude_prune(random_weights(SHAPES, seed=10 + level), target, 0.2)
    for strategy in ("global", "layerwise"):
        mask = oneshot_prune(weights, start, target, strategy)
        assert kept(mask) == kept(target)
        if strategy == "layerwise":
            assert all(int(mask[n].sum()) == int(target[n].sum()) for n in SHAPES)
    # Global one-shot keeps the largest |w| overall.
    mask = oneshot_prune(weights, start, target, "global")
    kept_values = torch.cat([weights[n][mask[n]].abs() for n in SHAPES])
    pruned_values = torch.cat([weights[n][~mask[n]].abs() for n in SHAPES])
    assert kept_values.min() >= pruned_values.max()


def test_random_masks_keep_the_density_per_layer_or_globally():
    weights = random_weights(SHAPES)
    target = magnitude_prune(weights, full_mask(weights, SHAPES), 0.6, strategy="global")
    per_layer = random_mask(target, torch.Generator().manual_seed(0), layerwise=True)
    assert all(int(per_layer[n].sum()) == int(target[n].sum()) for n in SHAPES)
    overall = random_mask(target, torch.Generator().manual_seed(0), layerwise=False)
    assert kept(overall) == kept(target)
    again = random_mask(target, torch.Generator().manual_seed(0), layerwise=True)
    assert all(torch.equal(again[n], per_layer[n]) for n in SHAPES)
    other = random_mask(target, torch.Generator().manual_seed(1), layerwise=True)
    assert not all(torch.equal(other[n], per_layer[n]) for n in SHAPES)


@pytest.mark.parametrize("optimizer", ["sgd_momentum_wd", "adam"])
def test_pruned_weights_stay_exactly_zero_through_training(optimizer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    weights = dict(model.named_parameters())
    names = ["0.weight", "2.weight"]
    mask = magnitude_prune(weights, full_mask(weights, names), 0.7)
    apply_mask(model, mask)
    if optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=0.1)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    enforce = MaskEnforcer(model, mask)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    for _ in range(20):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        enforce(model)
        for n in names:
            assert torch.all(weights[n][~mask[n]] == 0)
    assert all(torch.count_nonzero(weights[n][mask[n]]) == int(mask[n].sum()) for n in names)
