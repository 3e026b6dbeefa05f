"""Landscape measurements of a run's IMP levels, and the networks they train.

Each function here computes one measurement's stored tree from a :class:`Context` (one
replicate of a run), a level and the measurement's settings; :mod:`landscape.registry`
names, stores and reuses the results.

* **Successive levels** (``successive``): the error barrier on the linear path between
  the final networks of trunk levels L and L+1 (Frankle et al. 2020; Paul et al. 2023,
  "Unmasking the lottery ticket hypothesis").
* **Siblings / instability** (``instability``): N copies of level L trained from the same
  start (the masked rewind point ``m_L * w_k`` at step k) under the same mask, with
  different data-order and augmentation seeds; the barriers between every pair, their
  mean (the instability), and optionally per-example midpoint barriers ``B_i`` averaged
  over pairs with the fraction of examples with ``B_i <= tau``. Copy 0 is the trunk's own
  level L whenever the trunk trained from exactly that start (every level >= 1, and
  level 0 when k = 0 or after diet pre-training); otherwise it is trained like the others
  with the replicate's own seeds. The copies are network stages ``sibling_<L>_<s>``,
  shared by every instability measurement of the level. With ``train.batch_replicates``
  the copies not yet stored are trained together (:func:`imp.batched.train_levels_batched`),
  from the same start and mask as one at a time, agreeing with it up to float rounding.
* **Perturbations** (``perturb``): at level L's start ``m_L * w_k``, add
  ``size * ||m_L w_k - m_{L+1} w_k||`` times a unit direction on the coordinates ``m_L``
  keeps: ``gaussian`` (isotropic) or ``pruned`` (the weights level L+1 will prune,
  ``(m_L - m_{L+1}) * w_k``; size -1 removes them exactly). Train it with the trunk's
  seeds under ``m_L`` (network stage ``perturbed_<L>_<direction>_<size>``) and measure
  the barrier to the trunk's level L.
* **Pairs** (``pair``): the barrier between any two stored networks.

Every curve is evaluated with the measurement's own settings (points, examples, BatchNorm
handling), which are part of its identity. Callers hold the run's lock.
"""

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from imp.base import store
from imp.base.config import Config, LandscapeConfig, TrainConfig
from imp.data import Dataset, Split, fixed_subset
from imp.base.errors import UserError
from imp.batched import train_levels_batched
from imp.level import Start, State, train_level
from imp.models import build_initial_model
from imp.base.names import level_stage, perturbed_stage, sibling_stage
from imp.pruning import Mask
from imp.base.record import TrainedLevel
from imp.base.seeds import Seeds, derive_seed, generator
from imp.trunk import Replicate
from landscape import align
from landscape.lmc import curve_barriers, evaluate_path, midpoint_barriers
from landscape.repair import repaired_path


def curve_settings(ls: LandscapeConfig) -> dict:
    """The settings every raw curve's numbers depend on (bn_examples only when re-estimating)."""
    out = {"points": ls.points, "examples": ls.examples, "bn": ls.bn}
    if ls.bn == "reestimate":
        out["bn_examples"] = ls.bn_examples
    return out


def curve_variants(ls: LandscapeConfig) -> list[dict]:
    """The settings of each curve asked for between two networks: the raw one; with
    ``landscape.align`` also the aligned one; with ``landscape.repair`` also REPAIR's (of
    the aligned pair, or of the raw one without alignment). Each is its own result; the
    raw one's settings are those of :func:`curve_settings`, so earlier results still count."""
    raw = curve_settings(ls)
    out = [raw]
    if ls.align != "none":
        out.append({**raw, "align": ls.align, **({"bn_examples": ls.bn_examples} if ls.align == "activations" else {})})
    if ls.repair:
        out.append({**out[-1], "repair": True, "bn_examples": ls.bn_examples})
    return out


def variant_name(settings: dict) -> str:
    """``raw``, ``weights``, ``activations``, ``raw+repair`` or e.g. ``weights+repair``."""
    return settings.get("align", "raw") + ("+repair" if settings.get("repair") else "")


@dataclass(frozen=True)
class Probe:
    """The fixed examples a curve is evaluated on, and how."""

    splits: dict[str, Split]
    bn_examples: torch.Tensor  # also the batch of activation matching and REPAIR's statistics
    points: int
    bn: str
    align: str = "none"  # align network B to A first: "weights" or "activations" (landscape.align)
    repair: bool = False  # REPAIR the interpolated networks (landscape.repair)


def make_probe(config: Config, data: Dataset, settings: dict | None = None) -> Probe:
    """The probe of ``settings`` (:func:`curve_settings`; default: the config's)."""
    settings = settings or curve_settings(config.landscape)
    seed, examples = config.train.seed, settings["examples"]
    splits = {"train": fixed_subset(data.train, examples, derive_seed(seed, "lmc", "train")),
              "test": fixed_subset(data.test, examples, derive_seed(seed, "lmc", "test"))}
    bn_count = settings.get("bn_examples", config.landscape.bn_examples)
    bn = fixed_subset(data.train, bn_count, derive_seed(seed, "lmc", "bn")).x
    return Probe(splits, bn, settings["points"], settings["bn"], settings.get("align", "none"),
                 bool(settings.get("repair", False)))


def compare(config: Config, data: Dataset, probe: Probe, a: State, b: State) -> dict:
    """The curve and barriers on the linear path from network ``a`` to network ``b`` (to
    ``b`` aligned to ``a`` first, with ``probe.align``; REPAIRed, with ``probe.repair``)."""
    model = build_initial_model(config, data, 0)
    device = data.train.device
    a = {k: v.to(device) for k, v in a.items()}
    b, tree = aligned(model, probe, a, {k: v.to(device) for k, v in b.items()})
    if probe.repair:
        curve = repaired_path(model, a, b, probe.splits, points=probe.points, bn=probe.bn,
                              bn_examples=probe.bn_examples, repair_examples=probe.bn_examples)
    else:
        curve = evaluate_path(model, a, b, probe.splits, points=probe.points, bn=probe.bn,
                              bn_examples=probe.bn_examples)
    return {**tree, **({"repair": True} if probe.repair else {}), "curve": curve, "barrier": curve_barriers(curve)}


def aligned(model: torch.nn.Module, probe: Probe, a: State, b: State) -> tuple[State, dict]:
    """Network ``b`` with its hidden units permuted to match ``a``'s as ``probe.align``
    says (:mod:`landscape.align`), and what to store of it: the method and, per
    permutation group, the fraction of units moved. ``b`` itself with ``align = "none"``."""
    if probe.align == "none":
        return b, {}
    spec = align.permutation_spec(model)
    if probe.align == "weights":
        perms = align.weight_matching(spec, a, b)
    else:
        perms = align.activation_matching(model, spec, a, b, probe.bn_examples)
    moved = {group: float((perm.cpu() != torch.arange(len(perm))).double().mean()) for group, perm in perms.items()}
    return align.permute_state(spec, b, perms), {"align": probe.align, "moved": moved}


class Context:
    """One replicate of a finished (or running) IMP run, as the measurements see it.

    ``known`` are trained levels already at hand (the trunk passes the one it has just
    trained), so they are not read back from their files."""

    def __init__(self, config: Config, data: Dataset, run: store.RunDir, replicate: int,
                 known: dict[int, TrainedLevel] | None = None, report: Callable[[str], None] | None = None):
        self.config, self.data, self.run, self.replicate = config, data, run, replicate
        self.trunk = Replicate(config, data, run, replicate)
        self.levels = dict(known or {})
        self.report = report  # takes a progress line per network trained and measurement made

    def has(self, stage: str) -> bool:
        return self.run.has_stage(self.replicate, stage)

    def read(self, stage: str) -> dict:
        """A measurement's stored tree (networks are read as records: :meth:`network`)."""
        return store.read_h5(self.run.stage_file(self.replicate, stage))

    def level(self, level: int) -> TrainedLevel:
        """Trunk level ``level``, read once."""
        if level not in self.levels:
            self.levels[level] = self.trunk.read(level_stage(level))
        return self.levels[level]

    def network(self, stage: str) -> TrainedLevel:
        return self.trunk.read(stage)

    def write(self, stage: str, tree: dict) -> None:
        self.trunk.write(stage, tree)

    def compare(self, settings: dict, a: State, b: State) -> dict:
        return compare(self.config, self.data, make_probe(self.config, self.data, settings), a, b)

    def trained(self, stage: str, start, mask: Mask, train_config, seeds: Seeds, **extra) -> TrainedLevel:
        """Network stage ``stage``: stored, or trained now and stored. A stored one must have
        been trained with ``extra`` (names round numbers to 6 digits: 0.1234567 and
        0.1234568 share a name, and must not share a network)."""
        if self.has(stage):
            return self._stored(stage, extra)
        trained, _ = train_level(self.config, self.data, seeds, start, mask, train_config=train_config,
                                 label=f"replicate {self.replicate} {stage}")
        return self._keep(stage, trained, extra)

    def _stored(self, stage: str, extra: dict) -> TrainedLevel:
        """Stored network stage ``stage``, refused unless it was trained with ``extra``."""
        stored = self.network(stage)
        for key, value in extra.items():
            if key in stored.extra and stored.extra[key] != value:
                raise UserError(f"{self.run.stage_file(self.replicate, stage)} holds a network trained with "
                                f"{key} = {stored.extra[key]}, not {value}; ask for values that differ "
                                "in their first 6 digits")
        return stored

    def _keep(self, stage: str, trained: TrainedLevel, extra: dict) -> TrainedLevel:
        """Store a network just trained as stage ``stage``, with ``extra``, and report it."""
        trained = trained.with_extra(**extra)
        self.write(stage, trained.tree())
        if self.report is not None:
            self.report(f"replicate {self.replicate} {stage}: test accuracy "
                        f"{trained.final['test_accuracy']:.2%}, {trained.train_seconds:.0f} s")
        return trained

    def sibling(self, level: int, copy: int) -> State:
        """Copy ``copy`` of level ``level`` (see the module docstring)."""
        return self._copy(level, copy, *self.trunk.start_of(level))

    def siblings(self, level: int, copies: int) -> list[State]:
        """Copies ``0 .. copies - 1`` of level ``level``, as :meth:`sibling` gives each; with
        ``train.batch_replicates`` those not stored are trained together."""
        if not self.config.train.batch_replicates:
            return [self.sibling(level, copy) for copy in range(copies)]
        start, mask, train_config = self.trunk.start_of(level)
        missing = [copy for copy in range(copies)
                   if not self._is_trunk(level, copy, start) and not self.has(sibling_stage(level, copy))]
        made = {}
        if len(missing) > 1:  # one alone trains as sibling() trains it
            stages = [sibling_stage(level, copy) for copy in missing]
            results = train_levels_batched(self.config, self.data, [self._seeds(copy) for copy in missing],
                                           [start] * len(missing), [mask] * len(missing), train_config=train_config,
                                           label=f"replicate {self.replicate} {', '.join(stages)}")
            made = {copy: self._keep(stage, trained, {"copy": copy}).weights
                    for copy, stage, (trained, _) in zip(missing, stages, results)}
        return [made[copy] if copy in made else self._copy(level, copy, start, mask, train_config)
                for copy in range(copies)]

    def _copy(self, level: int, copy: int, start: Start, mask: Mask, train_config: TrainConfig) -> State:
        """Copy ``copy`` of level ``level``, trained from ``start`` under ``mask``: the trunk's
        level itself, stored, or trained now and stored."""
        if self._is_trunk(level, copy, start):
            return self.level(level).weights
        return self.trained(sibling_stage(level, copy), start, mask, train_config, self._seeds(copy),
                            copy=copy).weights

    def _is_trunk(self, level: int, copy: int, start: Start) -> bool:
        """Whether copy ``copy`` is the trunk's level itself: copy 0, when the trunk trained
        level ``level`` from ``start``'s step."""
        return copy == 0 and self.level(level).start_step == start.step

    def _seeds(self, copy: int) -> Seeds:
        """The seeds of sibling copy ``copy``: the replicate's own for copy 0."""
        return self.trunk.seeds if copy == 0 else _sibling_seeds(self.trunk.seeds, copy)


def successive(context: Context, level: int, settings: dict) -> dict:
    """Barrier between trunk levels ``level`` and ``level + 1`` (both finished)."""
    tree = context.compare(settings, context.level(level).weights, context.level(level + 1).weights)
    return {"levels": np.array([level, level + 1]), **tree}


def _variant(settings: dict) -> dict:
    """What a result stores of its variant: the alignment method and REPAIR, when used."""
    return {key: settings[key] for key in ("align", "repair") if key in settings}


def _suffix(tree: dict) -> str:
    """The ``lth show`` column suffix of a result's variant: "" raw, e.g. "_weights_repair"."""
    parts = ([str(tree["align"])] if "align" in tree else []) + (["repair"] if bool(tree.get("repair", False)) else [])
    return "".join(f"_{part}" for part in parts)


def successive_columns(tree: dict) -> dict:
    return {f"barrier_to_next_test_error{_suffix(tree)}": tree["barrier"]["test_error"]["interpolated"]}


def instability(context: Context, level: int, settings: dict) -> dict:
    """Train the sibling copies of ``level`` and measure the barriers between all pairs."""
    copies = settings["copies"]
    states = context.siblings(level, copies)
    probe = make_probe(context.config, context.data, settings)
    pairs, per_example = {}, []
    for i in range(copies):
        for j in range(i + 1, copies):
            pairs[f"{i}_{j}"] = compare(context.config, context.data, probe, states[i], states[j])
            if settings["per_example"]:
                model = build_initial_model(context.config, context.data, 0)
                b, _ = aligned(model, probe, states[i], states[j])
                per_example.append(midpoint_barriers(model, states[i], b, probe.splits["train"],
                                                     bn_examples=probe.bn_examples, bn=probe.bn))
    keys = next(iter(pairs.values()))["barrier"]
    mean = {key: {kind: float(np.mean([p["barrier"][key][kind] for p in pairs.values()]))
                  for kind in ("interpolated", "mean")} for key in keys}
    tree = {"copies": copies, "barrier": mean, "pairs": pairs, **_variant(settings)}
    if per_example:
        values = np.mean(per_example, axis=0)
        tau = settings["tau"]
        tree["per_example"] = {"midpoint_barrier": values, "tau": tau,
                               "fraction_at_most_tau": float(np.mean(values <= tau)),
                               "index": probe.splits["train"].index.cpu().numpy()}
    return tree


def instability_columns(tree: dict) -> dict:
    out = {f"instability_test_error{_suffix(tree)}": tree["barrier"]["test_error"]["interpolated"]}
    if "per_example" in tree:
        out[f"fraction_at_most_tau{_suffix(tree)}"] = tree["per_example"]["fraction_at_most_tau"]
    return out


def perturb(context: Context, level: int, settings: dict) -> dict:
    """Train level ``level`` from a perturbed start and measure its barrier to the trunk's."""
    direction, size = settings["direction"], settings["size"]
    trunk = context.trunk
    start, mask, train_config = trunk.start_of(level)
    unit, scale = perturbation(start.state, mask, trunk.next_mask(level), direction,
                               generator(trunk.seeds.init, "perturb", level, direction))
    state = dict(start.state)
    for name, delta in unit.items():
        state[name] = state[name] * mask[name] + size * scale * delta
    perturbed = context.trained(perturbed_stage(level, direction, size), replace(start, state=state), mask,
                                train_config, trunk.seeds, direction=direction, size=size)
    tree = context.compare(settings, perturbed.weights, context.level(level).weights)
    return {**tree, "direction": direction, "size": size, "natural_scale": scale,
            "perturbation_norm": abs(size) * scale, "network": perturbed_stage(level, direction, size)}


def perturb_columns(tree: dict) -> dict:
    return {f"perturb_{tree['direction']}_{tree['size']:g}_test_error{_suffix(tree)}":
            tree["barrier"]["test_error"]["interpolated"]}


def pair_networks(context: Context, a: str, b: str) -> tuple[list[State], list[str]]:
    """The weights of two stored networks (stage names of this replicate or paths of stage
    files of the same architecture) and their names (a file elsewhere is named by its run,
    replicate and stage)."""
    states, found = [], []
    for name in (a, b):
        path = Path(name) if name.endswith(".h5") else context.run.stage_file(context.replicate, name)
        if not path.is_file():
            raise UserError(f"{name}: no such stage file; give a stage of the run (e.g. level_3) or a .h5 path")
        tree = store.read_h5(path, only=("weights",))
        if "weights" not in tree:
            raise UserError(f"{path} holds no network weights")
        if not all(np.isfinite(v).all() for v in tree["weights"].values() if np.issubdtype(v.dtype, np.floating)):
            raise UserError(f"{path} holds non-finite weights: its training diverged; measure another network")
        states.append({k: torch.from_numpy(v).clone() for k, v in tree["weights"].items()})
        inside = path.resolve().parent == context.run.replicate_dir(context.replicate).resolve()
        found.append(path.stem if inside else f"{path.parent.parent.name}.{path.parent.name}.{path.stem}")
    return states, found


def pair(context: Context, settings: dict, states: list[State]) -> dict:
    """The barrier between two networks (``settings["networks"]`` names them)."""
    try:
        tree = context.compare(settings, *states)
    except RuntimeError as error:  # load_state_dict on another architecture
        a, b = settings["networks"]
        raise UserError(f"{a} and {b} do not fit this run's model: {str(error).splitlines()[0]}") from None
    return {"networks": " ".join(settings["networks"]), **tree}


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
