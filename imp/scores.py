"""Example scores: EL2N, GraNd (Paul et al. 2021), forgetting events (Toneva et al. 2019),
the margin and the area under the margin (AUM; Pleiss et al. 2020).

For every training example (x_i, y_i), each of R independent runs r gives a score and the
stored score is the mean over runs:

* ``el2n``: ``|| softmax(f(x_i; w_t)) - onehot(y_i) ||_2`` at step t, eval mode, no
  augmentation.
* ``grand``: ``|| grad_w CE(f(x_i; w_t), y_i) ||_2`` over all trainable parameters at
  step t (t = 0: the initialisation), eval-mode BatchNorm, no augmentation
  (:func:`imp.pergrad.grad_norms`).
* ``forgetting``: over the first t steps of training, the number of times an example
  goes from correctly to incorrectly classified between its successive presentations in
  training minibatches (training-mode logits, augmentation as configured); an example
  never classified correctly scores +inf.
* ``margin``: ``z_y - max_{j != y} z_j`` of the logits z = f(x_i; w_t) at step t, eval
  mode, no augmentation (the margin of Pleiss, Zhang, Elenberg & Weinberger 2020,
  "Identifying mislabeled data using the area under the margin ranking").
* ``aum``: the area under the margin (Pleiss et al. 2020): the mean, over every
  presentation of the example in a training minibatch during the first t steps, of its
  margin ``z_y - max_{j != y} z_j`` from the training-mode logits of that minibatch
  (taken before the update, augmentation as configured). t must be at least one epoch,
  so that every example is presented at least once (every epoch is a permutation of the
  whole training set); a shorter t is refused rather than scoring unseen examples.

Orientation: for ``el2n``, ``grand`` and ``forgetting`` a high score means a hard example
(``"high_is_hard"``); for ``margin`` and ``aum`` a high score means an easy one
(``"high_is_easy"``). Every scores tree stores its ``orientation`` (a file without one is
``"high_is_hard"``), and whatever chooses examples by score ranks :func:`hardness`, the
mean oriented so that higher = harder, so ``hardest`` on margins picks the lowest margins.

Run r trains the run's model and data with its own seeds, derived from ``train.seed``,
``"scores"`` and r, so score runs are independent of the IMP replicates. Labels are the
training labels as used (permuted ones included, with ``data.label_noise``).
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from imp.base import names, store
from imp.base.progress import tqdm
from imp.base.runtime import DEFAULT_THREADS, set_threads
from imp.base.config import (Config, ScoreName, SubsetConfig, canonical, in_iterations, run_iterations_per_epoch,
                             to_dict)
from imp.data import Dataset, Split
from imp.base.duration import Duration
from imp.base.errors import Diverged, UserError
from imp.models import build_initial_model
from imp.pergrad import grad_norms
from imp.base.seeds import Seeds, derive_seed
from imp.train import train

SCORES = ("el2n", "grand", "forgetting", "margin", "aum")
ORIENTATIONS = ("high_is_hard", "high_is_easy")
ORIENTATION = {"el2n": "high_is_hard", "grand": "high_is_hard", "forgetting": "high_is_hard",
               "margin": "high_is_easy", "aum": "high_is_easy"}


@dataclass(frozen=True)
class ScoreSpec:
    """Which score, after how much training (t), averaged over how many runs (R)."""

    score: ScoreName
    step: Duration
    runs: int = 1

    def __post_init__(self):
        if self.score not in SCORES:
            raise UserError(f"unknown score {self.score!r}; choose one of {', '.join(SCORES)}")
        if self.runs < 1:
            raise UserError(f"score runs must be at least 1, got {self.runs}")
        if self.score == "aum" and self.step.iterations_at(1) == 0:
            raise UserError("aum averages margins over the first t steps of training and t = 0 has none; "
                            "give a step of at least one epoch (e.g. --step 1ep)")


def score_id(config: Config, spec: ScoreSpec) -> str:
    """12 hex digits of sha256 over what the scores depend on: data, model, training, spec."""
    identity = {key: value for key, value in to_dict(config).items() if key in ("data", "model", "train")}
    identity["scores"] = {"score": spec.score, "step": str(spec.step), "runs": spec.runs}
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def scores_path(out: str | Path, config: Config, spec: ScoreSpec) -> Path:
    return Path(out) / names.SCORES_DIR / names.scores_file(spec.score, score_id(config, spec))


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` of each row z of ``logits`` (N, C) with label y (float64)."""
    z = logits.double()
    own = z.gather(1, labels[:, None]).squeeze(1)
    others = z.scatter(1, labels[:, None], float("-inf")).amax(1)
    return own - others


def _el2n_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = logits.double()
    return (F.softmax(logits, dim=1) - F.one_hot(labels, logits.shape[1]).double()).norm(dim=1)


@torch.no_grad()
def _in_eval_mode(model: torch.nn.Module, split: Split, of, batch_size: int) -> torch.Tensor:
    """``of(logits, labels)`` over ``split`` in batches, the model in eval mode (CPU result)."""
    was_training = model.training
    model.eval()
    out = []
    for x, y in split.chunks(batch_size):
        out.append(of(model(x), y).cpu())
    model.train(was_training)
    return torch.cat(out)


def el2n(model: torch.nn.Module, split: Split, batch_size: int = 2048) -> torch.Tensor:
    """Per-example ``|| softmax(f(x)) - onehot(y) ||_2`` in eval mode (float64, CPU)."""
    return _in_eval_mode(model, split, _el2n_of, batch_size)


def margin(model: torch.nn.Module, split: Split, batch_size: int = 2048) -> torch.Tensor:
    """Per-example margin ``f(x)_y - max_{j != y} f(x)_j`` in eval mode (float64, CPU)."""
    return _in_eval_mode(model, split, margins, batch_size)


class Forgetting:
    """Counts forgetting events per example from the training minibatches (``on_batch``)."""

    def __init__(self, count: int, device: torch.device | str = "cpu"):
        self.previous = torch.zeros(count, dtype=torch.bool, device=device)
        self.learned = torch.zeros(count, dtype=torch.bool, device=device)
        self.events = torch.zeros(count, dtype=torch.int64, device=device)

    def __call__(self, step: int, positions: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        correct = logits.argmax(1) == labels
        self.events[positions] += (self.previous[positions] & ~correct).long()
        self.previous[positions] = correct
        self.learned[positions] |= correct

    def scores(self) -> torch.Tensor:
        out = self.events.double().cpu()
        out[~self.learned.cpu()] = float("inf")
        return out


class AreaUnderMargin:
    """The area under the margin (Pleiss et al. 2020) from the training minibatches
    (``on_batch``): per example, the mean of :func:`margins` over its presentations."""

    def __init__(self, count: int, device: torch.device | str = "cpu"):
        self.total = torch.zeros(count, dtype=torch.float64, device=device)
        self.presentations = torch.zeros(count, dtype=torch.int64, device=device)

    def __call__(self, step: int, positions: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.total.index_add_(0, positions, margins(logits, labels))  # index_add_: repeats add up
        self.presentations.index_add_(0, positions, torch.ones_like(positions))

    def scores(self) -> torch.Tensor:
        unseen = int((self.presentations == 0).sum())
        if unseen:  # compute_scores trains at least an epoch, which presents every example
            raise ValueError(f"{unseen} example(s) were never presented; the area under the margin is undefined")
        return (self.total / self.presentations).cpu()


TRACKERS = {"forgetting": Forgetting, "aum": AreaUnderMargin}


def hardness(tree: dict) -> np.ndarray:
    """The mean scores of a scores tree, oriented so that higher = harder: ``tree["mean"]``
    for ``"high_is_hard"`` scores (and files without an orientation), its negation for
    ``"high_is_easy"`` ones (margin, aum)."""
    mean = np.asarray(tree["mean"], dtype=np.float64)
    orientation = str(tree.get("orientation", "high_is_hard"))
    if orientation not in ORIENTATIONS:
        raise UserError(f"unknown score orientation {orientation!r}; it must be one of {', '.join(ORIENTATIONS)}")
    return -mean if orientation == "high_is_easy" else mean


def compute_scores(config: Config, data: Dataset, spec: ScoreSpec, progress: bool = False) -> dict:
    """Scores of every training example for each of ``spec.runs`` runs, and their mean.

    Returns the tree stored in a scores file (see docs/storage.md).
    """
    batch_size = config.data.batch_size
    iterations_per_epoch = data.iterations_per_epoch(batch_size)
    step = spec.step.iterations_at(iterations_per_epoch)
    if spec.score == "aum" and step < iterations_per_epoch:
        raise UserError(f"aum after {spec.step} ({step} iterations) would leave examples never presented; "
                        f"give a step of at least one epoch ({iterations_per_epoch} iterations, e.g. 1ep)")
    per_run = []
    for run in tqdm(range(spec.runs), disable=not progress, desc=f"{spec.score} runs", leave=False):
        train_config = dataclasses.replace(config.train, seed=derive_seed(config.train.seed, "scores", run),
                                           init_seed=None, order_seed=None, augment_seed=None)
        seeds = Seeds.from_config(train_config)
        model = build_initial_model(config, data, seeds.init)
        tracker = TRACKERS[spec.score](len(data.train), data.train.device) if spec.score in TRACKERS else None
        if step > 0:
            train(model, data, config.train, batch_size, seeds, end_step=step, on_batch=tracker,
                  progress=progress, label=f"score run {run}")
        if spec.score == "el2n":
            values = el2n(model, data.train)
        elif spec.score == "grand":
            values = grad_norms(model, data.train.x, data.train.y)
        elif spec.score == "margin":
            values = margin(model, data.train)
        else:
            values = tracker.scores()
        per_run.append(values.numpy())
    per_run = np.stack(per_run)
    if np.isnan(per_run).any():  # the score runs' training diverged (inf is a forgetting count)
        raise Diverged(f"{spec.score} scores after {spec.step} are NaN for {int(np.isnan(per_run).sum())} "
                       f"example(s): the training diverged; lower train.lr (now {config.train.lr:g})")
    return {
        "score": spec.score, "step": str(spec.step), "iterations": step, "runs": spec.runs,
        "orientation": ORIENTATION[spec.score], "dataset": data.name,
        "per_run": per_run,
        "mean": per_run.mean(axis=0),
        "index": data.train.index.cpu().numpy(),  # positions in the original training set
        "labels": data.train.y.cpu().numpy(),
        "noisy": data.noisy.cpu().numpy(),
        "input_norm": data.train.x.flatten(1).norm(dim=1).double().cpu().numpy(),
        "data_fingerprint": data.fingerprint,
    }


def load_or_compute(config: Config, data: Dataset, spec: ScoreSpec, out: str | Path,
                    progress: bool = False, threads: int | None = DEFAULT_THREADS) -> tuple[dict, Path]:
    """The scores of ``spec`` from their cache file under ``out``, computed and written if
    absent; sets torch's CPU threads to ``threads`` first (None leaves them alone)."""
    if threads is not None:
        set_threads(threads)
    # The scores train on the full training set, with the run's schedule in the run's own
    # iterations (a [subset] run's epochs may count its kept examples), and equal work has
    # one file: durations and eval_examples written one way (imp.base.config.canonical).
    per_epoch = run_iterations_per_epoch(config, len(data.train))
    config = dataclasses.replace(config, train=in_iterations(config.train, per_epoch), subset=SubsetConfig())
    config = canonical(config, len(data.train) + config.data.validation, len(data.test))
    spec = dataclasses.replace(spec, step=spec.step.canonical(data.iterations_per_epoch(config.data.batch_size)))
    path = scores_path(out, config, spec)
    store.remove_orphans(path.parent)  # left by a writer killed mid-write
    if path.is_file():
        return read_scores(path, data), path
    store.check_writable(path.parent)
    tree = compute_scores(config, data, spec, progress)
    store.write_h5(path, tree, store.provenance(json.dumps(to_dict(config), sort_keys=True), data.train.device))
    return tree, path


def read_scores(path: str | Path, data: Dataset | None = None) -> dict:
    """A scores file; with ``data``, checked to be over the same training examples."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"scores file {str(path)!r} not found; `lth scores` writes one")
    if not h5py.is_hdf5(path):
        raise UserError(f"{path} is not a scores file (not HDF5 at all); give files written by `lth scores`")
    tree = store.read_h5(path)
    if "mean" not in tree or "index" not in tree:
        raise UserError(f"{path} is not a scores file written by `lth scores`")
    if str(tree.get("orientation", "high_is_hard")) not in ORIENTATIONS:
        raise UserError(f"{path} has an unknown orientation {tree['orientation']!r}; it must be one of "
                        f"{', '.join(ORIENTATIONS)}")
    if data is not None and not np.array_equal(tree["index"], data.train.index.cpu().numpy()):
        raise UserError(f"{path} scores a different training set (other data set, validation split "
                        "or size) than this run; compute scores with this run's [data] section")
    stored = str(tree.get("data_fingerprint", ""))
    if data is not None and stored and data.fingerprint and stored != data.fingerprint:
        raise UserError(f"{path} scores other data than this {data.name} (fingerprint {stored}, now "
                        f"{data.fingerprint}); compute scores on this data (move that file away, or use "
                        "another --out folder)")
    return tree


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (+inf ranks last)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    out = np.empty(len(values))
    start = 0
    while start < len(values):
        end = start + 1
        while end < len(values) and sorted_values[end] == sorted_values[start]:
            end += 1
        out[order[start:end]] = (start + end + 1) / 2
        start = end
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson correlation of the average ranks)."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for finding the ``positive`` examples: the
    probability that a random positive outscores a random negative (ties count half)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = ranks(scores)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
