"""Layer allocations (prune.allocation): uniform, ERK and LAMP, against hand computations
and naive references written here."""

import dataclasses

import numpy as np
import pytest
import torch

from imp.base.config import PruneConfig, load_config, run_id
from imp.base.errors import UserError
from imp.batched import prune_batched
from imp.pai import group_counts
from imp.pruning import erk_counts, full_mask, kept, magnitude_prune, oneshot_prune, round_half_up
from landscape.prunelimit import magnitude_removal

SHAPES = {"a.weight": (30, 20), "b.weight": (10, 30), "c.weight": (4, 10)}


def weights_of(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(*s, generator=g) for n, s in shapes.items()}


def counts(mask):
    return [int(m.sum()) for m in mask.values()]


# ---------------------------------------------------------------- ERK


def test_erk_counts_by_hand():
    # (2, 3): size 6, factor 5; (4, 4): size 16, factor 8. Keep 10: eps = 10/13,
    # ideal 50/13 = 3.846 and 80/13 = 6.154; floors 3 + 6, the one left to the larger remainder.
    assert erk_counts([(2, 3), (4, 4)], 10, [6, 16]) == [4, 6]
    # (2, 3) and (10, 10) (factor 20), keep 60: eps = 60/25 = 2.4 gives the small one
    # 12 > 6 weights, so it stays dense and the other keeps the 54 left.
    assert erk_counts([(2, 3), (10, 10)], 60, [6, 100]) == [6, 54]
    # a 3x3 convolution (8, 4, 3, 3): factor 8 + 4 + 3 + 3 = 18, size 288; beside (5, 6):
    # factor 11. Keep 29: eps = 1, ideal 18 and 11 exactly.
    assert erk_counts([(8, 4, 3, 3), (5, 6)], 29, [288, 30]) == [18, 11]


def reference_erk(shapes, total):
    """RigL's ERK with dense layers found by bisection on eps (an independent route)."""
    sizes = np.array([np.prod(s) for s in shapes], dtype=float)
    raw = np.array([sum(s) for s in shapes], dtype=float) / sizes
    lo, hi = 0.0, 1e9
    for _ in range(200):
        eps = (lo + hi) / 2
        if np.minimum(1.0, eps * raw).dot(sizes) < total:
            lo = eps
        else:
            hi = eps
    return np.minimum(1.0, hi * raw) * sizes


@pytest.mark.parametrize("density", [0.9, 0.5, 0.1, 0.01])
def test_erk_counts_match_rigl_densities_and_sum_exactly(density):
    shapes = [(300, 784), (100, 300), (10, 100), (16, 3, 3, 3)]
    sizes = [int(np.prod(s)) for s in shapes]
    total = round_half_up(density * sum(sizes))
    got = erk_counts(shapes, total, sizes)
    assert sum(got) == total
    assert np.all(np.abs(np.array(got) - reference_erk(shapes, total)) < 1.0)
    assert all(0 <= c <= s for c, s in zip(got, sizes))


def test_erk_levels_prune_each_tensor_to_its_erk_count_by_magnitude():
    weights = weights_of(SHAPES)
    mask = full_mask(weights, SHAPES)
    for _ in range(8):
        new = magnitude_prune(weights, mask, 0.3, "erk")
        want = erk_counts([SHAPES[n] for n in SHAPES], kept(mask) - round_half_up(0.3 * kept(mask)), counts(mask))
        assert counts(new) == want
        assert kept(new) == kept(mask) - round_half_up(0.3 * kept(mask))
        for name in SHAPES:  # each tensor loses its smallest kept weights: nested, by magnitude
            assert not bool((new[name] & ~mask[name]).any())
            gone = weights[name][mask[name] & ~new[name]].abs()
            stay = weights[name][new[name]].abs()
            assert len(gone) == 0 or len(stay) == 0 or float(gone.max()) <= float(stay.min())
        mask = new


# ---------------------------------------------------------------- LAMP


def reference_lamp(weights, mask, count):
    """Naive LAMP: for every kept weight, its square over the sum of squares of the kept
    weights of its tensor at or after it in (|w|, position) order; remove the ``count``
    lowest, ties to the earlier position in the concatenation."""
    entries = []
    offset = 0
    for name, w in weights.items():
        flat_w, flat_m = w.reshape(-1).tolist(), mask[name].reshape(-1).tolist()
        kept_positions = sorted((i for i in range(len(flat_w)) if flat_m[i]),
                                key=lambda i: (abs(np.float32(flat_w[i])), i))
        for rank, i in enumerate(kept_positions):
            below = sum(flat_w[j] ** 2 for j in kept_positions[rank:])
            entries.append((flat_w[i] ** 2 / below if below > 0 else 0.0, offset + i))
        offset += len(flat_w)
    removed = {position for _, position in sorted(entries)[:count]}
    out, offset = {}, 0
    for name, m in mask.items():
        flat = m.reshape(-1).clone()
        for i in range(flat.numel()):
            if offset + i in removed:
                flat[i] = False
        out[name] = flat.reshape(m.shape)
        offset += flat.numel()
    return out


def test_lamp_by_hand_differs_from_global_magnitude():
    weights = {"a.weight": torch.tensor([[1.0, 2.0, 3.0]]), "b.weight": torch.tensor([[10.0, 20.0, 30.0]])}
    mask = full_mask(weights, weights)
    # scores: a = 1/14, 4/13, 1 and b = 100/1400, 400/1300, 1: the smallest of each goes first
    lamp = magnitude_prune(weights, mask, 2 / 6, "lamp")
    assert lamp["a.weight"].tolist() == [[False, True, True]] and lamp["b.weight"].tolist() == [[False, True, True]]
    magnitude = magnitude_prune(weights, mask, 2 / 6, "global")
    assert magnitude["a.weight"].tolist() == [[False, False, True]]


def test_lamp_levels_match_the_naive_reference_and_never_empty_a_tensor():
    weights = weights_of({"a.weight": (6, 5), "b.weight": (4, 6), "c.weight": (3, 4)}, seed=3)
    mask = full_mask(weights, weights)
    for _ in range(12):
        count = round_half_up(0.4 * kept(mask))
        new = magnitude_prune(weights, mask, 0.4, "lamp")
        expected = reference_lamp(weights, mask, count)
        assert {n: m.tolist() for n, m in new.items()} == {n: m.tolist() for n, m in expected.items()}
        assert kept(new) == kept(mask) - count
        if kept(new) >= len(new):  # each tensor's largest scores 1: the last to go
            assert all(c >= 1 for c in counts(new))
        mask = new
    assert kept(mask) < len(mask)  # the loop went past the point where that held


# ---------------------------------------------------------------- uniform, config, baselines


def test_uniform_is_the_layerwise_strategy_with_one_run_id():
    uniform = load_config(overrides=["prune.allocation=uniform"])
    assert uniform.prune.strategy == "layerwise" and uniform.prune.rule == "layerwise"
    assert run_id(uniform) == run_id(load_config(overrides=["prune.strategy=layerwise"]))
    assert run_id(load_config(overrides=["prune.allocation=erk"])) != run_id(load_config())
    assert run_id(load_config(overrides=["prune.allocation=global"])) == run_id(load_config())
    weights = weights_of(SHAPES)
    mask = magnitude_prune(weights, full_mask(weights, SHAPES), 0.2, uniform.prune.rule)
    assert counts(mask) == [600 - 120, 300 - 60, 40 - 8]  # every tensor loses the same fraction


@pytest.mark.parametrize("bad", [["prune.allocation=erk", "prune.strategy=layerwise"],
                                 ["prune.allocation=lamp", "prune.strategy=layerwise"],
                                 ["prune.allocation=erd"]])
def test_bad_allocations_are_one_line_errors(bad):
    with pytest.raises(UserError, match="prune.allocation"):
        load_config(overrides=bad)


@pytest.mark.parametrize("rule", ["erk", "lamp"])
def test_baselines_keep_the_trunks_count_per_tensor(rule):
    weights = weights_of(SHAPES)
    dense = full_mask(weights, SHAPES)
    trunk = magnitude_prune(weights, magnitude_prune(weights, dense, 0.5, rule), 0.5, rule)
    assert [want for _, want in group_counts(dense, trunk, rule)] == counts(trunk)
    oneshot = oneshot_prune(weights, dense, trunk, rule)
    assert kept(oneshot) == kept(trunk)
    if rule == "erk":  # one-shot ERK to the same total: the same counts up to rounding
        assert np.all(np.abs(np.array(counts(oneshot)) - np.array(counts(trunk))) <= 1)


@pytest.mark.parametrize("rule", ["erk", "lamp"])
def test_batched_pruning_and_the_prune_limit_follow_the_allocation(rule):
    shapes = {"a.weight": (6, 5), "b.weight": (4, 6)}
    replicates = [weights_of(shapes, seed=s) for s in range(2)]
    masks = [full_mask(w, shapes) for w in replicates]
    together = prune_batched(replicates, masks, 0.3, rule)
    for w, m, got in zip(replicates, masks, together):
        assert {n: t.tolist() for n, t in got.items()} == {n: t.tolist() for n, t in magnitude_prune(w, m, 0.3, rule).items()}
    weights, mask = replicates[0], magnitude_prune(replicates[0], masks[0], 0.2, rule)
    removal = magnitude_removal(weights, mask, rule)
    for p in (0.1, 0.37, 0.8):
        i = int(np.argmin(np.abs(removal.grid - p)))
        pruned = magnitude_prune(weights, mask, float(removal.grid[i]), rule)
        squares = sum(float((weights[n][mask[n] & ~pruned[n]].double() ** 2).sum()) for n in shapes)
        assert removal.count[i] == kept(mask) - kept(pruned)
        assert removal.squares[i] == pytest.approx(squares, rel=1e-12)


def test_allocation_is_a_field_with_the_old_default():
    assert PruneConfig().rule == "global"
    assert dataclasses.replace(PruneConfig(), allocation="lamp").rule == "lamp"
