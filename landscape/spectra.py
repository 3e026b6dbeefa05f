"""Hessian spectra of trunk levels and the prune limit they predict, against a measurement.

* ``hessian_<L>.h5``: at level L's final weights, the Hessian of the mean training
  cross-entropy on ``landscape.hessian_examples`` fixed training examples, restricted to
  the unpruned coordinates (``v -> m * H(m * v)``, :mod:`landscape.hessian`), with
  BatchNorm in ``landscape.hessian_bn`` mode: top-k eigenvalues by Lanczos, the
  Hutchinson trace, a stochastic-Lanczos-quadrature estimate of the whole spectrum, and
  the prune limits of :mod:`landscape.prunelimit` (predicted and conservative) for an
  allowed training-loss increase ``landscape.prune_eps``.
* ``prune_check_<L>_<f>.h5``: level L's final weights pruned by fraction f in one
  iteration (the run's strategy), retrained exactly as the next level would be, and
  whether it matches the dense network: test error at most level 0's plus
  ``landscape.matching_tolerance``. The measured limit is the largest matching f.
"""

import numpy as np

from imp import store
from imp.data import fixed_subset
from imp.level import build_initial_model, mask_from_arrays, state_from_arrays, train_level
from imp.pruning import magnitude_prune
from imp.results import hessian_stage, level_stage, prune_check_stage
from imp.seeds import derive_seed
from landscape.hessian import HessianOperator
from landscape.lanczos import hutchinson_trace, lanczos, slq_density
from landscape.measure import Measurements
from landscape.prunelimit import (conservative_fraction, predicted_fraction, projection_length,
                                  slq_average, sorted_squares)


def measure_hessian(m: Measurements, level: int) -> None:
    stage = hessian_stage(level)
    if m.has(stage):
        return
    ls, seed = m.config.landscape, m.config.train.seed
    tree = store.read_h5(m.run.stage_file(m.replicate, level_stage(level)))
    weights, mask = state_from_arrays(tree["weights"]), mask_from_arrays(tree["mask"])
    device = m.data.train.x.device
    model = build_initial_model(m.config, m.data, 0)
    model.load_state_dict({k: v.to(device) for k, v in weights.items()})
    examples = fixed_subset(m.data.train, ls.hessian_examples, derive_seed(seed, "hessian"))
    operator = HessianOperator(model, examples.x, examples.y, {k: v.to(device) for k, v in mask.items()},
                               bn=ls.hessian_bn)
    top = lanczos(operator, ls.hessian_k, tol=ls.hessian_tol, seed=derive_seed(seed, "lanczos", level))
    slq = slq_density(operator, runs=ls.slq_runs, steps=ls.slq_steps, seed=derive_seed(seed, "slq", level))
    squares = sorted_squares(weights, mask)
    average = slq_average(slq["nodes"], slq["weights"])
    grid = np.linspace(0, 1, 101)
    out = {
        "eigenvalues": np.asarray(top["eigenvalues"]), "residuals": np.asarray(top["residuals"]),
        "lanczos_iterations": int(top["iterations"]), "lanczos_products": int(top["products"]),
        "slq": {"nodes": slq["nodes"], "weights": slq["weights"]},
        "active_coordinates": int(operator.active), "unpruned_weights": len(squares),
        "examples": len(examples), "bn": ls.hessian_bn, "eps": ls.prune_eps,
        "predicted_fraction": predicted_fraction(squares, average, ls.prune_eps),
        "conservative_fraction": conservative_fraction(squares, float(top["eigenvalues"][0]), ls.prune_eps),
        "projection": {"p": grid, "length": projection_length(squares, grid)},
    }
    if ls.trace_samples:
        trace = hutchinson_trace(operator, ls.trace_samples, seed=derive_seed(seed, "trace", level))
        out["trace"], out["trace_std_error"] = float(trace["trace"]), float(trace["std_error"])
    m.write(stage, out)


def prune_check(m: Measurements, level: int, fraction: float) -> None:
    stage = prune_check_stage(level, fraction)
    if m.has(stage):
        return
    prune, ls = m.config.prune, m.config.landscape
    tree = store.read_h5(m.run.stage_file(m.replicate, level_stage(level)))
    mask = magnitude_prune(state_from_arrays(tree["weights"]), mask_from_arrays(tree["mask"]), fraction,
                           prune.strategy, prune.layer_fractions)
    start = m.trunk.start_after(tree)
    out, _ = train_level(m.config, m.data, m.trunk.seeds, start, mask, train_config=m.trunk.train_config,
                         label=f"replicate {m.replicate} {stage}")
    dense = store.read_h5(m.run.stage_file(m.replicate, level_stage(0)), skip=("weights", "mask", "steps"))
    dense_error = 1 - dense["final"]["test_accuracy"]
    error = 1 - out["final"]["test_accuracy"]
    out.update({"fraction": fraction, "from_level": level, "dense_test_error": dense_error,
                "matching_tolerance": ls.matching_tolerance,
                "matching": bool(error <= dense_error + ls.matching_tolerance)})
    m.write(stage, out)
