"""A short IMP run on CIFAR-10 through the toolkit's own driver, with its measurements.

:func:`imp.trunk.run_imp` trains levels 0 and 1 of ResNet-20 (rewinding to step k), the
reinit and random baselines of level 1, and, through :func:`landscape.hooks.level_hooks`,
the successive barrier between levels 0 and 1 and the Hessian top-5 with the predicted
prune limit of level 1; then an EL2N pass (:func:`imp.scores.load_or_compute`). Every
stage's seconds come from the stored records (``train_seconds``) or the wall clock.
"""

import math
import time
from pathlib import Path

import numpy as np
import torch

from imp.base import store
from imp.base.config import Config, load_config
from imp.base.duration import Duration
from imp.base.results import level_rows, measurement_rows
from imp.data import load_dataset
from imp.scores import ScoreSpec, load_or_compute
from imp.trunk import run_imp
from runs.gpu_check.common import Sizes


def imp_config(sizes: Sizes, root: Path) -> Config:
    tiny = sizes.per_class is not None
    overrides = [
        "data.dataset=imagefolder", f"data.root='{root}'", f"data.batch_size={sizes.batch}",
        "model.name=resnet20", f"model.width={sizes.width}",
        f"train.epochs='{sizes.level_epochs}'", f"train.eval_every='{sizes.level_epochs}'",
        "train.lr=0.1", "train.momentum=0.9", "train.weight_decay=1e-4",
        "prune.levels=1", f"prune.rewind='{sizes.rewind}'", "prune.baselines=['reinit', 'random']",
        "landscape.successive=true", f"landscape.examples={sizes.landscape_examples}",
        f"landscape.bn_examples={sizes.landscape_examples}", f"landscape.points={5 if tiny else 11}",
        "landscape.hessian=true", "landscape.hessian_levels=[1]", "landscape.hessian_k=5",
        f"landscape.hessian_examples={sizes.hessian_examples}",
        "landscape.slq_runs=2", f"landscape.slq_steps={4 if tiny else 40}",
        f"landscape.hessian_tol={1e-2 if tiny else 1e-3}",
        f"landscape.trace_samples={0 if tiny else 2}", f"landscape.hessian_deflate={5 if tiny else 20}",
    ]
    return load_config(None, overrides)


def _number(value):
    """A JSON-ready number or list of numbers from what a stored tree holds."""
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return np.asarray(value, dtype=float).ravel().tolist()
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else str(value)
    return value if isinstance(value, (str, type(None))) else str(value)


def run_short_imp(sizes: Sizes, root: Path, out: Path, device: torch.device) -> dict:
    """Levels 0-1 with baselines and measurements; per network its accuracy and seconds,
    per measurement its summary columns (the barrier; the eigenvalues and predicted limit)."""
    from landscape.hooks import level_hooks  # the landscape layer, loaded only when measured

    config = imp_config(sizes, root)
    began = time.perf_counter()
    run = run_imp(config, out, root, device, hooks=level_hooks(config, device), threads=None)
    seconds = time.perf_counter() - began
    networks = [{"level": r["level"], "baseline": r["baseline"] or "trunk", "density": r["density"],
                 "test_accuracy": r["test_accuracy"], "iterations": r["iterations"],
                 "start_step": r["start_step"], "train_seconds": r["train_seconds"]} for r in level_rows(run)]
    measured = []
    for found in measurement_rows(run):
        columns = {key: _number(value) for key, value in found.get("columns", {}).items()}
        entry = {"measurement": found["measurement"], "level": found["level"], "columns": columns}
        if found["measurement"] == "hessian":  # the top-k eigenvalues are in the file, not the columns
            tree = store.read_h5(run.stage_file(found["replicate"], found["stage"]))
            entry.update(eigenvalues=_number(tree["eigenvalues"]), lanczos_products=_number(tree["lanczos_products"]),
                         examples=_number(tree["examples"]))
        measured.append(entry)
    return {"run": str(run.path), "seconds": seconds, "rewind": str(config.prune.rewind),
            "epochs_per_level": sizes.level_epochs, "networks": networks, "measurements": measured}


def run_el2n(sizes: Sizes, root: Path, out: Path, device: torch.device) -> dict:
    """EL2N scores (Paul et al. 2021) of every training example after ``score_step``, one run."""
    config = imp_config(sizes, root)
    data = load_dataset(config.data, root, device)
    spec = ScoreSpec("el2n", Duration.parse(sizes.score_step), runs=1)
    began = time.perf_counter()
    tree, path = load_or_compute(config, data, spec, out, threads=None)
    scores = np.asarray(tree["mean"], dtype=float)
    return {"seconds": time.perf_counter() - began, "examples": len(scores), "step": sizes.score_step,
            "mean": float(scores.mean()), "min": float(scores.min()), "max": float(scores.max()),
            "finite": bool(np.isfinite(scores).all()), "file": str(path)}
