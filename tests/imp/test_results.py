import pytest

from imp import store
from imp.errors import UserError
from imp.results import find_run, level_stage, levels_done, parse_stage


def test_stage_names_round_trip():
    assert level_stage(3) == "level_3" and level_stage(3, "reinit") == "level_3_reinit"
    for level, baseline in [(0, None), (12, "oneshot"), (1, "random")]:
        assert parse_stage(level_stage(level, baseline)) == (level, baseline)
    for other in ["rewind", "level_x", "level_2_unknown", "scores", "level_"]:
        assert parse_stage(other) is None


def test_find_run_by_folder_or_id(tmp_path):
    run = store.RunDir(tmp_path / "out", "abc123")
    store.create_run(run, "{}", "cpu")
    assert find_run("abc123", tmp_path / "out").path == run.path
    assert find_run(str(run.path), "elsewhere").path == run.path
    with pytest.raises(UserError, match="'nope' is not a run folder, nor a run id under"):
        find_run("nope", tmp_path / "out")


def test_levels_done_counts_consecutive_trunk_levels(tmp_path):
    run = store.RunDir(tmp_path, "r")
    for stage in ["rewind", "level_0", "level_1", "level_1_reinit", "level_3"]:
        store.write_h5(run.stage_file(0, stage), {}, {})
    assert levels_done(run, 0) == 2
    assert levels_done(run, 1) == 0
