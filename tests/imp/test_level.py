import torch

from imp.base.config import load_config
from imp.data import load_dataset
from imp.level import Start, copy_state, train_level
from imp.models import build_initial_model
from imp.pruning import full_mask, magnitude_prune, prunable_tensors
from imp.base.seeds import Seeds
from imp.train import Snapshots, Hook, train

TINY = ["model.name=resnet20", "model.width=4", "train.epochs='12it'", "train.eval_every='6it'",
        "data.batch_size=64", "train.momentum=0.9"]


def setup(tmp_path):
    config = load_config(None, TINY)
    data = load_dataset(config.data, tmp_path)
    seeds = Seeds.from_config(config.train)
    model = build_initial_model(config, data, seeds.init)
    return config, data, seeds, model


def test_snapshot_is_the_state_of_plain_training_at_step_k(tmp_path):
    config, data, seeds, model = setup(tmp_path)
    mask = full_mask(dict(model.named_parameters()), prunable_tensors(model))
    trained, snapshot = train_level(config, data, seeds, Start(copy_state(model), 0), mask, snapshot_at=5)
    reference = Snapshots()
    train(model, data, config.train, 64, seeds, hooks=[Hook(reference, steps=frozenset({5}))])
    assert set(snapshot) == set(reference.states[5])
    assert any("running_mean" in k for k in snapshot) and any("num_batches_tracked" in k for k in snapshot)
    for key, value in reference.states[5].items():
        assert torch.equal(snapshot[key], value), key
    for key, value in model.state_dict().items():  # and the end matches too
        assert torch.equal(trained.weights[key], value.cpu()), key
    assert trained.start_step == 0 and trained.iterations == 12 and trained.density == 1.0
    assert trained.eval["step"].tolist() == [0, 6, 12]


def test_a_level_starts_from_exactly_mask_times_the_start_state(tmp_path):
    config, data, seeds, model = setup(tmp_path)
    state = copy_state(model)
    names = prunable_tensors(model)
    mask = magnitude_prune(state, full_mask(state, names), 0.5)
    # Starting at the last step trains nothing: the result is the masked start itself.
    trained, _ = train_level(config, data, seeds, Start(state, 12), mask)
    for key, value in state.items():
        expected = value * mask[key] if key in mask else value
        assert torch.equal(trained.weights[key], expected), key
    assert trained.kept == sum(int(m.sum()) for m in mask.values())
    assert trained.prunable == sum(m.numel() for m in mask.values())
    assert trained.density == trained.kept / trained.prunable


def test_training_under_a_mask_keeps_pruned_weights_zero_and_starts_at_the_step(tmp_path):
    config, data, seeds, model = setup(tmp_path)
    state = copy_state(model)
    mask = magnitude_prune(state, full_mask(state, prunable_tensors(model)), 0.8, strategy="layerwise")
    trained, _ = train_level(config, data, seeds, Start(state, 4), mask)
    assert trained.train_loss.shape == (8,)
    assert trained.eval["step"].tolist() == [4, 6, 12]
    for name, keep in mask.items():
        assert torch.all(trained.weights[name][~keep] == 0)
        assert not torch.equal(trained.weights[name][keep], state[name][keep])
