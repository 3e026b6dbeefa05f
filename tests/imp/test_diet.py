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


# ------------------------------------------------------------------ training on a pruned data set

SUBSET = ["subset.keep=0.5", "subset.score=el2n", "subset.score_step='1ep'"]


def _ranked_from_top(scores):
    return [position for _, position in sorted((-score, position) for position, score in enumerate(scores))]


@pytest.mark.parametrize("budget, iterations", [("iterations", 3 * 23), ("epochs", 3 * 12)])
def test_every_level_trains_on_the_kept_examples_for_the_budget(tmp_path, budget, iterations):
    """Digits at batch 64: 23 iterations per epoch on all 1,437 examples, 12 on the 719
    kept; '3ep' is 69 steps with the paper's budget and 36 with the subset's epochs."""
    config = load_config(None, TINY + SUBSET + [f"subset.budget={budget}"])
    run = run_imp(config, tmp_path, tmp_path, CPU)
    stored = store.read_h5(run.path / "subset.h5")
    (scores_file,) = (tmp_path / "scores").glob("el2n_*.h5")  # the one score file the run made
    scores = store.read_h5(scores_file)["mean"]
    np.testing.assert_array_equal(stored["scores"], scores)
    expected = sorted(_ranked_from_top(scores.tolist())[:719])  # independently: the 719 highest
    assert stored["positions"].tolist() == expected and stored["kept"] == 719 and stored["examples"] == 1437
    for level in (0, 1):
        record = store.read_h5(run.stage_file(0, level_stage(level)))
        assert record["iterations"] == iterations and record["steps"]["train_loss"].shape == (iterations,)

    # Independently: level 0 is the replicate's init trained on exactly those examples.
    data = load_dataset(config.data, tmp_path)
    seeds = Seeds.from_config(config.train, 0)
    model = build_initial_model(config, data, seeds.init)
    train(model, data.train_subset(expected), config.train, 64, seeds, end_step=iterations,
          iterations_per_epoch=23 if budget == "iterations" else 12)
    level0 = store.read_h5(run.stage_file(0, level_stage(0)))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(level0["weights"][key], value.numpy(), err_msg=key)
    assert len(level0["eval"]["test_accuracy"]) and data.test.y.shape == (360,)  # the test set is whole


def _subset_spec(config):
    from imp.scores import ScoreSpec

    return ScoreSpec(config.subset.score, config.subset.score_step, config.subset.score_runs)


def test_a_subset_run_resumes_on_its_stored_subset(tmp_path):
    config = load_config(None, TINY + SUBSET + ["subset.rule=random", "subset.seed=3"])
    run = run_imp(config, tmp_path, tmp_path, CPU)
    first = store.read_h5(run.stage_file(0, level_stage(1)))["weights"]
    stored = (run.path / "subset.h5").read_bytes()
    run.stage_file(0, level_stage(1)).unlink()  # as if killed while level 1 trained
    run_imp(config, tmp_path, tmp_path, CPU)
    assert (run.path / "subset.h5").read_bytes() == stored
    again = store.read_h5(run.stage_file(0, level_stage(1)))["weights"]
    assert all(np.array_equal(first[key], again[key]) for key in first)
    assert not (tmp_path / "scores").exists()  # a random subset needs no scores


def test_subset_scores_of_other_data_are_refused(tmp_path):
    config = load_config(None, TINY + SUBSET)
    run_imp(config, tmp_path / "first", tmp_path, CPU)
    path = scores_path(tmp_path / "first", config, _subset_spec(config))
    noisy = load_config(None, TINY + SUBSET + [f"subset.scores_file='{path}'", "data.validation=100"])
    with pytest.raises(UserError, match="scores a different training set"):
        run_imp(noisy, tmp_path / "second", tmp_path, CPU)
    assert not any((tmp_path / "second").glob("*/*.h5"))  # nothing written


@pytest.mark.parametrize("overrides, message", [
    (["subset.keep=0"], "subset.keep must be in (0, 1]"),
    (["subset.keep=1.5"], "subset.keep must be in (0, 1]"),
    (["subset.keep=0.5", "subset.offset=0.2"], "subset.offset only applies to subset.rule = 'window'"),
    (["subset.keep=0.5", "subset.rule=window", "subset.offset=0.6"], "subset.keep + subset.offset <= 1"),
    (["subset.rule=hard"], "subset.rule = 'hard' is not one of"),
    (["subset.budget=steps"], "subset.budget = 'steps' is not one of"),
    (["subset.keep=0.5", "diet.pretrain='10it'"], "cannot be combined with diet.pretrain"),
    (["subset.score_runs=0"], "subset.score_runs must be at least 1"),
    (["subset.keep=0.5", "subset.ccs_hard_cut=0.1"], "only apply to subset.rule = 'ccs'"),
    (["subset.keep=0.5", "subset.rule=ccs", "subset.ccs_hard_cut=0.6"], "subset.keep + subset.ccs_hard_cut <= 1"),
    (["subset.keep=0.5", "subset.rule=ccs", "subset.ccs_strata=0"], "subset.ccs_strata must be from 1 to 10000"),
    (["subset.keep=0.5", "subset.rule=ccs", "subset.class_balanced=true"], "does not apply to subset.rule = 'ccs'"),
    (["diet.pretrain='10it'", "diet.subset=hard", "diet.size=9", "diet.ccs_strata=7"], "only apply to diet.subset"),
    (["diet.pretrain='10it'", "diet.subset=ccs", "diet.size=9", "diet.ccs_hard_cut=1.5"], "diet.ccs_hard_cut must be"),
])
def test_bad_subset_configs(overrides, message):
    with pytest.raises(UserError) as error:
        load_config(None, overrides)
    assert message in str(error.value)


def test_coverage_centric_subsets_for_a_run_and_a_diet(tmp_path):
    """[subset] and [diet] both take the coverage-centric rule (Zheng et al. 2023): the
    stored choice is imp.subsets.ccs of the stored scores."""
    from imp.subsets import ccs

    config = load_config(None, TINY + SUBSET + ["subset.keep=0.2", "subset.rule=ccs", "subset.ccs_hard_cut=0.1",
                                                "subset.ccs_strata=10", "prune.levels=0"])
    run = run_imp(config, tmp_path, tmp_path, CPU)
    stored = store.read_h5(run.path / "subset.h5")
    assert stored["kept"] == 287 and stored["skipped"] == 144  # round(0.2 x 1437), round(0.1 x 1437)
    assert stored["positions"].tolist() == ccs(stored["scores"], 287, 0.1, 10, seed=0).tolist()
    diet = load_config(None, TINY + ["diet.pretrain='20it'", "diet.subset=ccs", "diet.size=300",
                                     "diet.score_step='1ep'", "diet.ccs_strata=5"])
    run = run_imp(diet, tmp_path / "diet", tmp_path, CPU)
    pretrain = store.read_h5(run.stage_file(0, "pretrain"))
    assert pretrain["positions"].tolist() == ccs(pretrain["scores"], 300, 0.0, 5, seed=0).tolist()


def test_a_rewind_past_a_subsets_shorter_training_is_refused_before_scores(tmp_path):
    """With subset.budget = "epochs", 3 epochs of the 719 kept examples at batch 64 are 36
    steps: rewinding to step 40 is past the end, said before any score is computed."""
    config = load_config(None, TINY + SUBSET + ["subset.budget=epochs", "prune.rewind='40it'"])
    with pytest.raises(UserError, match="prune.rewind = 40it .40 iterations. is not before the end of training"):
        run_imp(config, tmp_path, tmp_path, CPU)
    assert not (tmp_path / "scores").exists()
