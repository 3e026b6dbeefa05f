"""Landscape measurements of a run's IMP levels, each stored as a stage of its replicate.

* **Successive levels** (``barrier_<L>.h5``): the error barrier on the linear path
  between the final networks of trunk levels L and L+1 (Frankle et al. 2020; Paul et
  al. 2023, "Unmasking the lottery ticket hypothesis").
* **Siblings / instability** (``sibling_<L>_<s>.h5``, ``instability_<L>.h5``): N copies of
  level L trained from the same start (the masked rewind point ``m_L * w_k`` at step k)
  under the same mask, with different data-order and augmentation seeds; the barriers
  between every pair, their mean (the instability), and optionally per-example midpoint
  barriers ``B_i`` averaged over pairs with the fraction of examples with ``B_i <= tau``.
  Copy 0 is the trunk's own level L whenever the trunk trained from exactly that start
  (every level >= 1, and level 0 when k = 0 or after diet pre-training); otherwise it is
  trained like the others with the replicate's own seeds.
* **Perturbations** (``perturb_<L>_<direction>_<size>.h5``): at level L's start
  ``m_L * w_k``, add ``size * ||m_L w_k - m_{L+1} w_k||`` times a unit direction on the
  coordinates ``m_L`` keeps: ``gaussian`` (isotropic) or ``pruned`` (the weights level L+1
  will prune, ``(m_L - m_{L+1}) * w_k``; size -1 removes them exactly). Train it with the
  trunk's seeds under ``m_L`` and measure the barrier to the trunk's level L.

Every measurement evaluates with the run's landscape settings (points, examples, BatchNorm
handling); they are recorded in ``run.h5`` the first time and later requests must match.
Callers hold the run's lock.
"""

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from imp import store
from imp.config import Config, canonical_json
from imp.data import Dataset, Split, fixed_subset
from imp.errors import UserError
from imp.level import State, build_initial_model, state_from_arrays, train_level
from imp.pruning import Mask
from imp.results import (barrier_stage, instability_stage, level_stage, pair_stage, perturb_stage,
                         sibling_stage)
from imp.seeds import derive_seed, generator
from imp.train import Seeds
from imp.trunk import Replicate
from landscape.lmc import curve_barriers, evaluate_path, midpoint_barriers

SETTINGS_KEY = "landscape_settings"


@dataclass(frozen=True)
class Probe:
    """The fixed examples every curve of a run is evaluated on."""

    splits: dict[str, Split]
    bn_examples: torch.Tensor
    points: int
    bn: str


def settings(config: Config) -> dict:
    ls = config.landscape
    return {"points": ls.points, "examples": ls.examples, "bn": ls.bn, "bn_examples": ls.bn_examples}


def claim_settings(run: store.RunDir, config: Config, device) -> None:
    """Record the run's evaluation settings, or check that they match what was recorded."""
    wanted = json.dumps(settings(config), sort_keys=True)
    stored = store.read_run(run).get(SETTINGS_KEY)
    if stored is not None and json.loads(stored) != json.loads(wanted):
        raise UserError(f"run {run.run_id} measured its landscape with {stored}; use the same "
                        "landscape.points/examples/bn/bn_examples, or another --out folder")
    if stored is None:
        store.create_run(run, canonical_json(config), device, extra={SETTINGS_KEY: wanted})


def make_probe(config: Config, data: Dataset) -> Probe:
    ls, seed = config.landscape, config.train.seed
    splits = {"train": fixed_subset(data.train, ls.examples, derive_seed(seed, "lmc", "train")),
              "test": fixed_subset(data.test, ls.examples, derive_seed(seed, "lmc", "test"))}
    bn = fixed_subset(data.train, ls.bn_examples, derive_seed(seed, "lmc", "bn")).x
    return Probe(splits, bn, ls.points, ls.bn)


def compare(config: Config, data: Dataset, probe: Probe, a: State, b: State) -> dict:
    """The curve and barriers on the linear path from network ``a`` to network ``b``."""
    model = build_initial_model(config, data, 0)
    device = data.train.x.device
    a = {k: v.to(device) for k, v in a.items()}
    b = {k: v.to(device) for k, v in b.items()}
    curve = evaluate_path(model, a, b, probe.splits, points=probe.points, bn=probe.bn,
                          bn_examples=probe.bn_examples)
    return {"curve": curve, "barrier": curve_barriers(curve)}


class Measurements:
    """The landscape stages of one replicate of a finished (or running) IMP run."""

    def __init__(self, config: Config, data: Dataset, run: store.RunDir, replicate: int):
        self.config, self.data, self.run, self.replicate = config, data, run, replicate
        self.trunk = Replicate(config, data, run, replicate)
        self.probe = make_probe(config, data)

    def has(self, stage: str) -> bool:
        return self.run.has_stage(self.replicate, stage)

    def weights(self, stage: str) -> State:
        return state_from_arrays(store.read_h5(self.run.stage_file(self.replicate, stage))["weights"])

    def write(self, stage: str, tree: dict) -> None:
        self.trunk.write(stage, tree)

    def successive(self, level: int) -> None:
        """Barrier between trunk levels ``level`` and ``level + 1`` (both must be finished)."""
        stage = barrier_stage(level)
        if self.has(stage) or not self.has(level_stage(level + 1)):
            return
        tree = compare(self.config, self.data, self.probe, self.weights(level_stage(level)),
                       self.weights(level_stage(level + 1)))
        self.write(stage, {"levels": np.array([level, level + 1]), **tree})

    def siblings(self, level: int, copies: int) -> None:
        """Train the sibling copies of ``level`` and measure the barriers between all pairs."""
        start, mask, train_config = self.trunk.start_of(level)
        trunk_tree = store.read_h5(self.run.stage_file(self.replicate, level_stage(level)), skip=("steps", "eval"))
        states = []
        for copy in range(copies):
            if copy == 0 and int(trunk_tree["start_step"]) == start.step:
                states.append(state_from_arrays(trunk_tree["weights"]))
                continue
            stage = sibling_stage(level, copy)
            if not self.has(stage):
                seeds = self.trunk.seeds if copy == 0 else _sibling_seeds(self.trunk.seeds, copy)
                tree, _ = train_level(self.config, self.data, seeds, start, mask, train_config=train_config,
                                      label=f"replicate {self.replicate} {stage}")
                tree["copy"] = copy
                self.write(stage, tree)
            states.append(self.weights(stage))
        stage = instability_stage(level)
        if self.has(stage):
            return
        pairs, per_example = {}, []
        for i in range(copies):
            for j in range(i + 1, copies):
                pairs[f"{i}_{j}"] = compare(self.config, self.data, self.probe, states[i], states[j])
                if self.config.landscape.per_example:
                    model = build_initial_model(self.config, self.data, 0)
                    per_example.append(midpoint_barriers(model, states[i], states[j], self.probe.splits["train"],
                                                         bn_examples=self.probe.bn_examples, bn=self.probe.bn))
        keys = next(iter(pairs.values()))["barrier"]
        mean = {key: {kind: float(np.mean([p["barrier"][key][kind] for p in pairs.values()]))
                      for kind in ("interpolated", "mean")} for key in keys}
        tree = {"copies": copies, "barrier": mean, "pairs": pairs}
        if per_example:
            values = np.mean(per_example, axis=0)
            tau = self.config.landscape.tau
            tree["per_example"] = {"midpoint_barrier": values, "tau": tau,
                                   "fraction_at_most_tau": float(np.mean(values <= tau)),
                                   "index": self.probe.splits["train"].index.cpu().numpy()}
        self.write(stage, tree)

    def perturb(self, level: int, direction: str, size: float) -> None:
        """Train level ``level`` from a perturbed start and measure its barrier to the trunk's."""
        stage = perturb_stage(level, direction, size)
        if self.has(stage):
            return
        start, mask, train_config = self.trunk.start_of(level)
        unit, scale = perturbation(start.state, mask, self.trunk.next_mask(level), direction,
                                   generator(self.trunk.seeds.init, "perturb", level, direction))
        state = dict(start.state)
        for name, delta in unit.items():
            state[name] = state[name] * mask[name] + size * scale * delta
        tree, _ = train_level(self.config, self.data, self.trunk.seeds, replace(start, state=state), mask,
                              train_config=train_config, label=f"replicate {self.replicate} {stage}")
        tree.update(compare(self.config, self.data, self.probe, tree["weights"],
                            self.weights(level_stage(level))))
        tree.update({"direction": direction, "size": size, "natural_scale": scale,
                     "perturbation_norm": abs(size) * scale})
        self.write(stage, tree)

    def pair(self, a: str, b: str) -> tuple[str, dict]:
        """The barrier between two stored networks: stage names of this replicate or paths of
        stage files (same architecture), stored as ``pair_<a>__<b>.h5`` in this replicate."""
        states, names = [], []
        for name in (a, b):
            path = Path(name) if name.endswith(".h5") else self.run.stage_file(self.replicate, name)
            if not path.is_file():
                raise UserError(f"{name}: no such stage file; give a stage of the run (e.g. level_3) or a .h5 path")
            tree = store.read_h5(path)
            if "weights" not in tree:
                raise UserError(f"{path} holds no network weights")
            states.append(state_from_arrays(tree["weights"]))
            # a file elsewhere is named by its run, replicate and stage
            inside = path.resolve().parent == self.run.replicate_dir(self.replicate).resolve()
            names.append(path.stem if inside else f"{path.parent.parent.name}.{path.parent.name}.{path.stem}")
        stage = pair_stage(*names)
        if not self.has(stage):
            try:
                tree = compare(self.config, self.data, self.probe, *states)
            except RuntimeError as error:  # load_state_dict on another architecture
                raise UserError(f"{a} and {b} do not fit this run's model: {str(error).splitlines()[0]}") from None
            self.write(stage, {"networks": f"{a} {b}", **tree})
        return stage, store.read_h5(self.run.stage_file(self.replicate, stage))


def _sibling_seeds(seeds: Seeds, copy: int) -> Seeds:
    return Seeds(seeds.init, derive_seed(seeds.order, "sibling", copy), derive_seed(seeds.augment, "sibling", copy))


def perturbation(state: State, mask: Mask, next_mask: Mask, direction: str,
                 rng: torch.Generator) -> tuple[dict[str, torch.Tensor], float]:
    """A unit-norm direction on the coordinates ``mask`` keeps, and the natural scale
    ``|| mask * w - next_mask * w ||`` (the norm of the weights the next level prunes)."""
    pruned = {name: state[name] * (mask[name] & ~next_mask[name]) for name in mask}
    scale = float(torch.sqrt(sum((p.double() ** 2).sum() for p in pruned.values())))
    if direction == "pruned":
        direction_vector = pruned
    elif direction == "gaussian":
        direction_vector = {name: torch.randn(state[name].shape, generator=rng) * mask[name] for name in mask}
    else:
        raise UserError(f"unknown perturbation direction {direction!r}; choose gaussian or pruned")
    norm = float(torch.sqrt(sum((d.double() ** 2).sum() for d in direction_vector.values())))
    if norm == 0:
        raise UserError("the perturbation direction is zero (nothing left to prune at this level)")
    return {name: (d / norm).to(state[name].dtype) for name, d in direction_vector.items()}, scale
