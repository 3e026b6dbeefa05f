"""A small real results folder shared by the analysis tests: two runs (rewind 0 and 10
iterations) with two replicates and every landscape measurement, a third run with levels
only (its id last), a scores file, and unrelated files."""

import pytest
import torch

from imp.base.config import load_config
from imp.data import load_dataset
from imp.base.duration import Duration
from imp.scores import ScoreSpec, load_or_compute
from imp.trunk import run_imp
from landscape.hooks import level_hooks

CPU = torch.device("cpu")
TINY = ["model.widths=[16]", "train.epochs='40it'", "train.eval_every='20it'", "data.batch_size=64",
        "prune.levels=2", "prune.baselines=['reinit']", "landscape.successive=true", "landscape.siblings=2",
        "landscape.sibling_levels=[1]", "landscape.per_example=true", "landscape.points=3",
        "landscape.examples=100", "landscape.perturb_sizes=[0.5]", "landscape.perturb_levels=[0]",
        "landscape.hessian=true", "landscape.hessian_levels=[1]", "landscape.hessian_examples=100",
        "landscape.slq_runs=2", "landscape.slq_steps=5", "landscape.trace_samples=0", "landscape.prune_check=[0.5]",
        "landscape.hessian_deflate=4", "landscape.hessian_exact_limit=0", "landscape.groups=true",
        "landscape.group_score_step='20it'", "landscape.ntk=true", "landscape.ntk_examples=5", "landscape.ntk_points=3",
        "landscape.ntk_score_step='20it'", "landscape.align='weights'", "landscape.repair=true"]


@pytest.fixture(scope="session")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    ids = []
    for rewind in ("0it", "10it"):
        config = load_config(None, TINY + [f"prune.rewind='{rewind}'"])
        ids.append(run_imp(config, out, out, CPU, replicates=2, hooks=level_hooks(config, CPU)).run_id)
    config = load_config(None, TINY)
    data = load_dataset(config.data, out)
    for score, step in (("el2n", 20), ("grand", 0)):
        load_or_compute(config, data, ScoreSpec(score, Duration(iterations=step)), out)
    plain = run_imp(load_config(None, TINY[:5] + ["train.lr=0.05"]), out, out, CPU).run_id  # nothing measured
    ids.append(plain)
    (out / "not_a_run").mkdir()
    (out / "notes.txt").write_text("unrelated")
    return out, ids


@pytest.fixture(scope="session")
def subset_runs(results):
    """Dense networks on pruned data sets, beside ``results``' runs: the whole set, the
    hardest and a random 70% and 50% (EL2N after 20 iterations), and two windows."""
    out, _ = results
    dense = TINY[:4] + ["prune.levels=0", "subset.score_step='20it'"]
    settings = [[], ["subset.keep=0.7"], ["subset.keep=0.5"], ["subset.keep=0.5", "subset.rule=random"],
                ["subset.keep=0.4", "subset.rule=window"],
                ["subset.keep=0.4", "subset.rule=window", "subset.offset=0.2"]]
    return [run_imp(load_config(None, dense + extra), out, out, CPU).run_id for extra in settings]
