import dataclasses
import hashlib

import pytest

from imp.base.config import (Config, DataConfig, TrainConfig, canonical, canonical_json, from_dict,
                             load_config, run_id, to_dict)
from imp.base.duration import Duration
from imp.base.errors import UserError

# Pinned run ids: these must never change, or every stored result loses its name.
PINNED = [
    ([], "{}", "44136fa355b3"),
    (["data.batch_size=64", "model.widths=[300, 100]", "train.epochs='30ep'",
      "train.eval_every='5ep'", "train.lr=0.05", "train.momentum=0.9"],
     '{"data":{"batch_size":64},"model":{"widths":[300,100]},'
     '"train":{"epochs":"30ep","eval_every":"5ep","lr":0.05,"momentum":0.9}}',
     "c646c00fca77"),
    (["data.dataset=cifar10", "model.name=resnet20", "train.epochs='160ep'", "train.momentum=0.9",
      "train.weight_decay=1e-4", "train.schedule=step", "train.milestones=['80ep', '120ep']"],
     '{"data":{"dataset":"cifar10"},"model":{"name":"resnet20"},"train":{"epochs":"160ep",'
     '"milestones":["80ep","120ep"],"momentum":0.9,"schedule":"step","weight_decay":0.0001}}',
     "eede71866610"),
]


@pytest.mark.parametrize("overrides, canonical, expected_id", PINNED)
def test_pinned_run_ids(overrides, canonical, expected_id):
    config = load_config(None, overrides)
    assert canonical_json(config) == canonical
    assert run_id(config) == expected_id
    assert expected_id == hashlib.sha256(canonical.encode()).hexdigest()[:12]


@pytest.mark.parametrize("overrides, canonical_text, expected_id", PINNED)
def test_pinned_configs_are_already_canonical(overrides, canonical_text, expected_id):
    config = load_config(None, overrides)
    for sizes in [(1437, 360), (60000, 10000), (50000, 10000)]:  # digits, MNIST, CIFAR-10
        assert run_id(canonical(config, *sizes)) == expected_id


def _id(*overrides, sizes=(1437, 360)):  # digits by default: 12 iterations per epoch at batch 128
    return run_id(canonical(load_config(None, list(overrides)), *sizes))


def test_equal_work_has_one_id():
    assert _id("prune.rewind='12it'") == _id("prune.rewind='1ep'") == _id("prune.rewind='0ep12it'")
    assert _id("prune.rewind='2ep5it'") == _id("prune.rewind='29it'")
    assert _id("train.epochs='120it'") == _id() and _id("train.eval_every='12it'") == _id()
    assert _id("train.warmup='0ep'") == _id()
    assert _id("diet.pretrain='24it'") == _id("diet.pretrain='2ep'")
    assert _id("train.schedule=step", "train.milestones=['60it', '8ep']") == \
        _id("train.schedule=step", "train.milestones=['5ep', '96it']")
    for whole in (1437, 99999):  # at or above every evaluated split's size: the whole splits, as 0
        assert _id(f"train.eval_examples={whole}") == _id()


def test_a_subsets_epochs_count_its_budget():
    """Half of digits (719 examples) is 6 iterations per epoch at batch 128; with the
    paper's budget an epoch still counts all 1,437 (12 iterations)."""
    subset = ["subset.keep=0.5"]
    assert _id(*subset, "subset.budget=epochs", "train.epochs='6it'") == \
        _id(*subset, "subset.budget=epochs", "train.epochs='1ep'")
    assert _id(*subset, "train.epochs='12it'") == _id(*subset, "train.epochs='1ep'")
    assert _id(*subset, "subset.budget=epochs", "train.epochs='12it'") != \
        _id(*subset, "subset.budget=epochs", "train.epochs='1ep'")
    # the scores' step counts the full training set, which the scores train on
    assert _id(*subset, "subset.budget=epochs", "subset.score_step='12it'") == \
        _id(*subset, "subset.budget=epochs", "subset.score_step='1ep'")


def test_settings_that_select_nothing_do_not_change_the_id():
    assert _id("subset.rule=random", "subset.score=grand") == _id()  # subset.keep = 1: everything
    assert _id("diet.score=grand", "diet.score_step='5ep'") == _id()  # no pre-training: no diet
    random = ["subset.keep=0.5", "subset.rule=random"]
    assert _id(*random, "subset.score=forgetting", "subset.score_step='9ep'") == _id(*random)
    assert _id("subset.keep=0.5", "subset.score=grand") != _id("subset.keep=0.5")  # a score rule needs them
    assert _id("subset.keep=0.5", "subset.rule=window") == _id("subset.keep=0.5")  # offset 0: the hardest
    assert _id("subset.keep=0.5", "subset.rule=window", "subset.offset=0.1") != _id("subset.keep=0.5")


def test_different_work_keeps_different_ids():
    assert _id("prune.rewind='11it'") != _id("prune.rewind='1ep'")
    assert _id("train.eval_examples=1436") != _id()  # one training example left out
    # The iterations per epoch come from the training examples left after the validation
    # split: 1437 - 237 = 1200 examples, 10 per epoch at batch 120.
    split = ["data.validation=237", "data.batch_size=120"]
    assert _id(*split, "prune.rewind='10it'") == _id(*split, "prune.rewind='1ep'")
    assert _id(*split, "prune.rewind='12it'") != _id(*split, "prune.rewind='1ep'")
    # eval_examples 1200 covers the training split but not a 1437-example one
    assert _id(*split, "train.eval_examples=1200") == _id(*split)
    assert _id("train.eval_examples=1200") != _id()


def test_canonical_leaves_a_config_without_training_examples_to_the_loader():
    config = load_config(None, ["data.validation=5000"])
    assert canonical(config, 1437, 360) == config


def test_defaults_and_platform_fields_do_not_change_the_id():
    base = Config()
    explicit_default = load_config(None, ["train.lr=0.1", "data.dataset=digits"])
    elsewhere = load_config(None, ["data.root=/some/where"])
    assert run_id(explicit_default) == run_id(base)
    assert run_id(elsewhere) == run_id(base)
    assert "root" in to_dict(elsewhere, platform=True)["data"]


def test_every_field_changes_the_id():
    changed = {
        "data": {"batch_size": 32}, "model": {"name": "conv2"}, "train": {"lr": 0.2},
    }
    ids = {run_id(from_dict({section: values})) for section, values in changed.items()}
    assert len(ids) == 3 and run_id(Config()) not in ids


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[data]\ndataset = "mnist"\n[train]\nepochs = "2ep100it"\nmilestones = []\n')
    config = load_config(path, ["train.lr=0.05", "model.widths=[64, 32]", "data.dataset=fashion_mnist"])
    assert config.data.dataset == "fashion_mnist"
    assert config.train.epochs == Duration(2, 100)
    assert config.train.lr == 0.05
    assert config.model.widths == (64, 32)


def test_int_accepted_for_float_and_duration():
    config = load_config(None, ["train.lr=1", "train.epochs=3"])
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.train.epochs == Duration(3)


def test_configs_are_frozen_and_replaceable():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.lr = 0.5
    variant = dataclasses.replace(config, train=dataclasses.replace(config.train, lr=0.5))
    assert variant.train.lr == 0.5 and config.train.lr == 0.1


@pytest.mark.parametrize("override, message", [
    ("train.lrr=0.1", r"unknown key 'train.lrr'; did you mean 'train.lr'\?"),
    ("trian.lr=0.1", r"unknown key 'trian'; did you mean 'train'\?"),
    ("model.name=resnet_20", r"did you mean 'resnet20'\?"),
    ("data.dataset=mnsit", r"data.dataset = 'mnsit' is not one of .*did you mean 'mnist'\?"),
    ("train.lr=fast", r"train.lr must be a number, got 'fast'"),
    ("data.batch_size=12.5", r"data.batch_size must be an integer"),
    ("train.nesterov=1", r"train.nesterov must be true or false"),
    ("model.widths=3", r"model.widths must be a list"),
    ("model.widths=[3, 'a']", r"model.widths\[1\] must be an integer"),
    ("train.epochs=10epochs", r"train.epochs: bad duration '10epochs'"),
    ("train.lr=-1", r"train.lr must be positive"),
    ("train.epochs='0ep'", r"train.epochs must be longer than 0it"),
    ("data.label_noise=1.5", r"data.label_noise must be in \[0, 1\)"),
    ("train.milestones=['1ep']", r"train.milestones only applies to train.schedule = 'step'"),
    ("lr=0.1", r"must look like section.key=value"),
    ("train.lr", r"must look like section.key=value"),
])
def test_bad_input_names_the_key(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, [override])


def test_an_unknown_key_far_from_any_lists_the_valid_ones():
    with pytest.raises(UserError, match=r"unknown key 'landscape.xyzzy'; valid keys in landscape: successive, siblings"):
        load_config(None, ["landscape.xyzzy=1"])


def test_prune_section():
    config = load_config(None, ["prune.levels=3", "prune.rewind='100it'", "prune.exclude=['fc.weight']",
                                "prune.layer_fractions={'fc2.weight' = 0.1}", "prune.baselines=['reinit']"])
    assert config.prune.layer_fractions == {"fc2.weight": 0.1}
    assert config.prune.rewind == Duration(0, 100)
    assert canonical_json(config) == ('{"prune":{"exclude":["fc.weight"],"layer_fractions":'
                                      '{"fc2.weight":0.1},"rewind":"100it"}}')


def test_levels_and_baselines_extend_a_run_without_changing_its_id():
    extended = load_config(None, ["prune.levels=5", "prune.baselines=['reinit', 'oneshot']"])
    assert run_id(extended) == run_id(Config())
    assert to_dict(extended, platform=True)["prune"] == {"baselines": ["reinit", "oneshot"], "levels": 5}


@pytest.mark.parametrize("override, message", [
    ("prune.fraction=1.0", "prune.fraction must be in (0, 1)"),
    ("prune.fraction=0", "prune.fraction must be in (0, 1)"),
    ("prune.levels=-1", "prune.levels must be >= 0"),
    ("prune.baselines=['reinit', 'reinit']", "lists a baseline twice"),
    ("prune.baselines=['rinit']", "did you mean 'reinit'?"),
    ("prune.layer_fractions={'fc.weight' = 2}", "prune.layer_fractions['fc.weight'] must be in (0, 1)"),
    ("prune.layer_fractions=[1]", "prune.layer_fractions must be a table of keys"),
    ("prune.retrain=rewinding", "is not one of 'rewind', 'lr_rewind', 'finetune'"),
])
def test_bad_prune_values(override, message):
    with pytest.raises(UserError) as error:
        load_config(None, [override])
    assert message in str(error.value)


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\nlr = 1")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(broken)
    scalar_section = tmp_path / "scalar.toml"
    scalar_section.write_text("train = 3")
    with pytest.raises(UserError, match="train must be a table"):
        load_config(scalar_section)


def test_to_dict_round_trips():
    config = load_config(None, ["train.schedule=step", "train.milestones=['80ep', '120ep']",
                                "data.label_noise=0.1"])
    assert from_dict(to_dict(config)) == config
    assert from_dict(to_dict(config, defaults=True, platform=True)) == config


def test_sections_are_typed():
    assert isinstance(Config().data, DataConfig)
    assert isinstance(Config().train, TrainConfig)


def test_registered_landscape_keys_round_trip():
    import landscape  # noqa: F401  (registers the measurements' keys, e.g. landscape.distance)

    on = load_config(None, ["landscape.distance=true"])
    assert on.landscape.extra("distance") is True and Config().landscape.extra("distance") is False
    assert from_dict(to_dict(on, defaults=True, platform=True)) == on
    assert from_dict(to_dict(Config(), defaults=True, platform=True)) == Config()
    assert load_config(None, ["landscape.distance=false"]) == Config()  # the default, stated
    assert run_id(on) == run_id(Config())  # a measurement is not part of the run
    with pytest.raises(UserError, match="landscape.distance must be true or false"):
        load_config(None, ["landscape.distance=3"])
    with pytest.raises(UserError, match="did you mean 'landscape.distance'"):
        load_config(None, ["landscape.distanse=true"])


def test_a_config_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[train]\nlr = 0.05\n".encode("utf-8"))
    assert load_config(path).train.lr == 0.05
