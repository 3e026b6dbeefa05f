import pytest

from imp.base import store
from imp.base.errors import UserError
from imp.base.results import find_run, levels_done


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


def test_a_run_id_may_be_given_by_a_unique_start(tmp_path):
    for run_id in ("abcd12345678", "abcd98765432", "ffff00001111"):
        store.create_run(store.RunDir(tmp_path, run_id), "{}", "cpu")
    assert find_run("ffff", tmp_path).run_id == "ffff00001111"
    assert find_run("abcd1", tmp_path).run_id == "abcd12345678"
    with pytest.raises(UserError, match="'abcd' is the start of 2 run ids"):
        find_run("abcd", tmp_path)
    with pytest.raises(UserError, match="is not a run folder"):
        find_run("fff", tmp_path)  # too short to stand for an id
