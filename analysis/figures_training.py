"""Training curves: the evaluations made during training (the ``metrics`` frame of
:mod:`analysis.load`), one line per IMP level of the trunk (one line style per run), against the training step.
Conventions as in :mod:`analysis.figures`."""

import pandas as pd
import seaborn as sns

from analysis.style import band, new_axes, place_legend, replicates_note, require, set_title

TRUNK = "imp"


def _curves(metrics: pd.DataFrame, figure: str, column: str) -> pd.DataFrame:
    require(metrics, ["run_id", "replicate", "level", "baseline", "step", column], figure)
    rows = metrics[(metrics["baseline"] == TRUNK) & metrics[column].notna()]
    if rows.empty:
        raise ValueError(f"{figure}: no trunk evaluations with {column}")
    return rows.assign(level=rows["level"].astype(int))


def _draw(rows: pd.DataFrame, y: str, ax, title: str, label: str):
    ax = new_axes(ax)
    style = "run_id" if rows["run_id"].nunique() > 1 else None  # several runs: one line style each
    sns.lineplot(rows, x="step", y=y, hue="level", style=style, palette="viridis", **band(rows), ax=ax)
    ax.set_xlabel("training step (iterations)")
    ax.set_ylabel(label)
    set_title(ax, f"{title} ({replicates_note(rows)})")
    place_legend(ax, "IMP level")
    return ax.figure


def training_accuracy(metrics: pd.DataFrame, ax=None):
    """Test accuracy during training, one line per IMP level (trunk)."""
    rows = _curves(metrics, "training_accuracy", "test_accuracy")
    return _draw(rows.assign(y=100 * rows["test_accuracy"]), "y", ax, "Test accuracy during training",
                 "test accuracy (%)")


def training_loss(metrics: pd.DataFrame, ax=None):
    """Training loss (mean cross-entropy on the fixed evaluation examples) during
    training, one line per IMP level (trunk), log scale."""
    rows = _curves(metrics, "training_loss", "train_loss")
    figure = _draw(rows, "train_loss", ax, "Training loss during training", "train loss (nats, log scale)")
    figure.axes[0].set_yscale("log")
    return figure
