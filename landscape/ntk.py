"""The velocity of the data-dependent neural tangent kernel (Paul, Ganguli and Dziugaite
2021, "Deep learning on a data diet", section 6 and Fig. 3; Fort et al. 2020).

For a group of n training examples and the network's C logits, the empirical NTK at step
t is the nC x nC matrix ``K_t = J_t diag(m) J_t^T``, with ``J_t`` the Jacobian of the
logits (``f(x_1)_1 .. f(x_n)_C``) with respect to every trainable parameter at step t and
m the level's mask (1 for unpruned weights and every bias and BatchNorm parameter): the
kernel of the network that is trained. BatchNorm is in eval mode. It is computed exactly
in float64: one vector-Jacobian product gives the rows ``J^T e_k``, and a
Jacobian-vector product of each (vectorised over chunks of 64) gives the columns
``K e_k``; nothing of size nC x P is held.

Its *kernel distance* between checkpoints s < t is ``1 - <K_s, K_t>_F / (|K_s|_F |K_t|_F)``
(0 for kernels equal up to scale), and the *velocity* is that distance per step,
``/ (t - s)``. The level is trained again from its start with the trunk's seeds (the same
data order and augmentation, so the same trajectory), and the kernels are taken at
``landscape.ntk_points`` evenly spaced steps from the start to the end of training, for
three groups of ``landscape.ntk_examples`` examples: the lowest and highest scores
(``landscape.ntk_score`` after ``landscape.ntk_score_step``, mean of
``landscape.ntk_score_runs`` runs, ties by position) and a seeded random sample.

The paper finds the kernel moves faster on high-score examples, and under label noise
slower again for the very highest (the mislabelled ones). Measured by ``lth ntk RUN`` or
with ``landscape.ntk = true`` during ``lth run``; figure ``ntk_velocity``.
"""

import copy
import warnings

import numpy as np
import torch
from torch.func import functional_call, jvp, vjp, vmap

from imp.base.duration import Duration
from imp.base.errors import UserError
from imp.base.seeds import derive_seed
from imp.level import start_model
from imp.pruning import MaskEnforcer
from imp.train import Hook, train
from landscape.groups import SCORES, ranked

KEYS = {"ntk": (bool, False), "ntk_examples": (int, 100), "ntk_points": (int, 11), "ntk_score": (str, "el2n"),
        "ntk_score_step": (str, "2ep"), "ntk_score_runs": (int, 1)}
CHUNK = 64  # tangents per vectorised Jacobian-vector product


def variants(ls, level: int) -> list[dict]:
    """One variant at every level when ``landscape.ntk`` is on; its settings checked first."""
    if not ls.extra("ntk"):
        return []
    examples, points, score = ls.extra("ntk_examples"), ls.extra("ntk_points"), ls.extra("ntk_score")
    if not 1 <= examples <= 1000:
        raise UserError(f"landscape.ntk_examples = {examples} must be from 1 to 1000 (the kernel is "
                        "(examples x classes) squared, in float64)")
    if not 2 <= points <= 101:
        raise UserError(f"landscape.ntk_points = {points} must be from 2 to 101")
    if score not in SCORES:
        raise UserError(f"landscape.ntk_score = {score!r} is not one of {', '.join(map(repr, SCORES))}")
    if ls.extra("ntk_score_runs") < 1:
        raise UserError("landscape.ntk_score_runs must be at least 1")
    return [{"examples": examples, "points": points, "score": score,
             "score_step": str(Duration.parse(ls.extra("ntk_score_step"))), "score_runs": ls.extra("ntk_score_runs")}]


def kernel(model: torch.nn.Module, x: torch.Tensor, mask: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``J diag(m) J^T`` (float64, nC x nC) of ``model``'s logits on ``x`` in eval mode, J
    over every trainable parameter, m = ``mask`` (1 where a parameter has none)."""
    model = copy.deepcopy(model).double().eval()
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    keep = {name: (mask[name].to(p.device, torch.float64) if mask and name in mask else None)
            for name, p in params.items()}
    x = x.to(torch.float64)

    def logits(p):
        return functional_call(model, {**p, **buffers}, (x,)).reshape(-1)

    out, pull = vjp(logits, params)
    size = out.numel()
    result = torch.empty(size, size, dtype=torch.float64)
    push = vmap(lambda tangent: jvp(logits, (params,), (tangent,))[1])
    for start in range(0, size, CHUNK):
        rows = torch.arange(start, min(start + CHUNK, size))
        basis = torch.zeros(len(rows), size, dtype=torch.float64, device=out.device)
        basis[torch.arange(len(rows)), rows] = 1.0
        (tangents,) = vmap(pull)(basis)  # J^T e_k, one per row
        tangents = {name: t if keep[name] is None else t * keep[name] for name, t in tangents.items()}
        with warnings.catch_warnings():  # forward-mode AD's one-time torch.jit.script: torch's matter
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
            result[:, rows] = push(tangents).T.cpu()
    return result


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kernel distance ``1 - <a, b>_F / (|a|_F |b|_F)``: 0 for kernels equal up to scale."""
    return float(1.0 - (a * b).sum() / (torch.linalg.norm(a) * torch.linalg.norm(b)))


def groups(context, settings: dict) -> dict[str, np.ndarray]:
    """Positions in the training split of the low, high and random groups."""
    data = context.data
    count = settings["examples"]
    if 2 * count > len(data.train):
        raise UserError(f"landscape.ntk_examples = {count}: the low and high groups need {2 * count} training "
                        f"examples, the run has {len(data.train)}; choose fewer")
    rng = np.random.default_rng(derive_seed(context.config.train.seed, "ntk", "random"))
    return {**ranked(context, settings, count), "random": np.sort(rng.choice(len(data.train), count, replace=False))}


def compute(context, level: int, settings: dict) -> dict:
    """Train level ``level`` again from its start, taking the groups' kernels on the way."""
    chosen = groups(context, settings)
    trunk, config, data = context.trunk, context.config, context.data
    start, mask, train_config = trunk.start_of(level)
    end = trunk.plan.iterations
    steps = sorted({int(round(s)) for s in np.linspace(start.step, end, settings["points"])})
    inputs = {name: data.train.x[positions] for name, positions in chosen.items()}
    found = {name: {"distance": [], "norm": [], "trace": []} for name in chosen}
    previous: dict[str, torch.Tensor] = {}

    def take(step: int, model: torch.nn.Module) -> None:
        for name, x in inputs.items():
            k = kernel(model, x, mask)
            found[name]["norm"].append(float(torch.linalg.norm(k)))
            found[name]["trace"].append(float(torch.trace(k)))
            if name in previous:
                found[name]["distance"].append(distance(previous[name], k))
            previous[name] = k
        if context.report is not None:
            context.report(f"replicate {context.replicate} level {level} ntk: kernels at step {step}")

    model = start_model(config, data, trunk.seeds, start, mask)
    train(model, data, train_config, config.data.batch_size, trunk.seeds, start_step=start.step, end_step=end,
          hooks=[Hook(take, steps=frozenset(steps))], after_step=MaskEnforcer(model, mask))
    gaps = np.diff(np.asarray(steps, dtype=np.float64))
    out = {"steps": np.asarray(steps), "groups": {}}
    for name, values in found.items():
        d = np.asarray(values["distance"])
        out["groups"][name] = {"index": data.train.index.cpu().numpy()[chosen[name]], "distance": d,
                               "velocity": d / gaps, "norm": np.asarray(values["norm"]),
                               "trace": np.asarray(values["trace"])}
    return out


def columns(tree: dict) -> dict:
    """Each group's mean velocity over training (kernel distance per step)."""
    return {f"ntk_velocity_{name}": float(np.mean(group["velocity"])) for name, group in tree["groups"].items()}
