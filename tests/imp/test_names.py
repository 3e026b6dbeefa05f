import pytest

from imp.base import names
from imp.base.names import (level_stage, legacy_kind, measurement_stage, parse_level_stage,
                       parse_measurement_stage, settings_id)


def test_stage_names_round_trip():
    assert level_stage(3) == "level_3" and level_stage(3, "reinit") == "level_3_reinit"
    for level, baseline in [(0, None), (12, "oneshot"), (1, "random")]:
        assert parse_level_stage(level_stage(level, baseline)) == (level, baseline)
    for other in ["rewind", "level_x", "level_2_unknown", "scores", "level_", "sibling_2_1"]:
        assert parse_level_stage(other) is None


def test_a_settings_id_is_a_hash_of_exactly_the_settings():
    settings = {"points": 25, "bn": "reestimate"}
    assert settings_id(settings) == settings_id(dict(reversed(settings.items())))  # key order is irrelevant
    assert settings_id(settings) != settings_id({**settings, "points": 3})
    assert settings_id({"size": 1.0}) != settings_id({"size": 1})  # a number's type is part of it
    assert len(settings_id(settings)) == 8 and int(settings_id(settings), 16) >= 0


def test_measurement_names_round_trip():
    for kind, level in [("successive", 0), ("prune_check", 12), ("pair", None), ("distance", 3)]:
        stage = measurement_stage(kind, level, {"k": 5})
        parsed = parse_measurement_stage(stage)
        assert (parsed.kind, parsed.level, parsed.settings_id) == (kind, level, settings_id({"k": 5}))
        assert legacy_kind(stage) is None and parse_level_stage(stage) is None
    for other in ["level_3", "rewind", "sibling_2_1", "perturbed_1_gaussian_0.5", "pruned_2_0.4", "hessian_3"]:
        assert parse_measurement_stage(other) is None
    with pytest.raises(ValueError):
        measurement_stage("Bad-kind", 1, {})


def test_the_old_layout_is_recognised():
    assert legacy_kind("barrier_3") == ("successive", 3, ())
    assert legacy_kind("hessian_0") == ("hessian", 0, ())
    assert legacy_kind("perturb_1_gaussian_0.5") == ("perturb", 1, ("gaussian", "0.5"))
    assert legacy_kind("prune_check_2_0.4") == ("prune_check", 2, ("0.4",))
    assert legacy_kind("pair_level_1__level_2") == ("pair", None, ("level_1", "level_2"))
    for other in ["level_3", "sibling_2_1", "rewind", measurement_stage("hessian", 3, {})]:
        assert legacy_kind(other) is None


def test_file_names():
    assert names.stage_file("level_3") == "level_3.h5"
    assert names.temporary_file("level_3.h5", 12).endswith(names.TEMPORARY_SUFFIX)
    for bad in ["", "a/b", ".hidden"]:
        with pytest.raises(ValueError):
            names.stage_file(bad)
    assert names.scores_file("el2n", "abc") == "el2n_abc.h5"
    assert names.sweep_manifest("grid") == "grid.json"
