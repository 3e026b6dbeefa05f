"""Curvature spectra of trunk levels, the prune limits they predict, and the measured limits.

* ``hessian``: at level L's final weights, on ``examples`` fixed training examples (0 =
  all of them), restricted to the unpruned coordinates, with BatchNorm in ``bn`` mode:

  - the whole spectrum of the Gauss-Newton curvature G (:mod:`landscape.curvature`) and
    of the Hessian H (:mod:`landscape.hessian`), each exact (``eigh``) up to
    ``exact_limit`` active coordinates and otherwise ``deflate`` top eigenpairs by Lanczos
    plus a ``slq_runs`` x ``slq_steps`` quadrature of the rest (:mod:`landscape.eigen`),
    with the method, products and the estimated error of N_eff recorded;
  - the Hessian's top ``k`` eigenvalues by Lanczos, its Hutchinson trace, and its
    negative and near-zero eigenvalue masses (a prediction is flagged
    ``outside_domain`` when the negative mass exceeds 5%: the quadratic-well picture
    does not hold there);
  - prune limits (:mod:`landscape.prunelimit`) for the curvatures G, |H| and max(H, 0),
    the rules magnitude, random (expected) and random (one sampled mask: the prune
    check's random mask 0), both the
    effective-dimension prediction and the exact quadratic limit, on the eps grid
    :data:`landscape.prunelimit.EPS_GRID` and at the run's eps: ``prune_eps`` as given
    (``eps_mode = "fixed"``), or ``"calibrated"``: the training-loss rise, right after
    pruning, at the smallest fraction whose magnitude-pruned level 0 stops matching the
    dense network after retraining (level 0's prune check with ``fractions``).
* ``prune_check``: level L's final weights pruned by each fraction f in one iteration,
  by magnitude (the run's strategy; network ``pruned_<L>_<f>``) and by ``random_masks``
  uniformly random masks of the same count (``pruned_<L>_<f>_random<s>``), each retrained
  exactly as the next level would be. Per fraction and rule: test error, the retrained
  network's train loss, ``matching_dense`` (test error at most level 0's plus
  ``matching_tolerance``: IMP's notion) and ``matching_level`` (at most level L's own
  plus the tolerance: the theory's notion; a random rule uses the mean error over its
  masks). The four measured limits are the largest matching fraction per rule and
  reference, censored where the checks do not bracket it (:func:`censored_limit`). On
  ``curvature_grid`` (0.1, ..., 0.9 and the fractions) it also stores, for each rule's
  pruning direction d (the removed weights, -w on them; the mean over a rule's masks):
  ``squared_norm`` |d|^2, the ``curvature`` ``d^T G d / |d|^2``, the ``quadratic_rise``
  ``d^T G d / 2`` that the quadratic model predicts, and the ``loss_rise`` measured right
  after pruning, before retraining, on the same examples as the ``hessian`` measurement.
"""

import numpy as np
import torch
import torch.nn.functional as F

from imp.base.config import LandscapeConfig
from imp.base.errors import UserError
from imp.base.names import pruned_stage
from imp.base.seeds import derive_seed
from imp.data import fixed_subset
from imp.models import build_initial_model
from imp.pruning import magnitude_prune, round_half_up, split_flat
from landscape import prunelimit
from landscape.curvature import GGNOperator
from landscape.eigen import spectrum
from landscape.hessian import HessianOperator
from landscape.lanczos import hutchinson_trace, lanczos
from landscape.measure import Context

CENSORED = "_censored"  # a column's censoring flag: -1 below its value, +1 at least its value, 0 exact
OUTSIDE_DOMAIN = 0.05  # negative Hessian eigenvalue mass above which a prediction is flagged
# curvature -> (spectrum, map of its eigenvalues). The Gauss-Newton matrix is PSD: its
# negative eigenvalues are rounding (above -1e-4 max, its negative_mass is 0) and are set to 0.
CURVATURES = {"ggn": ("ggn", lambda lam: np.maximum(lam, 0.0)), "hessian_abs": ("hessian", np.abs),
              "hessian_positive": ("hessian", lambda lam: np.maximum(lam, 0.0))}
CURVATURE_GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))
BATCH = 2048  # examples per product batch


def check_settings(ls: LandscapeConfig) -> dict:
    return {"fractions": sorted(ls.prune_check), "matching_tolerance": ls.matching_tolerance,
            "random_masks": ls.prune_random_masks, "examples": ls.hessian_examples, "bn": ls.hessian_bn}


def hessian_settings(ls: LandscapeConfig) -> dict:
    """Everything the Hessian measurement's numbers depend on."""
    settings = {"k": ls.hessian_k, "tol": ls.hessian_tol, "examples": ls.hessian_examples, "bn": ls.hessian_bn,
                "deflate": ls.hessian_deflate, "exact_limit": ls.hessian_exact_limit, "slq_runs": ls.slq_runs,
                "slq_steps": ls.slq_steps, "trace_samples": ls.trace_samples, "eps": ls.prune_eps,
                "eps_mode": ls.prune_eps_mode}
    if ls.prune_eps_mode == "calibrated":
        del settings["eps"]
        settings["calibration"] = check_settings(ls)
    return settings


def outside_domain(hessian) -> bool:
    """Whether the Hessian's negative eigenvalue mass exceeds :data:`OUTSIDE_DOMAIN`."""
    return bool(hessian.mass("negative") > OUTSIDE_DOMAIN)


def _examples(m: Context, settings: dict):
    if settings["examples"] == 0:
        return m.data.train
    return fixed_subset(m.data.train, settings["examples"], derive_seed(m.config.train.seed, "hessian"))


def _model(m: Context, weights: dict):
    device = m.data.train.device
    model = build_initial_model(m.config, m.data, 0)
    model.load_state_dict({k: v.to(device) for k, v in weights.items()})
    return model


def _say(m: Context, line: str) -> None:
    if m.report is not None:
        m.report(f"replicate {m.replicate} {line}")


def measure_hessian(m: Context, level: int, settings: dict) -> dict:
    seed = m.config.train.seed
    trained = m.level(level)
    weights, mask = trained.weights, trained.mask
    model = _model(m, weights)
    examples = _examples(m, settings)
    device = m.data.train.device
    mask = {k: v.to(device) for k, v in mask.items()}
    operators = {kind: cls(model, examples.x, examples.y, mask, bn=settings["bn"], batch_size=BATCH)
                 for kind, cls in (("ggn", GGNOperator), ("hessian", HessianOperator))}
    active = operators["ggn"].active
    if settings["k"] > active:
        raise UserError(f"landscape.hessian_k = {settings['k']} is more than the {active} unpruned "
                        f"coordinates at level {level}; ask for fewer eigenvalues")
    eps = calibrated_eps(m, settings["calibration"]) if settings["eps_mode"] == "calibrated" else settings["eps"]
    classes = m.data.num_classes
    rank_bound = (classes - 1) * len(examples)
    if rank_bound < 10 * active:
        _say(m, f"level {level} hessian: warning: {len(examples)} examples bound the Gauss-Newton rank by "
                f"{rank_bound}, under 10 x the {active} active coordinates; use more landscape.hessian_examples "
                "(0 = all)")
    spectra = {}
    for kind, operator in operators.items():
        spectra[kind] = spectrum(operator, k=settings["deflate"], runs=settings["slq_runs"],
                                 steps=settings["slq_steps"], tol=settings["tol"],
                                 seed=derive_seed(seed, "spectrum", kind, level), exact_limit=settings["exact_limit"],
                                 report=lambda line, kind=kind: _say(m, f"level {level} hessian: {kind} {line}"))
        _say(m, f"level {level} hessian: {kind} spectrum ({spectra[kind].method}) in "
                f"{spectra[kind].products} products")
    top = lanczos(operators["hessian"], settings["k"], tol=settings["tol"], max_iter=max(100, 3 * settings["k"]),
                  seed=derive_seed(seed, "lanczos", level))
    kept = int(sum(int(v.sum()) for v in mask.values()))
    limits = prune_limits(m, weights, trained.mask, spectra, kept, active, eps)
    negative = spectra["hessian"].mass("negative")
    out = {
        "eigenvalues": np.asarray(top["eigenvalues"]), "residuals": np.asarray(top["residuals"]),
        "lanczos_iterations": int(top["iterations"]), "lanczos_products": int(top["products"]),
        "spectra": {kind: s.tree() for kind, s in spectra.items()},
        "active_coordinates": int(active), "unpruned_weights": kept, "fixed_coordinates": int(active - kept),
        "examples": len(examples), "bn": settings["bn"], "eps": float(eps), "eps_mode": settings["eps_mode"],
        "rank_bound": int(rank_bound), "rank_bound_warning": bool(rank_bound < 10 * active),
        "negative_mass": negative, "zero_mass": spectra["hessian"].mass("zero"),
        "ggn_zero_mass": spectra["ggn"].mass("zero"), "outside_domain": outside_domain(spectra["hessian"]),
        **limits,
    }
    if settings["trace_samples"]:
        trace = hutchinson_trace(operators["hessian"], settings["trace_samples"], seed=derive_seed(seed, "trace", level))
        out["trace"], out["trace_std_error"] = float(trace["trace"]), float(trace["std_error"])
    return out


def _removals(m: Context, weights: dict, mask: dict) -> dict:
    squares = prunelimit.kept_squares(weights, mask)
    prune = m.config.prune
    return {"magnitude": prunelimit.magnitude_removal(weights, mask, prune.rule, prune.layer_fractions),
            "random": prunelimit.random_removal(squares),
            "random_sampled": prunelimit.random_removal(squares, seed=_random_seed(m, 0))}


def prune_limits(m: Context, weights: dict, mask: dict, spectra: dict, kept: int, active: int, eps: float) -> dict:
    """The predictions and quadratic limits of every curvature and rule, on EPS_GRID and at eps."""
    removals = _removals(m, weights, mask)
    grid = list(prunelimit.EPS_GRID) + [eps]
    predicted, quadratic, error = {}, {}, {}
    for curvature, (kind, g) in CURVATURES.items():
        s = spectra[kind].mapped(g)
        top = float(np.max(s.top)) if len(s.top) else 0.0
        predicted[curvature], quadratic[curvature] = {}, {}
        for rule, removal in removals.items():
            p = prunelimit.predicted_limits(removal, s.neff, active, grid)
            predicted[curvature][rule] = p[:-1]
            predicted[curvature][rule + "_at_eps"] = float(p[-1])
            q = prunelimit.quadratic_limits(removal, s.neff, active, top, grid)
            quadratic[curvature][rule] = q[:-1]
            quadratic[curvature][rule + "_at_eps"] = float(q[-1])
        at = int(round(predicted[curvature]["random_at_eps"] * (len(removals["random"].grid) - 1)))
        l2 = removals["random"].squares[at]
        z = 2 * eps / l2 if l2 > 0 else np.inf
        error[curvature] = s.error(lambda lam: lam / (lam + z)) if np.isfinite(z) else 0.0
    ggn_top = float(np.max(spectra["ggn"].top)) if len(spectra["ggn"].top) else 0.0
    return {"eps_grid": np.asarray(prunelimit.EPS_GRID), "predicted": predicted, "quadratic": quadratic,
            "neff_error": error, "neff_error_relative": error["ggn"] / active,
            "conservative_fraction": prunelimit.conservative_limit(removals["magnitude"], ggn_top, eps),
            "removal": {rule: {"p": r.grid, "count": r.count, "squares": r.squares} for rule, r in removals.items()}}


def hessian_columns(tree: dict) -> dict:
    columns = {"hessian_top_eigenvalue": float(tree["eigenvalues"][0]),
               "conservative_max_prune_fraction": tree["conservative_fraction"]}
    if "predicted" not in tree:  # measured before Gauss-Newton curvature (upgraded legacy files)
        return {**columns, "predicted_max_prune_fraction": tree["predicted_fraction"]}
    ggn = tree["predicted"]["ggn"]
    return {**columns, "predicted_limit_random": ggn["random_at_eps"], "predicted_limit_magnitude":
            ggn["magnitude_at_eps"], "quadratic_limit_random": tree["quadratic"]["ggn"]["random_at_eps"],
            "quadratic_limit_magnitude": tree["quadratic"]["ggn"]["magnitude_at_eps"],
            "ggn_top_eigenvalue": float(np.max(tree["spectra"]["ggn"]["top"])),
            "hessian_negative_mass": tree["negative_mass"], "hessian_zero_mass": tree["zero_mass"],
            "ggn_zero_mass": tree["ggn_zero_mass"], "outside_domain": float(tree["outside_domain"]),
            "prune_eps": tree["eps"]}


def _random_seed(m: Context, copy: int) -> int:
    return derive_seed(m.config.train.seed, "prune_check_random", copy)


def _random_prune(mask: dict, order: np.ndarray, fraction: float) -> dict:
    """``mask`` with the first ``round(fraction D)`` kept weights of ``order`` removed."""
    flat = torch.cat([mask[n].reshape(-1).cpu() for n in mask])
    kept = flat.nonzero().squeeze(1)
    flat[kept[torch.from_numpy(order[:round_half_up(fraction * len(kept))])]] = False
    return split_flat(flat, list(mask), mask)


def _masks(m: Context, trained, fraction: float, copies: int) -> dict:
    prune = m.config.prune
    out = {"magnitude": [magnitude_prune(trained.weights, trained.mask, fraction, prune.rule,
                                         prune.layer_fractions)]}
    kept = int(sum(int(v.sum()) for v in trained.mask.values()))
    out["random"] = [_random_prune(trained.mask, prunelimit.random_order(kept, _random_seed(m, s)), fraction)
                     for s in range(copies)]
    return out


def _flat_direction(operator, weights: dict, removed: dict) -> torch.Tensor:
    """The pruning direction as a float64 vector over the operator's parameters."""
    pieces = []
    for name, p in zip(operator.names, operator.params):
        if name in removed:
            pieces.append((-weights[name].double() * removed[name].double()).reshape(-1))
        else:
            pieces.append(torch.zeros(p.numel(), dtype=torch.float64))
    return torch.cat(pieces).to(operator.device)


def _train_loss(model, examples, weights: dict) -> float:
    model.load_state_dict({k: v.to(examples.device) for k, v in weights.items()})
    model.eval()
    with torch.no_grad():
        total = sum(float(F.cross_entropy(model(x), y, reduction="sum"))
                    for x, y in zip(examples.x.split(BATCH), examples.y.split(BATCH)))
    return total / len(examples)


def directions(m: Context, level: int, settings: dict, grid: list[float]) -> dict:
    """Curvature along each rule's pruning direction and the loss rise before retraining."""
    trained = m.level(level)
    examples = _examples(m, settings)
    device = m.data.train.device
    model = _model(m, trained.weights)
    operator = GGNOperator(model, examples.x, examples.y, {k: v.to(device) for k, v in trained.mask.items()},
                           bn=settings["bn"], batch_size=BATCH)
    probe = _model(m, trained.weights)
    base = _train_loss(probe, examples, trained.weights)
    copies = max(settings["random_masks"], 1)
    out = {rule: {"curvature": [], "loss_rise": [], "quadratic_rise": [], "squared_norm": []}
           for rule in ("magnitude", "random")}
    for fraction in grid:
        for rule, masks in _masks(m, trained, fraction, copies).items():
            parts = {key: [] for key in out[rule]}
            for mask in masks:
                removed = {n: trained.mask[n] & ~mask[n].cpu() for n in mask}
                d = _flat_direction(operator, trained.weights, removed)
                norm2, bend = float(d @ d), float(d @ operator.matvec(d))
                parts["squared_norm"].append(norm2)
                parts["curvature"].append(bend / norm2 if norm2 > 0 else 0.0)
                parts["quadratic_rise"].append(bend / 2)
                pruned = {k: (v * mask[k].cpu() if k in mask else v) for k, v in trained.weights.items()}
                parts["loss_rise"].append(_train_loss(probe, examples, pruned) - base)
            for key, values in parts.items():
                out[rule][key].append(float(np.mean(values)))
    return {rule: {key: np.asarray(values) for key, values in parts.items()} for rule, parts in out.items()}


def prune_check(m: Context, level: int, settings: dict) -> dict:
    """One-shot prune checks of level ``level`` at ``settings["fractions"]``, by both rules."""
    trained = m.level(level)
    start = m.trunk.start_after(trained)
    dense_error = 1 - m.level(0).final["test_accuracy"]
    level_error = 1 - trained.final["test_accuracy"]
    tolerance = settings["matching_tolerance"]
    fractions = np.asarray(settings["fractions"], dtype=float)
    copies = settings["random_masks"]
    rules = {"magnitude": {"test_error": [], "train_loss": []}}
    if copies:
        rules["random"] = {"test_error": [], "train_loss": []}
    networks = []
    for fraction in fractions:
        masks = _masks(m, trained, float(fraction), copies)
        for rule in rules:
            errors, losses = [], []
            for copy, mask in enumerate(masks[rule]):
                stage = pruned_stage(level, fraction, None if rule == "magnitude" else copy)
                extra = {"fraction": float(fraction), "from_level": level}
                if rule == "random":
                    extra["random_mask"] = copy
                pruned = m.trained(stage, start, mask, m.trunk.train_config, m.trunk.seeds, **extra)
                errors.append(1 - pruned.final["test_accuracy"])
                losses.append(pruned.final["train_loss"])
                networks.append(stage)
            rules[rule]["test_error"].append(errors)
            rules[rule]["train_loss"].append(losses)
    out = {"fractions": fractions, "from_level": level, "dense_test_error": dense_error,
           "level_test_error": level_error, "matching_tolerance": tolerance, "networks": " ".join(networks)}
    for rule, parts in rules.items():
        errors = np.asarray(parts["test_error"])  # (fractions, masks)
        mean = errors.mean(axis=1)
        tree = {"test_error": errors, "train_loss": np.asarray(parts["train_loss"]), "mean_test_error": mean,
                "matching_dense": mean <= dense_error + tolerance, "matching_level": mean <= level_error + tolerance}
        for reference in ("dense", "level"):
            tree[f"limit_{reference}"], tree[f"limit_{reference}_censored"] = censored_limit(
                fractions, tree[f"matching_{reference}"])
        out[rule] = tree
    out["matching"] = out["magnitude"]["matching_dense"]
    grid = sorted(set(CURVATURE_GRID) | {float(f) for f in fractions})
    out["curvature_grid"] = np.asarray(grid)
    out["direction"] = directions(m, level, settings, grid)
    return out


def censored_limit(fractions: np.ndarray, matching: np.ndarray) -> tuple[float, int]:
    """The measured limit and how it is censored: the largest matching fraction (0), or,
    when no fraction matches, the smallest checked (-1: the limit is below it), or, when
    all match, the largest (+1: the limit is at least it)."""
    if not matching.any():
        return float(fractions.min()), -1
    return float(fractions[matching].max()), int(matching.all())


def prune_check_columns(tree: dict) -> dict:
    if "magnitude" not in tree:  # measured before random masks (upgraded legacy files)
        matching = [f for f, ok in zip(tree["fractions"], tree["matching"]) if ok]
        return {"measured_max_prune_fraction": float(max(matching, default=0.0))}
    matching = tree["fractions"][tree["magnitude"]["matching_dense"]]
    columns = {"measured_max_prune_fraction": float(max(matching, default=0.0))}
    for rule in ("magnitude", "random"):
        if rule in tree:
            for reference in ("dense", "level"):
                name = f"measured_limit_{rule}_{reference}"
                columns[name] = tree[rule][f"limit_{reference}"]
                columns[name + CENSORED] = float(tree[rule][f"limit_{reference}_censored"])
    return columns


def calibrated_eps(m: Context, settings: dict) -> float:
    """The training-loss rise right after magnitude pruning at the smallest fraction whose
    level-0 network stops matching the dense one after retraining (level 0's prune check
    with ``settings``)."""
    if not settings["fractions"]:
        raise UserError("landscape.prune_eps_mode = \"calibrated\" needs landscape.prune_check fractions "
                        "(e.g. [0.2, 0.4, 0.6, 0.8, 0.9]); or use prune_eps_mode = \"fixed\"")
    from landscape.registry import store_measurement  # the registry imports this module

    measured = store_measurement(m, "prune_check", 0, settings, lambda: prune_check(m, 0, settings),
                                 prune_check_columns)
    check = m.read(measured.stage)
    failing = np.flatnonzero(~check["magnitude"]["matching_dense"])
    if len(failing) == 0:
        raise UserError(f"level 0 matches the dense network at every checked fraction "
                        f"({', '.join(f'{f:g}' for f in check['fractions'])}), so no loss rise calibrates eps; "
                        "add larger fractions to landscape.prune_check")
    fraction = float(check["fractions"][failing[0]])
    index = list(check["curvature_grid"]).index(fraction)
    return float(check["direction"]["magnitude"]["loss_rise"][index])
