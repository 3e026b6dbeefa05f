"""Hessian spectra of trunk levels and the prune limit they predict, against a measurement.

* ``hessian``: at level L's final weights, the Hessian of the mean training cross-entropy
  on ``examples`` fixed training examples, restricted to the unpruned coordinates
  (``v -> m * H(m * v)``, :mod:`landscape.hessian`), with BatchNorm in ``bn`` mode:
  top-k eigenvalues by Lanczos, the Hutchinson trace, a stochastic-Lanczos-quadrature
  estimate of the whole spectrum, and the prune limits of :mod:`landscape.prunelimit`
  (predicted and conservative) for an allowed training-loss increase ``eps``.
* ``prune_check``: level L's final weights pruned by each fraction f in one iteration
  (the run's strategy), retrained exactly as the next level would be (network stage
  ``pruned_<L>_<f>``), and whether it matches the dense network: test error at most
  level 0's plus ``matching_tolerance``. The measured limit is the largest matching f.
"""

import numpy as np

from imp.base.config import LandscapeConfig
from imp.base.errors import UserError
from imp.data import fixed_subset
from imp.models import build_initial_model
from imp.base.names import pruned_stage
from imp.pruning import magnitude_prune
from imp.base.seeds import derive_seed
from landscape.hessian import HessianOperator
from landscape.lanczos import hutchinson_trace, lanczos, slq_density
from landscape.measure import Context
from landscape.prunelimit import (conservative_fraction, predicted_fraction, projection_length,
                                  slq_average, sorted_squares)


def hessian_settings(ls: LandscapeConfig) -> dict:
    """Everything the Hessian measurement's numbers depend on."""
    return {"k": ls.hessian_k, "tol": ls.hessian_tol, "examples": ls.hessian_examples, "bn": ls.hessian_bn,
            "slq_runs": ls.slq_runs, "slq_steps": ls.slq_steps, "trace_samples": ls.trace_samples,
            "eps": ls.prune_eps}


def measure_hessian(m: Context, level: int, settings: dict) -> dict:
    seed = m.config.train.seed
    trained = m.level(level)
    weights, mask = trained.weights, trained.mask
    device = m.data.train.x.device
    model = build_initial_model(m.config, m.data, 0)
    model.load_state_dict({k: v.to(device) for k, v in weights.items()})
    examples = fixed_subset(m.data.train, settings["examples"], derive_seed(seed, "hessian"))
    operator = HessianOperator(model, examples.x, examples.y, {k: v.to(device) for k, v in mask.items()},
                               bn=settings["bn"])
    if settings["k"] > operator.active:
        raise UserError(f"landscape.hessian_k = {settings['k']} is more than the {operator.active} unpruned "
                        f"coordinates at level {level}; ask for fewer eigenvalues")
    top = lanczos(operator, settings["k"], tol=settings["tol"], max_iter=max(100, 3 * settings["k"]),
                  seed=derive_seed(seed, "lanczos", level))
    slq = slq_density(operator, runs=settings["slq_runs"], steps=settings["slq_steps"],
                      seed=derive_seed(seed, "slq", level))
    squares = sorted_squares(weights, mask)
    average = slq_average(slq["nodes"], slq["weights"])
    grid = np.linspace(0, 1, 101)
    eps = settings["eps"]
    out = {
        "eigenvalues": np.asarray(top["eigenvalues"]), "residuals": np.asarray(top["residuals"]),
        "lanczos_iterations": int(top["iterations"]), "lanczos_products": int(top["products"]),
        "slq": {"nodes": slq["nodes"], "weights": slq["weights"]},
        "active_coordinates": int(operator.active), "unpruned_weights": len(squares),
        "examples": len(examples), "bn": settings["bn"], "eps": eps,
        "predicted_fraction": predicted_fraction(squares, average, eps),
        "conservative_fraction": conservative_fraction(squares, float(top["eigenvalues"][0]), eps),
        "projection": {"p": grid, "length": projection_length(squares, grid)},
    }
    if settings["trace_samples"]:
        trace = hutchinson_trace(operator, settings["trace_samples"], seed=derive_seed(seed, "trace", level))
        out["trace"], out["trace_std_error"] = float(trace["trace"]), float(trace["std_error"])
    return out


def hessian_columns(tree: dict) -> dict:
    return {"hessian_top_eigenvalue": float(tree["eigenvalues"][0]),
            "predicted_max_prune_fraction": tree["predicted_fraction"],
            "conservative_max_prune_fraction": tree["conservative_fraction"]}


def prune_check(m: Context, level: int, settings: dict) -> dict:
    """One-shot prune checks of level ``level`` at ``settings["fractions"]``."""
    prune = m.config.prune
    trained = m.level(level)
    start = m.trunk.start_after(trained)
    dense_error = 1 - m.level(0).final["test_accuracy"]
    fractions = np.asarray(settings["fractions"], dtype=float)
    errors = []
    for fraction in fractions:
        mask = magnitude_prune(trained.weights, trained.mask, fraction, prune.strategy, prune.layer_fractions)
        pruned = m.trained(pruned_stage(level, fraction), start, mask, m.trunk.train_config, m.trunk.seeds,
                           fraction=float(fraction), from_level=level)
        errors.append(1 - pruned.final["test_accuracy"])
    errors = np.asarray(errors)
    matching = errors <= dense_error + settings["matching_tolerance"]
    return {"fractions": fractions, "test_error": errors, "matching": matching, "from_level": level,
            "dense_test_error": dense_error, "matching_tolerance": settings["matching_tolerance"],
            "networks": " ".join(pruned_stage(level, f) for f in fractions)}


def prune_check_columns(tree: dict) -> dict:
    matching = [f for f, ok in zip(tree["fractions"], tree["matching"]) if ok]
    return {"measured_max_prune_fraction": float(max(matching, default=0.0))}
