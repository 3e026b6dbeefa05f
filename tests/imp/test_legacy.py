"""Parameter names stored before named layers (commit 3b5bbd2): the old names, written out
here by hand from the old models (``git show 93c5522:imp/models.py``), the one-line
refusal, and the translation of a stored config's prune patterns."""

import pytest
import torch

from imp.base.config import load_config
from imp.base.errors import UserError
from imp.legacy import check_names, check_state, load_state, names_model, old_to_new
from imp.legacy_patterns import translate_prune
from imp.models import MODELS, build_model

# Sequential(Flatten, Linear, ReLU, Linear, ReLU, Linear)
MLP_32_16 = {"1.weight": "fc1.weight", "1.bias": "fc1.bias", "3.weight": "fc2.weight", "3.bias": "fc2.bias",
             "5.weight": "fc.weight", "5.bias": "fc.bias"}
# Sequential(Sequential(conv, ReLU, conv, ReLU, pool), Flatten, Linear, ReLU, Linear, ReLU, Linear)
CONV2 = {"0.0.weight": "conv1.weight", "0.0.bias": "conv1.bias", "0.2.weight": "conv2.weight",
         "0.2.bias": "conv2.bias", "2.weight": "fc1.weight", "2.bias": "fc1.bias", "4.weight": "fc2.weight",
         "4.bias": "fc2.bias", "6.weight": "fc.weight", "6.bias": "fc.bias"}
CONV6_SOME = {"0.5.weight": "conv3.weight", "0.7.bias": "conv4.bias", "0.10.weight": "conv5.weight",
              "0.12.bias": "conv6.bias", "6.weight": "fc.weight"}
# features = Sequential(conv, BN, ReLU, 9 blocks, pool, flatten); block = body (conv, BN, ReLU, conv, BN) + shortcut
RESNET20_SOME = {
    "features.0.weight": "conv1.weight",
    "features.1.running_mean": "bn1.running_mean",
    "features.1.num_batches_tracked": "bn1.num_batches_tracked",
    "features.3.body.0.weight": "layer1.0.conv1.weight",
    "features.3.body.1.bias": "layer1.0.bn1.bias",
    "features.3.body.3.weight": "layer1.0.conv2.weight",
    "features.3.body.4.running_var": "layer1.0.bn2.running_var",
    "features.6.shortcut.0.weight": "layer2.0.downsample.0.weight",
    "features.6.shortcut.1.num_batches_tracked": "layer2.0.downsample.1.num_batches_tracked",
    "features.9.shortcut.1.weight": "layer3.0.downsample.1.weight",
    "features.11.body.3.weight": "layer3.2.conv2.weight",
    "fc.weight": "fc.weight",
}
RESNET18_SOME = {"features.4.body.0.weight": "layer1.1.conv1.weight",
                 "features.5.shortcut.0.weight": "layer2.0.downsample.0.weight",
                 "features.10.body.4.running_mean": "layer4.1.bn2.running_mean"}
# features = Sequential(Sequential(conv, BN, ReLU for 64, pool, conv, BN, ReLU for 128, pool, ...), pool, flatten)
VGG11_SOME = {"features.0.0.weight": "features.0.weight", "features.0.1.running_mean": "features.1.running_mean",
              "features.0.4.bias": "features.4.bias", "features.0.8.weight": "features.8.weight",
              "features.0.25.weight": "features.25.weight",
              "features.0.26.num_batches_tracked": "features.26.num_batches_tracked", "fc.bias": "fc.bias"}


def mapping(name: str, shape=(3, 32, 32), widths=()) -> dict[str, str]:
    return old_to_new(build_model(name, shape, 10, widths=widths))


def test_the_old_names_written_by_hand():
    assert mapping("mlp", (1, 8, 8), (32, 16)) == MLP_32_16
    assert list(mapping("mlp", (1, 8, 8), (32, 16))) == list(MLP_32_16)  # registration order
    assert mapping("conv2") == CONV2
    assert CONV6_SOME.items() <= mapping("conv6").items()
    assert RESNET20_SOME.items() <= mapping("resnet20").items()
    assert RESNET18_SOME.items() <= mapping("resnet18").items()
    assert VGG11_SOME.items() <= mapping("vgg11").items()
    assert len(mapping("resnet20")) == 2 * 6 * 9 + 6 + 2 * 6 + 2  # convs, BNs (5 entries), 2 downsamples, fc


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_old_names_are_a_bijection_onto_the_state_dict(name):
    sizes = {"mlp": [{"widths": w} for w in [(), (5,), (7, 6, 5, 4)]],
             **{n: [{"width": w} for w in (0, 8)] for n in MODELS if n.startswith(("resnet", "vgg"))}}
    for size in sizes.get(name, [{}]):
        model = build_model(name, (3, 32, 32), 10, **size)
        renames = old_to_new(model)
        assert sorted(renames.values()) == sorted(model.state_dict())
        assert len(set(renames)) == len(model.state_dict())
    for dataset in ("cifar10", "imagefolder"):  # names do not depend on the input shape
        config = load_config(None, [f"model.name={name}", f"data.dataset={dataset}"])
        assert list(names_model(config).state_dict()) == list(build_model(name, (3, 32, 32), 10).state_dict())


def test_a_model_without_a_rule_is_a_bug():
    with pytest.raises(TypeError, match="no rule"):
        old_to_new(torch.nn.Linear(2, 2))


def test_check_names_refuses_old_names_in_one_line():
    model = build_model("mlp", (1, 8, 8), 10, widths=(32, 16))
    check_names(model.state_dict().keys(), model, "x.h5")
    with pytest.raises(UserError) as error:
        check_names(MLP_32_16, model, "results/abc/replicate_0/level_1.h5", "results/abc")
    message = str(error.value)
    assert "\n" not in message and "'1.weight'" in message and "`lth upgrade results/abc`" in message
    other = build_model("mlp", (1, 8, 8), 10, widths=(32,)).state_dict()
    with pytest.raises(UserError, match="does not fit .* missing 'fc2.weight', 'fc2.bias'; unexpected none") as error:
        check_names(other, model, "x.h5")
    assert "lth upgrade" not in str(error.value)


def test_load_state_loads_a_state_that_fits():
    model = build_model("mlp", (1, 8, 8), 10, widths=(32, 16))
    state = build_model("mlp", (1, 8, 8), 10, widths=(32, 16), generator=torch.Generator().manual_seed(1)).state_dict()
    load_state(model, state, "x.h5")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    renames = old_to_new(model)
    with pytest.raises(UserError, match="named before named layers"):
        load_state(model, {old: state[new] for old, new in renames.items()}, "x.h5")
    wider = build_model("mlp", (1, 8, 8), 10, widths=(64, 16)).state_dict()
    with pytest.raises(UserError, match="'fc1.weight' is 64x64 there, 32x64 here"):
        load_state(model, wider, "x.h5")
    check_state({k: v.numpy() for k, v in state.items()}, model, "x.h5")  # stored arrays, not loaded


def translate(name: str, prune: dict, widths=()) -> tuple[dict, list[str]]:
    model = build_model(name, (1, 32, 32), 10, widths=widths)
    config = {"model": {"name": name}, "prune": prune}
    translated, lines = translate_prune(config, model, old_to_new(model))
    assert translated["model"] == config["model"]
    return translated["prune"], lines


def test_exact_old_names_become_the_new_ones():
    prune, lines = translate("mlp", {"exclude": ["5.weight"], "levels": 3}, (16, 16))
    assert prune == {"exclude": ["fc.weight"], "levels": 3}
    assert lines == ["prune.exclude '5.weight' -> 'fc.weight'"]


def test_wildcards_become_a_simple_pattern_or_the_names():
    prune, _ = translate("conv2", {"layer_fractions": {"0.*": 0.1, "6.weight": 0.1}})
    assert prune == {"layer_fractions": {"conv*.weight": 0.1, "fc.weight": 0.1}}
    prune, _ = translate("resnet20", {"exclude": ["features.*.shortcut.0.weight", "fc.weight"]})
    assert prune == {"exclude": ["layer*.0.downsample.0.weight", "fc.weight"]}
    prune, lines = translate("mlp", {"layer_fractions": {"[13].weight": 0.1}}, (16, 16))
    assert prune == {"layer_fractions": {"fc1.weight": 0.1, "fc2.weight": 0.1}}  # "fc*" would take fc too
    prune, lines = translate("mlp", {"exclude": ["*.weight"]}, (16,))
    assert prune == {"exclude": ["*.weight"]} and lines == []


def test_overlapping_rates_keep_each_tensor_its_rate():
    # stored order: "1.weight" before "?.weight", so fc1 had 0.1; translated one by one,
    # "fc*.weight" would sort before "fc1.weight" and give it 0.3
    prune, lines = translate("mlp", {"layer_fractions": {"1.weight": 0.1, "?.weight": 0.3}}, (16, 16))
    assert prune == {"layer_fractions": {"fc1.weight": 0.1, "fc2.weight": 0.3, "fc.weight": 0.3}}
    assert "one rate per tensor" in lines[-1]


def test_a_config_without_patterns_is_unchanged():
    model = build_model("mlp", (1, 8, 8), 10)
    config = {"prune": {"levels": 2}}
    assert translate_prune(config, model, old_to_new(model)) == (config, [])
