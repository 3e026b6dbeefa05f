"""Data-diet pre-training of the rewind point (Paul et al. 2022, "Lottery tickets on a
data diet: finding initializations with sparse trainable networks").

With ``diet.pretrain = P`` (> 0), each replicate's dense network trains from its seeded
initialisation for P iterations on a subset of the training set, with the run's
optimiser and schedule (epochs in the schedule count full-data epochs). The subset is
``diet.subset`` (``easy`` = lowest ``diet.score``, ``hard`` = highest, ``random``,
``all``) of ``diet.size`` examples (:func:`imp.subsets.select`). The state after P
iterations is the rewind point of every IMP level: level 0 continues from it on the full
data for steps P..T, and every later level rewinds to it. The subset, the scores used
and where they came from are stored in ``replicate_<r>/pretrain.h5``.
"""

import time
from pathlib import Path

import numpy as np

from imp.base.config import Config
from imp.data import Dataset
from imp.base.errors import UserError
from imp.level import Start, copy_state
from imp.models import build_initial_model
from imp.scores import ScoreSpec, load_or_compute, read_scores
from imp.subsets import select
from imp.base.seeds import Seeds
from imp.train import train


def score_spec(config: Config) -> ScoreSpec:
    diet = config.diet
    return ScoreSpec(diet.score, diet.score_step, diet.score_runs)


def choose_subset(config: Config, data: Dataset, out: str | Path, progress: bool = False) -> dict:
    """The subset's positions in the training split, with the scores and their source."""
    diet = config.diet
    labels = data.train.y.cpu().numpy()
    scores, source = None, ""
    if diet.subset in ("easy", "hard"):
        if diet.scores_file:
            tree, source = read_scores(diet.scores_file, data), diet.scores_file
            if tree["score"] != diet.score:
                raise UserError(f"{diet.scores_file} holds {tree['score']} scores but diet.score is "
                                f"{diet.score!r}; set diet.score = {tree['score']!r} or use another file")
        else:
            tree, source = load_or_compute(config, data, score_spec(config), out, progress, threads=None)
        scores = tree["mean"]
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
