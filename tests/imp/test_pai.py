"""Pruning at initialisation (SNIP, GraSP, SynFlow) against naive references written here,
on a small network, and SynFlow's point: a path through every layer at extreme sparsity."""

import pytest
import torch
from torch import nn

from imp.pai import SYNFLOW_ROUNDS, group_counts, grasp, keep_highest, snip, synflow, synflow_scores
from imp.pruning import full_mask, magnitude_prune

NAMES = ["0.weight", "2.weight"]


def small(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def flat_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, temperature: float = 1.0):
    """The mean cross-entropy as a function of the two weight matrices flattened into one
    vector, written out by hand (float64): an independent forward pass."""
    b1, b2 = model[0].bias.detach().double(), model[2].bias.detach().double()

    def loss(theta: torch.Tensor) -> torch.Tensor:
        w1, w2 = theta[:12].reshape(3, 4), theta[12:].reshape(2, 3)
        logits = (torch.tanh(x.double() @ w1.T + b1) @ w2.T + b2) / temperature
        return (torch.logsumexp(logits, 1) - logits[torch.arange(len(y)), y]).mean()

    theta = torch.cat([model[0].weight.detach().double().reshape(-1), model[2].weight.detach().double().reshape(-1)])
    return loss, theta


def test_snip_is_the_gradient_times_the_weight():
    model, x, y = small(), torch.randn(8, 4), torch.randint(0, 2, (8,))
    loss, theta = flat_loss(model, x, y)
    g = torch.autograd.functional.jacobian(loss, theta)
    got = snip(model, x, y, NAMES)
    expected = (g * theta).abs()
    torch.testing.assert_close(torch.cat([got[n].reshape(-1) for n in NAMES]), expected, rtol=1e-10, atol=1e-14)


def test_grasp_is_the_weight_times_the_hessian_gradient_product_at_temperature_200():
    model, x, y = small(1), torch.randn(8, 4), torch.randint(0, 2, (8,))
    loss, theta = flat_loss(model, x, y, temperature=200.0)
    g = torch.autograd.functional.jacobian(loss, theta)
    h = torch.autograd.functional.hessian(loss, theta)  # the explicit 18 x 18 Hessian
    got = grasp(model, x, y, NAMES)
    torch.testing.assert_close(torch.cat([got[n].reshape(-1) for n in NAMES]), theta * (h @ g), rtol=1e-8,
                               atol=1e-20)


def test_synflow_is_the_synaptic_flow_through_the_absolute_network():
    """A linear stack written out: R = 1^T |W2| (|W1| 1 + |b1|) + 1^T |b2|, with the masks
    applied, so dR/dW1 = outer(1^T |W2|, 1) and dR/dW2 = outer(1, |W1| 1 + |b1|)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    mask = {"0.weight": torch.rand(3, 4) > 0.3, "1.weight": torch.rand(2, 3) > 0.3}
    w1 = model[0].weight.detach().double().abs() * mask["0.weight"]
    w2 = model[1].weight.detach().double().abs() * mask["1.weight"]
    b1 = model[0].bias.detach().double().abs()
    hidden = w1 @ torch.ones(4, dtype=torch.float64) + b1  # the flow into each hidden unit
    down = torch.ones(2, dtype=torch.float64) @ w2  # dR/d(hidden)
    expected = {"0.weight": torch.outer(down, torch.ones(4, dtype=torch.float64)) * w1,
                "1.weight": torch.outer(torch.ones(2, dtype=torch.float64), hidden) * w2}
    got = synflow_scores(model, (4,), mask)
    for name in mask:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-12, atol=0)


def test_keep_highest_keeps_each_groups_count_and_breaks_ties_by_position():
    start = {"a": torch.ones(2, 3, dtype=torch.bool), "b": torch.ones(4, dtype=torch.bool)}
    importance = {"a": torch.tensor([[1.0, 5.0, 5.0], [0.0, 2.0, 7.0]]), "b": torch.tensor([5.0, 3.0, 9.0, 5.0])}
    globally = keep_highest(importance, start, [(["a", "b"], 4)])  # 9, 7, then the first two 5s (a's)
    assert globally["a"].tolist() == [[False, True, True], [False, False, True]]
    assert globally["b"].tolist() == [False, False, True, False]
    layerwise = keep_highest(importance, start, [(["a"], 2), (["b"], 1)])
    assert int(layerwise["a"].sum()) == 2 and layerwise["b"].tolist() == [False, False, True, False]


def test_synflow_keeps_a_path_through_every_layer_where_magnitude_pruning_cuts_one():
    """A 4-layer MLP without biases whose second layer has tiny weights: at 0.1% density
    global magnitude pruning empties that layer (the network is cut), SynFlow keeps a path
    through all (Tanaka et al. 2020, Theorem 3: without biases the flow through every layer
    is the same, so no layer can lose all of it first)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(100, 100, bias=False), nn.ReLU(), nn.Linear(100, 100, bias=False), nn.ReLU(),
                          nn.Linear(100, 100, bias=False), nn.ReLU(), nn.Linear(100, 10, bias=False))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)
    names = [f"{i}.weight" for i in (0, 2, 4, 6)]
    weights = {name: p.detach() for name, p in model.named_parameters() if name in names}
    start = full_mask(weights, names)
    total = sum(int(m.numel()) for m in start.values())
    target_count = round(0.001 * total)  # 31 of 31,000
    magnitude = magnitude_prune(weights, start, 1 - target_count / total)
    assert int(magnitude["2.weight"].sum()) == 0  # magnitude cuts the network
    target = {**{n: torch.zeros_like(start[n]) for n in names}}
    target["0.weight"] = target["0.weight"].clone()
    target["0.weight"].view(-1)[:target_count] = True  # only the total matters for a global group
    kept = synflow(model, (100,), start, group_counts(start, target, "global"))
    assert sum(int(m.sum()) for m in kept.values()) == target_count
    assert all(int(kept[n].sum()) > 0 for n in names), {n: int(kept[n].sum()) for n in names}
    assert SYNFLOW_ROUNDS == 100


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_data_scores_are_float64_and_leave_the_model_untouched(method):
    model, x, y = small(4), torch.randn(6, 4), torch.randint(0, 2, (6,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = (snip if method == "snip" else grasp)(model, x, y, NAMES)
    assert all(v.dtype == torch.float64 for v in got.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_grasp_counts_the_unpruned_layers_in_h_g():
    """Scoring only the first layer (the output layer left unpruned) gives the first layer's
    entries of the full product: g and H span every layer's weights."""
    model, x, y = small(5), torch.randn(8, 4), torch.randint(0, 2, (8,))
    both = grasp(model, x, y, NAMES)
    first = grasp(model, x, y, NAMES[:1])
    assert list(first) == NAMES[:1]
    torch.testing.assert_close(first[NAMES[0]], both[NAMES[0]], rtol=0, atol=0)
