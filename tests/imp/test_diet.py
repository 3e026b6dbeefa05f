import numpy as np
import pytest
import torch

from imp.base import store
from imp.base.config import load_config
from imp.data import load_dataset
from imp.diet import score_spec
from imp.base.errors import UserError
from imp.models import build_initial_model
from imp.base.names import level_stage
from imp.scores import scores_path
from imp.subsets import select
from imp.base.seeds import Seeds
from imp.train import train
from imp.trunk import run_imp

CPU = torch.device("cpu")
TINY = ["model.widths=[32, 16]", "train.epochs='3ep'", "train.eval_every='1ep'", "data.batch_size=64",
        "train.momentum=0.9", "prune.levels=1"]
DIET = ["diet.pretrain='30it'", "diet.subset=easy", "diet.size=400", "diet.score=el2n", "diet.score_step='1ep'"]


def test_the_pretrained_state_on_the_subset_is_the_rewind_point(tmp_path):
    config = load_config(None, TINY + DIET)
    run = run_imp(config, tmp_path, tmp_path, CPU)
    pretrain = store.read_h5(run.stage_file(0, "pretrain"))
    scores = store.read_h5(scores_path(tmp_path, config, score_spec(config)))
    # The subset is the 400 lowest EL2N scores, computed and cached under out/scores.
    data = load_dataset(config.data, tmp_path)
    expected = select(scores["mean"], data.train.y.numpy(), "easy", 400)
    np.testing.assert_array_equal(pretrain["positions"], expected)
    np.testing.assert_array_equal(pretrain["scores"], scores["mean"])
    assert pretrain["step"] == 30 and pretrain["subset"] == "easy" and pretrain["score"] == "el2n"

    # Independently: train from the replicate's init on the subset for 30 steps.
    seeds = Seeds.from_config(config.train, 0)
    model = build_initial_model(config, data, seeds.init)
    train(model, data.train_subset(expected), config.train, 64, seeds, end_step=30,
          iterations_per_epoch=data.iterations_per_epoch(64))
    rewind = store.read_h5(run.stage_file(0, "rewind"))
    assert rewind["step"] == 30
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(rewind["weights"][key], value.numpy(), err_msg=key)
    level0, level1 = (store.read_h5(run.stage_file(0, level_stage(level))) for level in (0, 1))
    assert level0["start_step"] == 30 and level1["start_step"] == 30
    assert level0["steps"]["train_loss"].shape == (3 * 23 - 30,)  # IMP trains on the full data


def test_a_random_diet_needs_no_scores(tmp_path):
    config = load_config(None, TINY + ["diet.pretrain='20it'", "diet.subset=random", "diet.size=300"])
    run = run_imp(config, tmp_path, tmp_path, CPU)
    pretrain = store.read_h5(run.stage_file(0, "pretrain"))
    assert len(pretrain["positions"]) == 300 and "scores" not in pretrain
    assert not (tmp_path / "scores").exists()


def test_a_scores_file_can_be_reused(tmp_path):
    config = load_config(None, TINY + DIET)
    run_imp(config, tmp_path / "first", tmp_path, CPU)
    path = scores_path(tmp_path / "first", config, score_spec(config))
    reuse = load_config(None, TINY + DIET + [f"diet.scores_file='{path}'"])
    run = run_imp(reuse, tmp_path / "second", tmp_path, CPU)
    assert not (tmp_path / "second" / "scores").exists()
    assert store.read_h5(run.stage_file(0, "pretrain"))["scores_source"] == str(path)
    wrong = load_config(None, TINY + DIET + [f"diet.scores_file='{path}'", "diet.score=grand"])
    with pytest.raises(UserError, match="holds el2n scores but diet.score is 'grand'"):
        run_imp(wrong, tmp_path / "third", tmp_path, CPU)


@pytest.mark.parametrize("extra, message", [
    (["prune.rewind='10it'"], "prune.rewind and diet.pretrain both set the rewind point"),
    (["diet.pretrain='3ep'"], "diet.pretrain = 3ep (69 iterations) is not before the end of training"),
    (["diet.size=5000"], "diet.size (5000) + diet.offset (0) is larger than the training set (1437 examples)"),
])
def test_bad_diets_are_refused(tmp_path, extra, message):
    config = load_config(None, TINY + DIET + extra)
    with pytest.raises(UserError) as error:
        run_imp(config, tmp_path, tmp_path, CPU)
    assert message in str(error.value)


@pytest.mark.parametrize("overrides, message", [
    (["diet.subset=easy", "diet.size=10"], "diet.subset only applies with diet.pretrain > 0"),
    (["diet.pretrain='10it'", "diet.subset=hard"], "diet.size must be positive for diet.subset = 'hard'"),
    (["diet.pretrain='10it'", "diet.size=10"], "diet.size needs diet.subset easy, hard or random"),
    (["diet.pretrain='10it'", "diet.subset=random", "diet.size=5", "diet.offset=2"], "diet.offset only applies"),
    (["diet.score_runs=0"], "diet.score_runs must be at least 1"),
])
def test_bad_diet_configs(overrides, message):
    with pytest.raises(UserError) as error:
        load_config(None, overrides)
    assert message in str(error.value)
