import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from imp.base.config import DataConfig, TrainConfig, load_config
from imp.data import load_dataset
from imp.base.duration import Duration
from imp.models import build_model
from imp.base.seeds import Seeds
from imp.train import EvaluationLog, Hook, Snapshots, evaluate, learning_rate, make_optimizer, train
from tests.conftest import require_mnist


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset(DataConfig(dataset="digits"), tmp_path_factory.mktemp("data"))


def small_mlp(data, seed=0):
    return build_model("mlp", data.input_shape, data.num_classes, widths=(32,),
                       generator=torch.Generator().manual_seed(seed))


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


# ---------------------------------------------------------------- schedules


def test_step_schedule_with_warmup():
    config = TrainConfig(lr=0.1, schedule="step", milestones=(Duration(2), Duration(1, 5)),
                         gamma=0.1, warmup=Duration(0, 4))
    rates = [learning_rate(s, config, iterations_per_epoch=10) for s in range(25)]
    assert rates[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert rates[4:15] == pytest.approx([0.1] * 11)
    assert rates[15:20] == pytest.approx([0.01] * 5)  # "1ep5it" = 15 iterations
    assert rates[20:] == pytest.approx([0.001] * 5)  # "2ep" = 20 iterations


def test_cosine_schedule_endpoints():
    config = TrainConfig(lr=0.4, schedule="cosine", epochs=Duration(0, 100))
    assert learning_rate(0, config, 7) == pytest.approx(0.4)
    assert learning_rate(50, config, 7) == pytest.approx(0.2)
    assert learning_rate(100, config, 7) == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule():
    assert learning_rate(12345, TrainConfig(lr=0.3), 10) == 0.3


# ---------------------------------------------------------------- seeds


def test_seeds_are_separate_and_derived_per_replicate():
    config = TrainConfig(seed=3)
    first, second = Seeds.from_config(config, 0), Seeds.from_config(config, 1)
    assert len({first.init, first.order, first.augment}) == 3
    assert first != second
    assert Seeds.from_config(config, 0) == first
    explicit = Seeds.from_config(TrainConfig(init_seed=7), 0)
    assert explicit.init == 7 and explicit.order == Seeds.from_config(TrainConfig(), 0).order


# ---------------------------------------------------------------- the loop


def test_evaluate_matches_a_direct_computation(digits):
    model = small_mlp(digits)
    model.train()
    result = evaluate(model, digits.test, batch_size=7)
    with torch.no_grad():
        logits = model.eval()(digits.test.x)
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, digits.test.y).item(), rel=1e-5)
    assert result["accuracy"] == pytest.approx((logits.argmax(1) == digits.test.y).float().mean().item())
    model.train()
    evaluate(model, digits.test)
    assert model.training


def test_training_learns_digits(digits):
    model = small_mlp(digits)
    config = TrainConfig(epochs=Duration(10), lr=0.05, momentum=0.9)
    losses = train(model, digits, config, 64, Seeds(0, 0, 0))
    assert len(losses) == 10 * math.ceil(len(digits.train) / 64)
    assert losses[-20:].mean() < 0.25 * losses[:20].mean()
    assert evaluate(model, digits.test)["accuracy"] > 0.93


def test_hooks_run_at_their_steps_and_snapshot_zero_is_the_init(digits):
    model = small_mlp(digits)
    initial = weights(model)
    snapshots, seen = Snapshots(), []
    config = TrainConfig(epochs=Duration(0, 30), lr=0.05)
    train(model, digits, config, 64, Seeds(0, 0, 0),
          hooks=[Hook(snapshots, steps=frozenset({0, 17, 30})),
                 Hook(lambda step, m: seen.append(step), every=10)])
    assert sorted(snapshots.states) == [0, 17, 30]
    assert seen == [0, 10, 20, 30]
    assert_same(snapshots.states[0], initial)
    assert_same(snapshots.states[30], weights(model))


def test_after_step_runs_after_every_update(digits):
    model = small_mlp(digits)
    mask = (torch.rand(model.fc1.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5).float()

    def apply_mask(m):
        m.fc1.weight.data.mul_(mask)

    config = TrainConfig(epochs=Duration(1), lr=0.1, momentum=0.9, weight_decay=1e-3)
    train(model, digits, config, 64, Seeds(0, 0, 0), after_step=apply_mask)
    assert torch.all(model.fc1.weight[mask == 0] == 0)
    assert torch.all(model.fc1.weight[mask == 1] != 0)


def test_same_seeds_same_weights_and_order_seed_matters(digits):
    config = TrainConfig(epochs=Duration(2), lr=0.05, momentum=0.9)
    runs = []
    for order in (0, 0, 1):
        model = small_mlp(digits)
        train(model, digits, config, 64, Seeds(0, order, 0))
        runs.append(weights(model))
    assert_same(runs[0], runs[1])
    assert not torch.equal(runs[0]["fc1.weight"], runs[2]["fc1.weight"])


def test_resuming_at_a_step_continues_order_schedule_and_augmentation(digits):
    """Training 0 -> k, then k -> n, equals training 0 -> n (plain SGD: no optimiser state)."""
    data = dataclasses.replace(digits, augment=True)
    config = TrainConfig(epochs=Duration(3), lr=0.05, schedule="step",
                         milestones=(Duration(1, 10),), gamma=0.5)
    straight = small_mlp(data)
    train(straight, data, config, 64, Seeds(0, 1, 2))
    resumed = small_mlp(data)
    train(resumed, data, config, 64, Seeds(0, 1, 2), end_step=31)
    train(resumed, data, config, 64, Seeds(0, 1, 2), start_step=31)
    assert_same(weights(straight), weights(resumed))
    other_augmentation = small_mlp(data)
    train(other_augmentation, data, config, 64, Seeds(0, 1, 3))
    assert not torch.equal(weights(straight)["fc1.weight"], weights(other_augmentation)["fc1.weight"])


def test_evaluation_log_records_every_split(digits):
    log = EvaluationLog({"train": digits.train, "test": digits.test})
    model = small_mlp(digits)
    train(model, digits, TrainConfig(epochs=Duration(0, 20)), 64, Seeds(0, 0, 0),
          hooks=[Hook(log, every=10)])
    assert log.rows["step"] == [0, 10, 20]
    assert set(log.rows) == {"step", "train_loss", "train_accuracy", "test_loss", "test_accuracy"}
    assert log.last()["test_accuracy"] == evaluate(model, digits.test)["accuracy"]


def test_bad_step_range(digits):
    with pytest.raises(ValueError):
        train(small_mlp(digits), digits, TrainConfig(), 64, Seeds(0, 0, 0), start_step=5, end_step=4)


def test_lenet_one_epoch_on_real_mnist(real_data_root, tmp_path):
    """Done-when criterion of the foundation: >= 95% test accuracy after one epoch."""
    require_mnist(real_data_root)
    data = load_dataset(DataConfig(dataset="mnist"), real_data_root)
    model = build_model("lenet_300_100", data.input_shape, data.num_classes,
                        generator=torch.Generator().manual_seed(0))
    train(model, data, TrainConfig(epochs=Duration(1), lr=0.1), 128, Seeds(0, 0, 0))
    accuracy = evaluate(model, data.test)["accuracy"]
    print(f"LeNet-300-100, one epoch of MNIST: test accuracy {accuracy:.4f}")
    assert accuracy >= 0.95


def test_optimizers_follow_the_config(digits):
    model = small_mlp(digits)
    sgd = make_optimizer(model.parameters(), TrainConfig(momentum=0.9, nesterov=True, weight_decay=5e-4))
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] is True
    assert sgd.defaults["weight_decay"] == 5e-4
    adam = make_optimizer(model.parameters(), TrainConfig(optimizer="adam", lr=1e-3))
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 1e-3
    model.fc1.bias.requires_grad_(False)
    frozen = make_optimizer(model.parameters(), TrainConfig())
    assert sum(len(g["params"]) for g in frozen.param_groups) == 3


def test_adam_trains(digits):
    model = small_mlp(digits)
    train(model, digits, TrainConfig(optimizer="adam", lr=1e-3, epochs=Duration(10)), 64, Seeds(0, 0, 0))
    assert evaluate(model, digits.test)["accuracy"] > 0.85  # 0.919 measured; chance is 0.1


def _fast_setup(tmp_path, *extra):
    from imp.base.config import load_config
    from imp.data import load_dataset
    from imp.models import build_initial_model

    config = load_config(None, ["model.name=resnet20", "model.width=4", "data.batch_size=64",
                                "train.momentum=0.9", "train.lr=0.01", *extra])
    data = load_dataset(config.data, tmp_path)
    model = build_initial_model(config, data, 0)
    return config, data, model


def test_bf16_autocast_keeps_batchnorm_and_the_loss_in_fp32(tmp_path):
    config, data, model = _fast_setup(tmp_path, "train.precision=bf16")
    seen = []
    batchnorm = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    batchnorm.register_forward_hook(lambda m, i, o: seen.append(("bn", o.dtype)))
    conv.register_forward_hook(lambda m, i, o: seen.append(("conv", o.dtype)))
    losses = train(model, data, config.train, 64, Seeds(0, 0, 0), end_step=10)
    assert torch.isfinite(losses).all() and losses.dtype == torch.float32
    assert ("conv", torch.bfloat16) in seen and ("bn", torch.float32) in seen
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay fp32
    reference = _fast_setup(tmp_path)[2]
    train(reference, data, config.train.__class__(**{**config.train.__dict__, "precision": "fp32"}), 64,
          Seeds(0, 0, 0), end_step=10)
    assert not torch.equal(next(model.parameters()), next(reference.parameters()))


def test_channels_last_and_compile_train_the_same_network(tmp_path, monkeypatch):
    import imp.train

    monkeypatch.setattr(imp.train, "COMPILE_BACKEND", "eager")  # the compile path, without a compiler
    results = {}
    for name, extra in [("plain", []), ("channels_last", ["train.channels_last=true"]),
                        ("compile", ["train.compile=true"])]:
        config, data, model = _fast_setup(tmp_path, *extra)
        # one update: later ones amplify rounding differences through BatchNorm (measured:
        # below 1e-5 after one step, 5e-4 after four), which says nothing about the format
        train(model, data, config.train, 64, Seeds(0, 0, 0), end_step=1)
        results[name] = {k: v.contiguous() for k, v in model.state_dict().items()}
    for key, value in results["plain"].items():
        assert torch.equal(results["compile"][key], value), key
        torch.testing.assert_close(results["channels_last"][key], value, rtol=1e-4, atol=1e-5)


def test_cuda_graph_mode_compiles_static_shapes_and_marks_every_step(tmp_path, monkeypatch):
    # torch.compile gets mode="reduce-overhead" and static shapes (the inductor backend is
    # not run here: the spy returns the model), and every update starts a new graph step.
    import imp.train

    seen, steps = [], []
    monkeypatch.setattr(imp.train, "COMPILE_BACKEND", "inductor")
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: seen.append(kwargs) or model)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: steps.append(1))
    config, data, model = _fast_setup(tmp_path, "train.compile=true", "train.compile_mode='reduce-overhead'")
    train(model, data, config.train, 64, Seeds(0, 0, 0), end_step=3)
    assert seen == [{"backend": "inductor", "mode": "reduce-overhead", "dynamic": False}] and len(steps) == 3
    config, data, model = _fast_setup(tmp_path, "train.compile=true")
    train(model, data, config.train, 64, Seeds(0, 0, 0), end_step=3)
    assert seen[1] == {"backend": "inductor", "mode": None, "dynamic": False} and len(steps) == 3


def test_compile_mode_needs_compile():
    from imp.base.errors import UserError

    with pytest.raises(UserError, match="train.compile_mode.*needs train.compile = true"):
        load_config(None, ["train.compile_mode='reduce-overhead'"])


def test_platform_options_are_provenance_not_identity(tmp_path):
    import json

    from imp.base import store
    from imp.base.config import load_config, platform_json, run_id
    from imp.trunk import run_imp

    base = ["model.widths=[8]", "train.epochs='10it'", "train.eval_every='10it'"]
    fast = load_config(None, base + ["train.precision=bf16"])
    assert run_id(fast) == run_id(load_config(None, base))
    assert json.loads(platform_json(fast))["train"]["precision"] == "bf16"
    run = run_imp(fast, tmp_path, tmp_path, torch.device("cpu"))
    stored = json.loads(store.read_h5(run.stage_file(0, "level_0"))["provenance"]["platform"])
    assert stored["train"] == {"batch_replicates": False, "channels_last": False, "compile": False,
                               "compile_mode": "default", "precision": "bf16"}
    assert stored["data"]["root"] == ""


def test_a_diverging_loss_stops_training_naming_the_step(tmp_path):
    from imp.base.errors import Diverged
    from imp.models import build_initial_model

    config = load_config(None, ["model.widths=[32, 16]", "train.epochs='60it'", "data.batch_size=64",
                                "train.lr=1e6", "train.momentum=0.9"])
    data = load_dataset(config.data, tmp_path)
    seeds = Seeds.from_config(config.train)
    model = build_initial_model(config, data, seeds.init)
    with pytest.raises(Diverged, match=r"^level 9: the training loss became nan at step \d+; lower train.lr "
                                       r"\(now 1e\+06\)"):
        train(model, data, config.train, 64, seeds, label="level 9")
