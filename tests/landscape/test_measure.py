import numpy as np
import pytest
import torch

from imp import store
from imp.config import load_config
from imp.data import load_dataset
from imp.errors import UserError
from imp.level import state_from_arrays
from imp.pruning import full_mask, magnitude_prune
from imp.results import level_rows
from imp.trunk import run_imp
from landscape.hooks import level_hooks, measure_run
from landscape.measure import Measurements, compare, make_probe, perturbation

CPU = torch.device("cpu")
TINY = ["model.widths=[32, 16]", "train.epochs='60it'", "train.eval_every='30it'", "data.batch_size=64",
        "train.momentum=0.9", "prune.levels=2", "prune.rewind='10it'",
        "landscape.points=5", "landscape.examples=300", "landscape.bn_examples=256"]


def read(run, stage, replicate=0):
    return store.read_h5(run.stage_file(replicate, stage))


def test_a_perturbation_has_the_asked_norm_and_stays_in_the_mask():
    g = torch.Generator().manual_seed(0)
    state = {"a": torch.randn(20, 10, generator=g), "b": torch.randn(5, 20, generator=g), "bias": torch.ones(5)}
    mask = magnitude_prune(state, full_mask(state, ["a", "b"]), 0.5)
    following = magnitude_prune(state, mask, 0.3)
    expected_scale = float(torch.sqrt(sum(((state[n] * (mask[n] & ~following[n])).double() ** 2).sum() for n in mask)))
    for direction in ("gaussian", "pruned"):
        unit, scale = perturbation(state, mask, following, direction, torch.Generator().manual_seed(1))
        assert scale == pytest.approx(expected_scale, rel=1e-12)
        assert set(unit) == {"a", "b"}
        norm = torch.sqrt(sum((u.double() ** 2).sum() for u in unit.values()))
        assert float(norm) == pytest.approx(1.0, rel=1e-6)
        assert all(torch.all(unit[n][~mask[n]] == 0) for n in mask)
        r = 0.7 * scale
        moved = {n: state[n] * mask[n] + r * unit[n] for n in mask}
        distance = torch.sqrt(sum(((moved[n] - state[n] * mask[n]).double() ** 2).sum() for n in mask))
        assert float(distance) == pytest.approx(r, rel=1e-6)
    unit, scale = perturbation(state, mask, following, "pruned", torch.Generator())
    to_next = {n: state[n] * mask[n] - scale * unit[n] for n in mask}  # size -1 prunes them exactly
    for n in mask:
        torch.testing.assert_close(to_next[n], state[n] * following[n], rtol=0, atol=1e-6)


def test_successive_barriers_and_siblings_during_a_run(tmp_path):
    config = load_config(None, TINY + ["landscape.successive=true", "landscape.siblings=2",
                                       "landscape.sibling_levels=[0, 2]", "landscape.per_example=true"])
    run = run_imp(config, tmp_path, tmp_path, CPU, hooks=level_hooks(config, CPU))
    stages = set(run.stages(0))
    assert {"barrier_0", "barrier_1", "instability_0", "instability_2"} <= stages
    assert {"sibling_0_0", "sibling_0_1", "sibling_2_1"} <= stages  # level 0 from w_k needs its own copy 0
    assert "sibling_2_0" not in stages and "barrier_2" not in stages

    data = load_dataset(config.data, tmp_path)
    weights = {level: state_from_arrays(read(run, f"level_{level}")["weights"]) for level in (1, 2)}
    again = compare(config, data, make_probe(config, data), weights[1], weights[2])
    stored = read(run, "barrier_1")
    assert stored["barrier"]["test_error"]["interpolated"] == again["barrier"]["test_error"]["interpolated"]
    np.testing.assert_array_equal(stored["curve"]["alpha"], np.linspace(0, 1, 5))
    np.testing.assert_array_equal(stored["curve"]["test_error"], again["curve"]["test_error"])

    instability = read(run, "instability_2")
    assert instability["copies"] == 2 and set(instability["pairs"]) == {"0_1"}
    per_example = instability["per_example"]
    assert per_example["midpoint_barrier"].shape == (300,)
    assert per_example["fraction_at_most_tau"] == np.mean(per_example["midpoint_barrier"] <= 0.0)
    sibling = read(run, "sibling_2_1")
    assert sibling["start_step"] == 10 and sibling["seeds"]["order"] != read(run, "level_2")["seeds"]["order"]
    np.testing.assert_array_equal(sibling["mask"]["1.weight"], read(run, "level_2")["mask"]["1.weight"])

    rows = {r["level"]: r for r in level_rows(run) if r["baseline"] is None}
    assert rows[1]["barrier_to_next_test_error"] == stored["barrier"]["test_error"]["interpolated"]
    assert rows[2]["instability_test_error"] == instability["barrier"]["test_error"]["interpolated"]
    assert "barrier_to_next_test_error" not in rows[2]


def test_a_zero_perturbation_reproduces_the_level_and_has_no_barrier(tmp_path):
    config = load_config(None, TINY + ["landscape.perturb_sizes=[0.0, 2.0]",
                                       "landscape.perturb_directions=['gaussian', 'pruned']",
                                       "landscape.perturb_levels=[1]"])
    run = run_imp(config, tmp_path, tmp_path, CPU, hooks=level_hooks(config, CPU))
    zero, level = read(run, "perturb_1_gaussian_0"), read(run, "level_1")
    for key in level["weights"]:
        np.testing.assert_array_equal(zero["weights"][key], level["weights"][key])
    assert zero["barrier"]["test_error"] == {"interpolated": 0.0, "mean": 0.0}
    moved = read(run, "perturb_1_pruned_2")
    assert moved["perturbation_norm"] == pytest.approx(2 * moved["natural_scale"])
    assert moved["natural_scale"] > 0
    assert not np.array_equal(moved["weights"]["1.weight"], level["weights"]["1.weight"])
    assert {s for s in run.stages(0) if s.startswith("perturb")} == {
        "perturb_1_gaussian_0", "perturb_1_gaussian_2", "perturb_1_pruned_0", "perturb_1_pruned_2"}


def test_measuring_a_finished_run_and_keeping_its_settings(tmp_path):
    config = load_config(None, TINY)
    run = run_imp(config, tmp_path, tmp_path, CPU)
    data = load_dataset(config.data, tmp_path)
    measured = load_config(None, TINY + ["landscape.successive=true"])
    with store.RunLock(run):
        measure_run(measured, data, run, CPU, levels=[0])
    assert "barrier_0" in run.stages(0) and "barrier_1" not in run.stages(0)
    other = load_config(None, TINY + ["landscape.successive=true", "landscape.points=9"])
    with pytest.raises(UserError, match="measured its landscape with"):
        measure_run(other, data, run, CPU)
    Measurements(measured, data, run, 0).successive(2)  # no level 3: nothing to do
    assert "barrier_2" not in run.stages(0)
