"""The standard figures: each takes a tidy frame (see :mod:`analysis.load`) and an optional
Axes and returns the Figure; saving is the caller's job.

Units on the axes: accuracies and errors in %, barriers in percentage points, density as
% of the prunable weights kept, losses in nats. Every curve is a mean over replicates with
a 95% bootstrap confidence band (seaborn ``errorbar=("ci", 95)``) when every run has at
least 3 replicates, else the min-max range (2 replicates) or no band (1), as the title
says (:func:`analysis.style.band`); titles give n. A frame
without the rows or columns a figure needs raises ValueError, which the report prints as
"not computed". The data-diet figures (scores, per-example barriers) live in
:mod:`analysis.figures_scores`, those of the prune limit in :mod:`analysis.figures_limits`, training curves in
:mod:`analysis.figures_training`, training on a pruned data set in :mod:`analysis.figures_subsets`; :data:`FIGURES` lists all of them.
"""

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from analysis.figures_align import aligned_barriers, raw
from analysis.figures_limits import directional_curvature, loss_rise_ratio, prune_limit, spectrum_masses
from analysis.figures_scores import per_example_histogram, score_histogram, score_scatter
from analysis.figures_subsets import group_barrier_vs_spawn, ntk_velocity, subset_pruning_curve, subset_window
from analysis.figures_training import training_accuracy, training_loss
from analysis.style import (FIGSIZE, band, new_axes, place_legend, replicates_note, require, run_names,
                            set_title, variant_suffix)
from imp.base.duration import Duration
from imp.base.errors import UserError

TRUNK = "imp"
# Fixed colours, so that a baseline looks the same in every figure whatever else is shown.
BASELINE_ORDER = (TRUNK, "reinit", "random", "oneshot", "snip", "grasp", "synflow")
BASELINE_COLOURS = dict(zip(BASELINE_ORDER, sns.color_palette("colorblind", len(BASELINE_ORDER))))
KIND_NAMES = {"successive": "L → L+1", "instability": "instability"}
DENSE_DASHES = ((4, 2), (1, 1), (6, 2, 1, 2), (2, 3))  # the dense lines of up to four runs
CONFIG_NAMES = {"prune.rewind": "rewind step k", "diet.subset": "data-diet subset",
                "diet.size": "subset size (examples)", "diet.pretrain": "pre-training length"}


def _density_axis(ax, percent: pd.Series) -> None:
    """Log density axis in %, sparser to the right, ticks at 1-2-5 steps (1-9 within a
    decade and a half, so a short range still gets several ticks), thinned so that
    neighbouring labels stay at least a seventh of the axis apart (no "1009080"); a range
    too short for the series gets even linear steps."""
    ax.set_xscale("log")
    low, high = float(percent.min()), float(percent.max())
    span = max(np.log10(high / low), 0.05)
    mantissas = (1, 2, 3, 4, 5, 6, 7, 8, 9) if span < 1.5 else (1, 2, 5)
    candidates = sorted((m * 10.0 ** e for e in range(int(np.floor(np.log10(low))) - 1, 3) for m in mantissas
                         if low / 1.02 <= m * 10.0 ** e <= high * 1.02), reverse=True)
    if len(candidates) < 3:  # a range within one step of the series (say 95-100%): even linear steps
        step = 10.0 ** np.floor(np.log10(high - low)) if high > low else 1.0
        step = next(step * f for f in (1, 2, 5, 10) if (high - low) / (step * f) <= 6)
        candidates = sorted(np.arange(np.ceil(low / step) * step, high + step / 2, step).round(10), reverse=True)
    ticks = []
    for tick in candidates:  # from the densest end: keep a tick when it is far enough from the last kept
        if not ticks or np.log10(ticks[-1] / tick) >= span / 7:
            ticks.append(float(tick))
    ax.xaxis.set_major_locator(FixedLocator(ticks) if ticks else LogLocator(base=10, subs=mantissas))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if not ax.xaxis_inverted():
        ax.invert_xaxis()
    ax.set_xlabel("density: weights kept (%, log scale, sparser →)")


def _nonzero_density(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The rows a log density axis can show (x > 0), and a note for the title naming the
    levels it cannot (density 0: every prunable weight gone), so none is dropped silently."""
    empty = frame[frame["x"] <= 0]
    if empty.empty:
        return frame, ""
    levels = ", ".join(str(level) for level in sorted(pd.unique(empty["level"])))
    return frame[frame["x"] > 0], f"; level {levels} at density 0 not shown on the log axis"


def _runs(frame: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """The frame with a ``run`` column and the style variable: ``"run"`` when it holds
    several runs, or a run holds several variants of one measurement (one line style
    each: variants are never averaged together), else None."""
    frame = frame.assign(run=run_names(frame) + variant_suffix(frame))
    return frame, "run" if frame["run"].nunique() > 1 else None


def _trunk(levels: pd.DataFrame, figure: str, columns: list[str]) -> pd.DataFrame:
    require(levels, ["baseline", "level", "replicate", "run_id", *columns], figure)
    trunk = levels[levels["baseline"] == TRUNK]
    if trunk.empty:
        raise ValueError(f"{figure}: no trunk rows (baseline == {TRUNK!r})")
    return trunk


def per_epoch(frame: pd.DataFrame) -> int | None:
    """The iterations per epoch the rows were trained with, when they all share one (the
    levels frame's ``iterations_per_epoch``), else None: what orders "1ep" against "500it"."""
    if "iterations_per_epoch" not in frame.columns:
        return None
    values = frame["iterations_per_epoch"].dropna().unique()
    return int(values[0]) if len(values) == 1 else None


def category_order(values: pd.Series, iterations_per_epoch: int | None = None) -> list:
    """Distinct values in a meaningful order: numbers by size, durations ("500it", "2ep") by
    length of training, anything else alphabetically. Durations that mix epochs and
    iterations need ``iterations_per_epoch`` (a ValueError says so)."""
    distinct = list(pd.unique(values.dropna()))
    if all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in distinct):
        return sorted(distinct)
    try:
        durations = {v: Duration.parse(str(v)) for v in distinct}
    except UserError:
        return sorted(distinct, key=str)
    if iterations_per_epoch is not None:
        return sorted(distinct, key=lambda v: durations[v].iterations_at(iterations_per_epoch))
    if any(d.epochs for d in durations.values()) and any(d.iterations for d in durations.values()):
        raise ValueError(f"cannot order {distinct} without iterations_per_epoch: "
                         "they mix epochs and iterations")
    return sorted(distinct, key=lambda v: (durations[v].epochs, durations[v].iterations))


def accuracy_vs_density(levels: pd.DataFrame, ax=None, tolerance: float = 0.005):
    """Test accuracy of IMP and its baselines against density, with each run's dense
    network's accuracy (level 0 of its trunk, mean over replicates; one dash pattern per
    run, up to four runs, else thin lines with one legend entry) ± ``tolerance`` (a fraction: 0.005 =
    0.5 points) as the matching band. Runs are named by how their configs differ."""
    figure = "accuracy_vs_density"
    require(levels, ["run_id", "replicate", "level", "baseline", "density", "test_accuracy"],
            figure)
    frame, dropped = _nonzero_density(levels.assign(x=100 * levels["density"], y=100 * levels["test_accuracy"]))
    present = list(pd.unique(frame["baseline"]))
    order = [b for b in BASELINE_ORDER if b in present] + sorted(set(present) - set(BASELINE_ORDER))
    palette = {b: BASELINE_COLOURS.get(b, "0.4") for b in order}
    frame, style = _runs(frame)
    ax = new_axes(ax)
    sns.lineplot(frame, x="x", y="y", hue="baseline", hue_order=order, palette=palette,
                 style=style, marker="o", markersize=5,
                 **band(frame), ax=ax)
    dense = frame[(frame["baseline"] == TRUNK) & (frame["level"] == 0)].groupby("run")["y"].mean()
    width = 100 * tolerance
    if len(dense) > len(DENSE_DASHES):  # too many to tell apart: thin lines, one legend entry
        for i, mean in enumerate(dense):
            ax.axhline(mean, color="0.5", linewidth=0.6, label="each run's dense network" if i == 0 else None)
        dense = dense.iloc[:0]
    for (run, mean), dashes in zip(dense.items(), DENSE_DASHES):
        name = f"dense {run} ({mean:.2f}%)" if len(dense) > 1 else f"dense network ({mean:.2f}%)"
        ax.axhline(mean, color="0.3", dashes=dashes, linewidth=1, label=name)
        ax.axhspan(mean - width, mean + width, color="0.5", alpha=0.15 / len(dense), linewidth=0,
                   label=f"matching (±{width:g} points)" if run == dense.index[0] else None)
    _density_axis(ax, frame["x"])
    ax.set_ylabel("test accuracy (%)")
    set_title(ax, f"Test accuracy vs density ({replicates_note(frame)}{dropped})")
    place_legend(ax, None if style else "baseline")
    return ax.figure


def rewind_comparison(levels: pd.DataFrame, by: str = "prune.rewind", ax=None,
                      iterations_per_epoch: int | None = None):
    """Test accuracy of the IMP trunk against density, one line per value of the config
    column ``by`` (rewind step, data-diet subset, ...)."""
    trunk = _trunk(levels, "rewind_comparison", ["density", "test_accuracy", by])
    trunk = trunk[trunk[by].notna()]
    if trunk.empty:
        raise ValueError(f"rewind_comparison: no trunk rows with a value of {by!r}")
    order = category_order(trunk[by], iterations_per_epoch or per_epoch(trunk))
    name = CONFIG_NAMES.get(by, by)
    if len(order) < 2:
        raise ValueError(f"rewind_comparison: every run has the same {name} ({order[0]}); the comparison needs "
                         f"runs with at least two values of {by}")
    frame, dropped = _nonzero_density(trunk.assign(x=100 * trunk["density"], y=100 * trunk["test_accuracy"],
                                                   **{name: trunk[by].astype(str)}))
    ax = new_axes(ax)
    palette = sns.color_palette("viridis" if len(order) > 3 else "colorblind", len(order))
    sns.lineplot(frame, x="x", y="y", hue=name, hue_order=[str(v) for v in order],
                 palette=palette, marker="o", markersize=5, **band(frame), ax=ax)
    _density_axis(ax, frame["x"])
    ax.set_ylabel("test accuracy (%)")
    set_title(ax, f"IMP by {name} ({replicates_note(frame)}{dropped})")
    place_legend(ax, name)
    return ax.figure


def _select(barriers: pd.DataFrame, figure: str, kinds, split: str, metric: str,
            convention: str) -> pd.DataFrame:
    if convention not in ("interpolated", "mean"):
        raise ValueError(f"{figure}: convention is 'interpolated' or 'mean', not {convention!r}")
    require(barriers, ["run_id", "replicate", "kind", "level", "split", "metric", convention],
            figure)
    rows = barriers[barriers["kind"].isin(kinds) & (barriers["split"] == split)
                    & (barriers["metric"] == metric) & barriers[convention].notna() & raw(barriers)]
    if rows.empty:
        raise ValueError(f"{figure}: no {'/'.join(kinds)} barriers of {split} {metric}")
    scale = 100 if metric == "error" else 1
    return rows.assign(y=scale * rows[convention])


def _barrier_label(split: str, metric: str, convention: str) -> str:
    unit = "percentage points" if metric == "error" else "nats"
    return f"{split} {metric} barrier ({unit}, {convention})"


def barrier_curves(curves: pd.DataFrame, ax=None, split: str = "test", metric: str = "error"):
    """Error (or loss) along the linear path between the final networks of levels L and
    L+1, one line per pair of levels (mean over replicates, band as in the module docstring)."""
    figure = "barrier_curves"
    require(curves, ["run_id", "replicate", "kind", "level", "label", "alpha", "split",
                     "metric", "value"], figure)
    rows = curves[(curves["kind"] == "successive") & (curves["split"] == split)
                  & (curves["metric"] == metric) & raw(curves)]
    if rows.empty:
        raise ValueError(f"{figure}: no successive-level curves of {split} {metric}")
    rows = rows.assign(y=(100 if metric == "error" else 1) * rows["value"])
    order = list(rows.sort_values("level")["label"].drop_duplicates())
    rows, style = _runs(rows.rename(columns={"label": "levels"}))
    ax = new_axes(ax)
    sns.lineplot(rows, x="alpha", y="y", hue="levels", hue_order=order,
                 palette=sns.color_palette("viridis", len(order)), style=style,
                 **band(rows), ax=ax)
    ax.set_xlabel("interpolation α (0 = level L, 1 = level L+1)")
    ax.set_ylabel(f"{split} {metric} ({'%' if metric == 'error' else 'nats'})")
    ax.set_xlim(0, 1)
    set_title(ax, f"Linear paths between successive levels ({replicates_note(rows)})")
    place_legend(ax, None if style else "levels")
    return ax.figure


def barrier_vs_level(barriers: pd.DataFrame, ax=None, split: str = "test",
                     metric: str = "error", convention: str = "interpolated"):
    """Barriers between successive levels and instability (mean barrier between
    siblings) against density, mean over pairs and replicates (band as in the module docstring)."""
    rows = _select(barriers, "barrier_vs_level", ("successive", "instability"), split,
                   metric, convention)
    rows, style = _runs(rows.assign(barrier=rows["kind"].map(KIND_NAMES)))
    by_density = "density" in rows and rows["density"].notna().all()
    x = "x" if by_density else "level"
    dropped = ""
    if by_density:
        rows, dropped = _nonzero_density(rows.assign(x=100 * rows["density"]))
    order = [KIND_NAMES[k] for k in KIND_NAMES if k in set(rows["kind"])]
    ax = new_axes(ax)
    ax.axhline(0, color="0.6", linewidth=0.8)
    sns.lineplot(rows, x=x, y="y", hue="barrier", hue_order=order,
                 palette=sns.color_palette("colorblind", 2)[:len(order)],
                 style=style, marker="o", markersize=5,
                 **band(rows), ax=ax)
    if by_density:
        _density_axis(ax, rows["x"])
    else:
        ax.set_xlabel("IMP level")
    ax.set_ylabel(_barrier_label(split, metric, convention))
    set_title(ax, f"Error barriers along IMP ({replicates_note(rows)}{dropped})")
    place_legend(ax, None if style else "barrier")
    return ax.figure


def instability_vs(barriers: pd.DataFrame, by: str = "prune.rewind", ax=None,
                   split: str = "test", metric: str = "error",
                   convention: str = "interpolated", iterations_per_epoch: int | None = None):
    """Instability (barrier between siblings) against a config column, e.g. the rewind
    step (Frankle et al. 2020, Fig. 3), one line per level."""
    figure = "instability_vs"
    require(barriers, [by], figure)
    rows = _select(barriers, figure, ("instability",), split, metric, convention)
    rows = rows[rows[by].notna()]
    if rows.empty:
        raise ValueError(f"{figure}: no instability rows with a value of {by!r}")
    order = [str(v) for v in category_order(rows[by], iterations_per_epoch)]
    level_order = [str(v) for v in sorted(rows["level"].unique())]
    rows = rows.assign(x=rows[by].astype(str), hue=rows["level"].astype(str) + variant_suffix(rows))
    level_order = sorted(rows["hue"].unique(), key=lambda h: (int(h.split(" ")[0]), h))
    # several runs at one value of `by` (e.g. other seeds) are pooled, as replicates are
    ax = new_axes(ax)
    ax.axhline(0, color="0.6", linewidth=0.8)
    sns.pointplot(rows, x="x", y="y", hue="hue", order=order, hue_order=level_order,
                  palette=sns.color_palette("viridis", len(level_order)),
                  **band(rows), dodge=0.3 if len(level_order) > 1 else False,
                  markersize=5, linewidth=1.5, ax=ax)
    ax.set_xlabel(CONFIG_NAMES.get(by, by))
    ax.set_ylabel(_barrier_label(split, metric, convention))
    set_title(ax, f"Instability by {CONFIG_NAMES.get(by, by)} ({replicates_note(rows)})")
    place_legend(ax, "level")
    return ax.figure


def hessian_vs_level(measurements: pd.DataFrame, ax=None):
    """Top eigenvalue of the training-loss Hessian, restricted to the unpruned weights,
    of each measured trunk level's final network (one line per run and variant)."""
    require(measurements, ["run_id", "replicate", "level", "kind", "variant", "hessian_top_eigenvalue"],
            "hessian_vs_level")
    rows = measurements[measurements["hessian_top_eigenvalue"].notna()]
    if rows.empty:
        raise ValueError("hessian_vs_level: no level has a measured Hessian eigenvalue")
    rows, style = _runs(rows)
    ax = new_axes(ax)
    sns.lineplot(rows, x="level", y="hessian_top_eigenvalue", hue=style, style=style,
                 palette="colorblind" if style else None, marker="o", markersize=6,
                 **band(rows), ax=ax)
    ax.set_xlabel("IMP level")
    ax.set_ylabel("top Hessian eigenvalue $\\lambda_{max}$\n(train loss, unpruned weights)")
    set_title(ax, f"Sharpness along IMP ({replicates_note(rows)})")
    ax.xaxis.get_major_locator().set_params(integer=True)
    if style:
        place_legend(ax, "run")
    return ax.figure


# name -> (function, the frame it takes). Each is called as function(frame, ax=None).
FIGURES = {
    "accuracy_vs_density": (accuracy_vs_density, "levels"),
    "rewind_comparison": (rewind_comparison, "levels"),
    "hessian_vs_level": (hessian_vs_level, "measurements"),
    "training_accuracy": (training_accuracy, "metrics"),
    "training_loss": (training_loss, "metrics"),
    "prune_limit": (prune_limit, "measurements"),
    "spectrum_masses": (spectrum_masses, "measurements"),
    "directional_curvature": (directional_curvature, "directions"),
    "loss_rise_ratio": (loss_rise_ratio, "directions"),
    "barrier_curves": (barrier_curves, "curves"),
    "barrier_vs_level": (barrier_vs_level, "barriers"),
    "aligned_barriers": (aligned_barriers, "barriers"),
    "instability_vs": (instability_vs, "barriers"),
    "per_example_histogram": (per_example_histogram, "per_example"),
    "score_histogram": (score_histogram, "scores"),
    "score_scatter": (score_scatter, "scores"),
    "subset_pruning_curve": (subset_pruning_curve, "levels"),
    "subset_window": (subset_window, "levels"),
    "group_barrier_vs_spawn": (group_barrier_vs_spawn, "measurements"),
    "ntk_velocity": (ntk_velocity, "ntk"),
}

__all__ = ["FIGURES", "FIGSIZE", "category_order", *FIGURES]
