import json

import numpy as np
import pytest

from analysis.load import alignment, config_columns, load_frames, load_runs
from imp.base import store
from imp.base.errors import UserError

def test_frames_of_several_runs(results):
    out, ids = results
    frames = load_frames(ids[:2], out)
    levels = frames["levels"]
    assert len(levels) == 2 * 2 * (3 + 2)  # runs x replicates x (trunk levels + reinit levels)
    assert set(levels["baseline"]) == {"imp", "reinit"}
    assert sorted(levels["prune.rewind"].unique()) == ["0it", "10it"]
    assert levels["prune.exclude"].iloc[0] == "[]"  # lists as JSON text, so frames can group by them
    trunk = levels[(levels["baseline"] == "imp") & (levels["level"] < 2)]
    assert trunk["barrier_to_next_test_error"].notna().all()

    barriers = frames["barriers"]
    assert set(barriers["kind"]) == {"successive", "instability", "perturb"}
    assert levels["hessian_top_eigenvalue"].notna().sum() == 2 * 2  # level 1 of each run and replicate
    measured = frames["measurements"]
    hessians = measured[measured["kind"] == "hessian"]
    assert len(hessians) == 2 * 2 and set(hessians["level"]) == {1} and hessians["variant"].nunique() == 1
    assert json.loads(hessians["settings"].iloc[0])["examples"] == 100
    assert set(measured["kind"]) == {"successive", "instability", "perturb", "hessian", "prune_check", "groups", "ntk"}
    assert set(barriers["split"]) == {"train", "test"} and set(barriers["metric"]) == {"error", "loss"}
    perturb = barriers[barriers["kind"] == "perturb"]
    assert set(perturb["size"]) == {0.5} and set(perturb["direction"]) == {"gaussian"}
    run = store.RunDir(out, ids[0])
    assert set(barriers["alignment"]) == {"raw", "weights", "weights+repair"}  # the fixture measures all three
    curves = frames["curves"]
    files = [s for s in run.stages(1) if s.startswith("successive_0_")]
    assert len(files) == 3
    for stage in files:  # each variant's row is its own file's numbers
        stored = store.read_h5(run.stage_file(1, stage))
        way = alignment(json.loads(stored["settings"]))
        pick = ((barriers["run_id"] == ids[0]) & (barriers["replicate"] == 1) & (barriers["kind"] == "successive")
                & (barriers["level"] == 0) & (barriers["split"] == "test") & (barriers["metric"] == "error")
                & (barriers["alignment"] == way))
        row = barriers[pick]
        assert row["interpolated"].item() == stored["barrier"]["test_error"]["interpolated"]
        assert row["density"].item() == 1.0
        one = curves[(curves["run_id"] == ids[0]) & (curves["replicate"] == 1) & (curves["kind"] == "successive")
                     & (curves["level"] == 0) & (curves["split"] == "test") & (curves["metric"] == "error")
                     & (curves["alignment"] == way)]
        np.testing.assert_array_equal(one["alpha"], [0.0, 0.5, 1.0])
        np.testing.assert_array_equal(one["value"], stored["curve"]["test_error"])
    # runs x replicates x variants (raw and aligned; not REPAIR) x examples (level 1 only)
    assert len(frames["per_example"]) == 2 * 2 * 2 * 100

    metrics = frames["metrics"]
    one_level = metrics[(metrics["run_id"] == ids[1]) & (metrics["replicate"] == 0) & (metrics["level"] == 1)
                        & (metrics["baseline"] == "reinit")]
    assert one_level["step"].tolist() == [10, 20, 40]  # from the rewind step, every 20 iterations, the end
    assert {"train_accuracy", "test_loss"} <= set(metrics.columns)

    scores = frames["scores"]
    assert set(scores["name"]) == {"el2n@20it", "grand@0it"} and len(scores) == 2 * 1437


def test_config_columns_fill_defaults():
    columns = config_columns(json.loads('{"train":{"lr":0.2}}'))
    assert columns["train.lr"] == 0.2 and columns["train.epochs"] == "10ep" and columns["prune.fraction"] == 0.2
    assert "prune.levels" not in columns and "data.root" not in columns  # extents and platform fields are not config


def test_a_path_that_is_not_a_run_is_named(results):
    out, _ = results
    with pytest.raises(UserError, match="'not_a_run' is not a run folder"):
        load_runs(["not_a_run"], out)
    with pytest.raises(UserError, match="no runs given"):
        load_runs([], out)
