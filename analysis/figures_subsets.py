"""Figures of the experiments of Paul, Ganguli and Dziugaite 2021, "Deep learning on a
data diet". The first two take the ``levels`` frame of :mod:`analysis.load`, the dense
network (level 0 of the trunk) of each run, against the ``[subset]`` settings of its config.

- :func:`subset_pruning_curve` is the paper's Fig. 1: test accuracy against the fraction
  of the training set pruned, one line per selection (score and rule, or random). Runs on
  the whole training set (``subset.keep = 1``) are every line's point at 0%.
- :func:`subset_window` is its Fig. 2: test accuracy against where a window of the score
  ranking starts (``subset.offset``, from the highest score down), one line per label-noise
  level and kept fraction.
- :func:`group_barrier_vs_spawn` is its Fig. 4, from the ``measurements`` frame: barriers
  between siblings on the lowest- and highest-score examples against the spawn step.
- :func:`ntk_velocity` is its Fig. 3, from the ``ntk`` frame: the kernel velocity on the
  low-score, high-score and random groups during training.

Conventions as in :mod:`analysis.figures`.
"""

import pandas as pd
import seaborn as sns

from analysis.style import band, new_axes, place_legend, replicates_note, require, run_names, set_title

TRUNK = "imp"
COLUMNS = ["subset.keep", "subset.rule", "subset.score", "subset.score_step", "subset.offset"]
# [subset] keys that mean something for some rules only (elsewhere they are the defaults)
RULE_KEYS = {"subset.score_runs": ("hardest", "easiest", "window", "ccs"),
             "subset.scores_file": ("hardest", "easiest", "window", "ccs"),
             "subset.ccs_hard_cut": ("ccs",), "subset.ccs_strata": ("ccs",)}


def _applies(rows: pd.DataFrame, column: str) -> pd.Series:
    """Which rows' rule the config key ``column`` means something for."""
    if column not in RULE_KEYS:
        return pd.Series(True, index=rows.index)
    return rows["subset.rule"].isin(RULE_KEYS[column])


def _dense(levels: pd.DataFrame, figure: str) -> pd.DataFrame:
    require(levels, ["run_id", "replicate", "level", "baseline", "test_accuracy", "data.label_noise", *COLUMNS],
            figure)
    rows = levels[(levels["baseline"] == TRUNK) & (levels["level"] == 0)]
    if rows.empty:
        raise ValueError(f"{figure}: no dense networks (level 0 of the trunk)")
    return rows.assign(y=100 * rows["test_accuracy"])


def _joined(frame: pd.DataFrame, columns: list[str], separator: str, prefix: str = "") -> pd.Series:
    """Each row's values of ``columns`` as one string ("" without columns)."""
    if not columns:
        return pd.Series("", index=frame.index)
    return pd.Series([prefix + separator.join(map(str, values)) for values in frame[columns].itertuples(index=False)],
                     index=frame.index, dtype=object)


def _lines(rows: pd.DataFrame, x: str, y: str, ax, labels: tuple[str, str, str, str], **extra):
    """One line per value of ``rows["line"]`` (sorted, or ``order``), with markers and the
    replicates' band; ``labels`` = x label, y label, title, legend title."""
    order = extra.pop("order", None) or sorted(rows["line"].unique())
    xlabel, ylabel, title, legend = labels
    ax = new_axes(ax)
    # With a style variable seaborn heads each part of the legend with its column's name.
    if legend in rows.columns:
        raise ValueError(f"the legend title {legend!r} is a column of the frame")
    rows = rows.rename(columns={"line": legend})
    sns.lineplot(rows, x=x, y=y, hue=legend, hue_order=order, marker="o", markersize=5,
                 palette=sns.color_palette("colorblind", len(order)), **band(rows), ax=ax, **extra)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    set_title(ax, f"{title} ({replicates_note(rows)})")
    place_legend(ax, None if extra.get("style") else legend)
    return ax


def _method(row: pd.Series) -> str:
    if row["subset.rule"] == "random":
        return "random"
    return f"{row['subset.score']}@{row['subset.score_step']} {row['subset.rule']}"


def subset_pruning_curve(levels: pd.DataFrame, ax=None):
    """Test accuracy of the dense network against the percentage of training examples
    pruned, 100 (1 - ``subset.keep``), one line per selection method (Paul et al. 2021,
    Fig. 1) and per other config difference of the runs (e.g. label noise). Runs on the
    whole training set with the same config but for ``[subset]`` are each line's 0%
    point. Window runs are left to :func:`subset_window`."""
    figure = "subset_pruning_curve"
    rows = _dense(levels, figure)
    rows = rows[rows["subset.rule"] != "window"]
    pruned = rows[rows["subset.keep"] < 1]
    if pruned.empty:
        raise ValueError(f"{figure}: no runs on a pruned training set (subset.keep < 1)")
    # Other config differences (label noise, learning rate, ...) make lines of their own.
    # So do the other [subset] settings that differ (a CCS hard cut, the budget, ...).
    # (Keys of one rule, such as a CCS hard cut, are said only on that rule's lines.)
    named = ("subset.keep", "subset.rule", "subset.score", "subset.score_step")
    others = [c for c in rows.columns if "." in c and c not in named
              and pruned[_applies(pruned, c)][c].astype(str).nunique() > 1]
    labels = [_method(row) + "".join(f", {c.split('.', 1)[1]}={row[c]}" for c in others
                                     if _applies(pruned.loc[[index]], c).iloc[0])
              for index, row in pruned.iterrows()]
    pruned = pruned.assign(method=labels)
    # A run on the whole training set is the 0% point of every method whose runs have its
    # config but for [subset]; a whole-set run of another config is no one's.
    fixed = [c for c in rows.columns if "." in c and not c.startswith("subset.")]
    whole = rows[rows["subset.keep"] >= 1]
    whole_key, pruned_key = _joined(whole, fixed, "|"), _joined(pruned, fixed, "|")
    lines = pd.concat([pruned] + [whole[whole_key.isin(set(pruned_key[pruned["method"] == m]))].assign(method=m)
                                  for m in pruned["method"].unique()])
    lines = lines.assign(x=100 * (1 - lines["subset.keep"]))
    if lines["x"].nunique() < 2:
        raise ValueError(f"{figure}: every run prunes the same fraction ({lines['x'].iloc[0]:g}%); the curve "
                         "needs runs at two or more values of subset.keep")
    order = sorted(lines["method"].unique(), key=lambda m: (m == "random", m))
    return _lines(lines.assign(line=lines["method"]), "x", "y", ax, (
        "training examples pruned (%)", "test accuracy (%)", "Training on a pruned data set", "kept by"),
        order=order).figure


def subset_window(levels: pd.DataFrame, ax=None):
    """Test accuracy of the dense network trained on a window of the score ranking against
    the window's start, 100 ``subset.offset`` (% of the training set skipped from the
    highest score down), one line per label noise and kept fraction (Paul et al. 2021,
    Fig. 2)."""
    figure = "subset_window"
    rows = _dense(levels, figure)
    windows = rows[rows["subset.rule"] == "window"]
    if windows.empty:
        raise ValueError(f"{figure}: no runs on a window of the ranking (subset.rule = 'window')")
    # A window at offset 0 is the hardest examples, and its run id says "hardest".
    ranking = [c for c in rows.columns if c.startswith("subset.") and c not in ("subset.rule", "subset.offset")]
    same = set(_joined(windows, ranking, "|"))
    top = rows[(rows["subset.rule"] == "hardest") & _joined(rows, ranking, "|").isin(same)]
    rows = pd.concat([windows, top])
    if rows["subset.offset"].nunique() < 2:
        raise ValueError(f"{figure}: every window starts at the same offset; the figure needs runs at two or "
                         "more values of subset.offset")
    rows = rows.assign(x=100 * rows["subset.offset"],
                       line=[f"{100 * noise:g}% noise, keep {100 * keep:g}%, {score}"
                             for noise, keep, score in zip(rows["data.label_noise"], rows["subset.keep"],
                                                           rows["subset.score"])])
    return _lines(rows, "x", "y", ax, ("window start: training examples skipped from the highest score (%)",
                                       "test accuracy (%)", "A sliding window of the score ranking",
                                       "labels, kept, score")).figure


GROUP_NAMES = {"low": "lowest scores", "high": "highest scores", "file": "index file"}


def group_barrier_vs_spawn(measurements: pd.DataFrame, ax=None):
    """Error barrier on the training examples of each group between sibling copies,
    against their spawn step: the ``groups`` measurements (:mod:`landscape.groups`) of
    runs at several rewind points (Paul et al. 2021, Fig. 4), one line per group and
    level. The barrier is in percentage points of training error on the group."""
    figure = "group_barrier_vs_spawn"
    require(measurements, ["run_id", "replicate", "level", "kind", "spawn_step"], figure)
    rows = measurements[measurements["kind"] == "groups"]
    columns = [c for c in rows.columns if c.startswith("group_barrier_") and c.endswith("_train_error")]
    if rows.empty or not columns:
        raise ValueError(f"{figure}: no group barriers (measure them with `lth groups RUN`)")
    long = rows.melt(id_vars=["run_id", "replicate", "level", "spawn_step"], value_vars=columns,
                     var_name="group", value_name="barrier").dropna(subset=["barrier"])
    name = long["group"].str.removeprefix("group_barrier_").str.removesuffix("_train_error")
    long = long.assign(y=100 * long["barrier"],
                       line=name.map(lambda g: GROUP_NAMES.get(g, g)) + " (level " + long["level"].astype(str) + ")")
    if long["spawn_step"].nunique() < 2:
        raise ValueError(f"{figure}: every measurement spawns its siblings at step {long['spawn_step'].iloc[0]:g}; "
                         "the figure needs runs at two or more rewind points")
    ax = _lines(long, "spawn_step", "y", ax, ("spawn step of the siblings (iterations)",
                                              "barrier on the group (train error, points)",
                                              "Connectivity by example group", "example group"))
    ax.axhline(0, color="0.6", linewidth=0.8)
    positive = long["spawn_step"][long["spawn_step"] > 0]
    if len(positive) and positive.max() / positive.min() > 30:  # early spawn steps apart: symmetric log
        ax.set_xscale("symlog", linthresh=float(positive.min()))
        ax.set_xlabel("spawn step of the siblings (iterations, log scale above the first)")
    return ax.figure


NTK_GROUPS = {"low": "lowest scores", "high": "highest scores", "random": "random"}


def ntk_velocity(ntk: pd.DataFrame, ax=None):
    """Velocity of the empirical NTK (kernel distance per step between successive
    checkpoints, :mod:`landscape.ntk`) against the training step, one line per example
    group and level, one line style per run (e.g. with and without label noise); log y."""
    figure = "ntk_velocity"
    require(ntk, ["run_id", "replicate", "level", "group", "step", "velocity"], figure)
    rows = ntk.assign(line=ntk["group"].map(lambda g: NTK_GROUPS.get(g, g)) + " (level " + ntk["level"].astype(str) + ")")
    rows = rows.assign(run=run_names(rows))
    order = sorted(rows["line"].unique(), key=lambda line: (line.split(" (")[1], line))
    ax = _lines(rows, "step", "velocity", ax, ("training step (iterations)", "kernel velocity (distance per step)",
                                              "Velocity of the empirical NTK", "example group"),
                order=order, style="run" if rows["run"].nunique() > 1 else None)
    if (rows["velocity"] > 0).all():
        ax.set_yscale("log")
    return ax.figure
