import json

import numpy as np
import pytest
import torch

from imp.base import store
from imp.base.errors import UserError
from imp.base.config import load_config
from imp.data import load_dataset
from imp.level import state_from_arrays
from imp.pruning import full_mask, magnitude_prune
from imp.base.results import level_rows, measurements
from imp.trunk import run_imp
from landscape.hooks import level_hooks, measure_run
from landscape.measure import compare, make_probe, perturbation
from tests.landscape.conftest import measured, only

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


def first_weight(tree):
    return next(iter(tree["mask"]))


def test_successive_barriers_and_siblings_during_a_run(tmp_path):
    config = load_config(None, TINY + ["landscape.successive=true", "landscape.siblings=2",
                                       "landscape.sibling_levels=[0, 2]", "landscape.per_example=true"])
    run = run_imp(config, tmp_path, tmp_path, CPU, hooks=level_hooks(config, CPU))
    stages = set(run.stages(0))
    assert len(measured(run, "successive")) == 2 and measured(run, "successive", 2) == []
    assert [len(measured(run, "instability", level)) for level in (0, 1, 2)] == [1, 0, 1]
    assert {"sibling_0_0", "sibling_0_1", "sibling_2_1"} <= stages  # level 0 from w_k needs its own copy 0
    assert "sibling_2_0" not in stages

    data = load_dataset(config.data, tmp_path)
    weights = {level: state_from_arrays(read(run, f"level_{level}")["weights"]) for level in (1, 2)}
    again = compare(config, data, make_probe(config, data), weights[1], weights[2])
    stored = read(run, only(run, "successive", 1))
    assert stored["barrier"]["test_error"]["interpolated"] == again["barrier"]["test_error"]["interpolated"]
    np.testing.assert_array_equal(stored["curve"]["alpha"], np.linspace(0, 1, 5))
    np.testing.assert_array_equal(stored["curve"]["test_error"], again["curve"]["test_error"])
    assert stored["measurement"] == "successive" and stored["level"] == 1
    assert json.loads(stored["settings"]) == {"points": 5, "examples": 300, "bn": "reestimate", "bn_examples": 256}

    instability = read(run, only(run, "instability", 2))
    assert instability["copies"] == 2 and set(instability["pairs"]) == {"0_1"}
    per_example = instability["per_example"]
    assert per_example["midpoint_barrier"].shape == (300,)
    assert per_example["fraction_at_most_tau"] == np.mean(per_example["midpoint_barrier"] <= 0.0)
    sibling = read(run, "sibling_2_1")
    assert sibling["start_step"] == 10 and sibling["seeds"]["order"] != read(run, "level_2")["seeds"]["order"]
    name = first_weight(sibling)
    np.testing.assert_array_equal(sibling["mask"][name], read(run, "level_2")["mask"][name])

    rows = {r["level"]: r for r in level_rows(run) if r["baseline"] is None}
    assert rows[1]["barrier_to_next_test_error"] == stored["barrier"]["test_error"]["interpolated"]
    assert rows[2]["instability_test_error"] == instability["barrier"]["test_error"]["interpolated"]
    assert "barrier_to_next_test_error" not in rows[2]


def test_a_zero_perturbation_reproduces_the_level_and_has_no_barrier(tmp_path):
    config = load_config(None, TINY + ["landscape.perturb_sizes=[0.0, 2.0]",
                                       "landscape.perturb_directions=['gaussian', 'pruned']",
                                       "landscape.perturb_levels=[1]"])
    run = run_imp(config, tmp_path, tmp_path, CPU, hooks=level_hooks(config, CPU))
    zero, level = read(run, "perturbed_1_gaussian_0"), read(run, "level_1")
    for key in level["weights"]:
        np.testing.assert_array_equal(zero["weights"][key], level["weights"][key])
    barriers = {(t["direction"], t["size"]): t for t in (read(run, s) for s in measured(run, "perturb", 1))}
    assert set(barriers) == {("gaussian", 0.0), ("gaussian", 2.0), ("pruned", 0.0), ("pruned", 2.0)}
    assert barriers["gaussian", 0.0]["barrier"]["test_error"] == {"interpolated": 0.0, "mean": 0.0}
    moved = barriers["pruned", 2.0]
    assert moved["perturbation_norm"] == pytest.approx(2 * moved["natural_scale"]) and moved["natural_scale"] > 0
    name = first_weight(level)
    assert not np.array_equal(read(run, moved["network"])["weights"][name], level["weights"][name])
    assert {s for s in run.stages(0) if s.startswith("perturbed")} == {
        "perturbed_1_gaussian_0", "perturbed_1_gaussian_2", "perturbed_1_pruned_0", "perturbed_1_pruned_2"}


def test_other_settings_give_a_new_result_and_the_same_settings_reuse_it(tmp_path):
    config = load_config(None, TINY)
    run = run_imp(config, tmp_path, tmp_path, CPU)
    data = load_dataset(config.data, tmp_path)
    five = load_config(None, TINY + ["landscape.successive=true"])
    with store.RunLock(run):
        first = measure_run(five, data, run, CPU, levels=[0])
    stage = only(run, "successive", 0)
    assert [m.stage for m in first] == [stage] and measured(run, "successive", 1) == []
    mtime = run.stage_file(0, stage).stat().st_mtime_ns
    with store.RunLock(run):
        again = measure_run(five, data, run, CPU, levels=[0])
    assert [m.stage for m in again] == [stage] and run.stage_file(0, stage).stat().st_mtime_ns == mtime

    # Once fixed by the first measurement, the curve settings now simply make a second result.
    nine = load_config(None, TINY + ["landscape.successive=true", "landscape.points=9"])
    with store.RunLock(run):
        other = measure_run(nine, data, run, CPU, levels=[0])
    assert len(measured(run, "successive", 0)) == 2 and other[0].stage != stage
    assert len(read(run, other[0].stage)["curve"]["alpha"]) == 9 and len(read(run, stage)["curve"]["alpha"]) == 5
    assert other[0].settings["points"] == 9 and run.stage_file(0, stage).stat().st_mtime_ns == mtime
    # Two variants at one level: the row leaves the column out rather than pick one.
    assert "barrier_to_next_test_error" not in next(r for r in level_rows(run) if r["level"] == 0)
    assert {m.settings_id for m in measurements(run)} == {first[0].settings_id, other[0].settings_id}


def test_more_siblings_and_per_example_values_make_a_new_instability(tmp_path):
    config = load_config(None, TINY + ["prune.levels=1"])
    run = run_imp(config, tmp_path, tmp_path, CPU)
    data = load_dataset(config.data, tmp_path)
    two = load_config(None, TINY + ["landscape.siblings=2"])
    three = load_config(None, TINY + ["landscape.siblings=3", "landscape.per_example=true"])
    with store.RunLock(run):
        measure_run(two, data, run, CPU, levels=[1])
        measure_run(three, data, run, CPU, levels=[1])
    trees = sorted((read(run, s) for s in measured(run, "instability", 1)), key=lambda t: t["copies"])
    assert [t["copies"] for t in trees] == [2, 3]
    assert "per_example" not in trees[0] and trees[1]["per_example"]["midpoint_barrier"].shape == (300,)
    assert set(trees[1]["pairs"]) == {"0_1", "0_2", "1_2"}
    # the copies are trained once and shared by both measurements
    assert {s for s in run.stages(0) if s.startswith("sibling")} == {"sibling_1_1", "sibling_1_2"}
    np.testing.assert_array_equal(trees[0]["pairs"]["0_1"]["curve"]["test_error"],
                                  trees[1]["pairs"]["0_1"]["curve"]["test_error"])
    # asking again for 3 copies with per-example values reuses everything stored
    stamps = {stage: run.stage_file(0, stage).stat().st_mtime_ns for stage in run.stages(0)}
    with store.RunLock(run):
        again = measure_run(three, data, run, CPU, levels=[1])
    assert [m.settings["copies"] for m in again] == [3]
    assert {stage: run.stage_file(0, stage).stat().st_mtime_ns for stage in run.stages(0)} == stamps


def test_nothing_to_do_where_a_level_is_missing(tmp_path):
    config = load_config(None, TINY + ["landscape.successive=true"])
    run = run_imp(load_config(None, TINY), tmp_path, tmp_path, CPU)
    data = load_dataset(config.data, tmp_path)
    with store.RunLock(run):
        assert measure_run(config, data, run, CPU, levels=[2, 7]) == []  # no level 3, no level 7
    assert measured(run, "successive") == []


def test_a_stored_network_for_a_nearly_equal_size_is_not_reused(tmp_path):
    config = load_config(None, TINY + ["landscape.perturb_levels=[1]", "landscape.perturb_sizes=[0.1234567]"])
    run = run_imp(config, tmp_path, tmp_path, CPU, hooks=level_hooks(config, CPU))
    data = load_dataset(config.data, tmp_path)
    close = load_config(None, TINY + ["landscape.perturb_levels=[1]", "landscape.perturb_sizes=[0.1234568]"])
    with store.RunLock(run), pytest.raises(UserError, match="holds a network trained with size = 0.1234567"):
        measure_run(close, data, run, CPU, levels=[1])
