"""Data-diet pre-training of the rewind point (Paul et al. 2022, "Lottery tickets on a
data diet: finding initializations with sparse trainable networks").

With ``diet.pretrain = P`` (> 0), each replicate's dense network trains from its seeded
initialisation for P iterations on a subset of the training set, with the run's
optimiser and schedule (epochs in the schedule count full-data epochs). The subset is
``diet.subset`` (``easy`` = the least hard by ``diet.score``, ``hard`` = the most:
highest EL2N, GraNd or forgetting, lowest margin or AUM, see :func:`imp.scores.hardness`;
``random``, ``all``) of ``diet.size`` examples (:func:`imp.subsets.select`). The state after P
iterations is the rewind point of every IMP level: level 0 continues from it on the full
data for steps P..T, and every later level rewinds to it. The subset, the scores used
and where they came from are stored in ``replicate_<r>/pretrain.h5``.
"""

import time
from pathlib import Path

import numpy as np

from imp.base import names, store
from imp.base.config import Config
from imp.data import Dataset
from imp.base.errors import UserError
from imp.level import Start, copy_state
from imp.models import build_initial_model
from imp.scores import ScoreSpec, hardness, load_or_compute, read_scores
from imp.subsets import ccs, keep, select
from imp.base.seeds import Seeds
from imp.train import train


def score_spec(config: Config) -> ScoreSpec:
    diet = config.diet
    return ScoreSpec(diet.score, diet.score_step, diet.score_runs)


def _scores(config: Config, data: Dataset, out: str | Path, spec: ScoreSpec, scores_file: str,
            section: str, progress: bool) -> tuple[np.ndarray, str]:
    """The hardness of ``spec`` over the training split (:func:`imp.scores.hardness`: the mean
    scores, negated for scores where high = easy, so higher = harder), from ``scores_file``
    (checked to be over this data and of this score) or computed and cached under ``out``;
    and their source."""
    if scores_file:
        tree = read_scores(scores_file, data)
        if tree["score"] != spec.score:
            raise UserError(f"{scores_file} holds {tree['score']} scores but {section}.score is "
                            f"{spec.score!r}; set {section}.score = {tree['score']!r} or use another file")
        return hardness(tree), scores_file
    tree, source = load_or_compute(config, data, spec, out, progress, threads=None)
    return hardness(tree), str(source)


def choose_subset(config: Config, data: Dataset, out: str | Path, progress: bool = False) -> dict:
    """The subset's positions in the training split, with the scores and their source."""
    diet = config.diet
    labels = data.train.y.cpu().numpy()
    scores, source = None, ""
    if diet.subset in ("easy", "hard", "ccs"):
        scores, source = _scores(config, data, out, score_spec(config), diet.scores_file, "diet", progress)
    if diet.subset == "ccs":
        positions = ccs(scores, diet.size, diet.ccs_hard_cut, diet.ccs_strata, diet.seed)
    else:
        positions = select(scores, labels, diet.subset, diet.size, offset=diet.offset,
                           class_balanced=diet.class_balanced, seed=diet.seed)
    return {"positions": positions, "scores": scores, "source": str(source)}


def diet_pretrain(out: str | Path, progress: bool = False):
    """The ``pretrain`` function for :func:`imp.trunk.run_imp`: returns the start of level 0
    (the pre-trained state at step P) and the tree stored as ``pretrain.h5``."""
    chosen: dict = {}

    def pretrain(config: Config, data: Dataset, replicate: int) -> tuple[Start, dict]:
        if not chosen:  # the same subset for every replicate
            chosen.update(choose_subset(config, data, out, progress))
        positions = chosen["positions"]
        batch_size = config.data.batch_size
        iterations_per_epoch = data.iterations_per_epoch(batch_size)
        steps = config.diet.pretrain.iterations_at(iterations_per_epoch)
        seeds = Seeds.from_config(config.train, replicate)
        model = build_initial_model(config, data, seeds.init)
        started = time.perf_counter()
        losses = train(model, data.train_subset(positions), config.train, batch_size, seeds,
                       end_step=steps, iterations_per_epoch=iterations_per_epoch, progress=progress,
                       label=f"replicate {replicate} diet pre-training")
        tree = {
            "step": steps,
            "subset": config.diet.subset,
            "score": config.diet.score if chosen["scores"] is not None else "",
            "scores_source": chosen["source"],
            "positions": positions,  # in the training split
            "index": data.train.index.cpu().numpy()[positions],  # in the original training set
            "train_seconds": time.perf_counter() - started,
            "steps": {"train_loss": losses},
        }
        if chosen["scores"] is not None:
            tree["scores"] = np.asarray(chosen["scores"])
        return Start(copy_state(model), steps), tree

    return pretrain


def subset_data(config: Config, data: Dataset, run: store.RunDir, out: str | Path,
                progress: bool = False) -> tuple[Dataset, dict | None]:
    """The data a ``[subset]`` run trains and is measured on (Paul et al. 2021): ``data``
    with its training split cut to the kept examples (:func:`imp.subsets.keep`), the test
    set whole; ``data`` itself without a subset. With ``subset.budget = "iterations"`` an
    epoch of the schedule still counts the full training set, so a level trains as many
    steps, on the same schedule, as without the subset.

    The choice is made once per run, from the full training set's scores, and kept in the
    run's ``subset.h5``; a run that has the file trains on it again. Returns the data and,
    when the file is not there yet, the tree for :func:`store_subset` to write (after
    ``run.h5``, before the first level trains). Call it holding the run's lock, after the
    data's fingerprint is checked against the run's.
    """
    subset = config.subset
    if not subset.active:
        return data, None
    path = run.path / names.SUBSET_FILE
    tree = None
    if path.is_file():
        positions = store.read_h5(path, only=("positions",))["positions"]
    else:
        tree = choose_kept(config, data, out, progress)
        positions = tree["positions"]
    return data.train_subset(positions, full_epochs=subset.budget == "iterations"), tree


def store_subset(run: store.RunDir, tree: dict | None, device) -> None:
    """Write ``subset.h5`` (from :func:`subset_data`) into ``run``'s folder, once."""
    if tree is not None and not (run.path / names.SUBSET_FILE).is_file():
        store.write_h5(run.path / names.SUBSET_FILE, tree,
                       store.provenance(store.read_run(run)[store.PROVENANCE]["config"], device))


def subset_line(config: Config, data: Dataset, full: int) -> str:
    """The progress line that says what a ``[subset]`` run trains on."""
    subset = config.subset
    return (f"subset: training on {len(data.train)} of {full} examples ({subset.rule}"
            + ("" if subset.rule == "random" else f" {subset.score}") + f"; budget: {subset.budget})")


def choose_kept(config: Config, data: Dataset, out: str | Path, progress: bool = False) -> dict:
    """What ``subset.h5`` stores for ``config``'s ``[subset]`` over the full ``data``."""
    subset = config.subset
    scores, source = None, ""
    if subset.rule != "random":
        spec = ScoreSpec(subset.score, subset.score_step, subset.score_runs)
        scores, source = _scores(config, data, out, spec, subset.scores_file, "subset", progress)
    positions = keep(subset, scores, data.train.y.cpu().numpy())
    count = len(data.train)
    tree = {"positions": positions, "index": data.train.index.cpu().numpy()[positions],
            "rule": subset.rule, "keep": subset.keep, "kept": len(positions), "examples": count,
            "skipped": subset.skipped(count),
            "budget": subset.budget, "class_balanced": subset.class_balanced,
            "score": "" if scores is None else subset.score, "scores_source": source}
    if scores is not None:
        tree["scores"] = np.asarray(scores)
    return tree
