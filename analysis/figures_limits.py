"""Figures of the prune limit (:mod:`landscape.spectra`): predicted against measured
limits per pruning rule, the curvature spectrum's masses by level, and the curvature
along each rule's pruning direction. Conventions as in :mod:`analysis.figures`."""

import pandas as pd
import seaborn as sns

from analysis.style import (band, new_axes, place_legend, replicates_note, require, run_names, set_title,
                            variant_suffix)

RULES = ("magnitude", "random")
# column prefix -> label; the rule follows the prefix ("predicted_limit_random", ...)
ESTIMATES = {"predicted_limit": "predicted (N_eff count)", "quadratic_limit": "predicted (exact quadratic)",
             "measured_limit_{rule}_level": "measured, vs level L", "measured_limit_{rule}_dense": "measured, vs dense"}
MASSES = {"hessian_negative_mass": "Hessian: negative", "hessian_zero_mass": "Hessian: near zero",
          "ggn_zero_mass": "Gauss-Newton: near zero"}
ID = ["run_id", "replicate", "level"]


def _column(prefix: str, rule: str) -> str:
    return prefix.format(rule=rule) if "{rule}" in prefix else f"{prefix}_{rule}"


def _runs(rows: pd.DataFrame) -> pd.DataFrame:
    return rows.assign(run=run_names(rows) + variant_suffix(rows))


def prune_limit(measurements: pd.DataFrame, ax=None):
    """The largest fraction of a level's remaining weights prunable at once, by rule
    (line style): the two predictions from the Gauss-Newton spectrum, and the measured
    limits relative to level L itself (the theory's notion) and to the dense network
    (IMP's notion), kept apart by colour. A measured limit the checked fractions do not
    bracket is censored: an open triangle down where no fraction matched (the limit is
    below the smallest checked), up where every one did (it is at least the largest)."""
    figure = "prune_limit"
    require(measurements, [*ID, "kind", "variant"], figure)
    pieces = []
    for prefix, label in ESTIMATES.items():
        for rule in RULES:
            column = _column(prefix, rule)
            if column in measurements.columns:
                flag = column + "_censored"
                part = measurements[[*ID, "kind", "variant", column]].assign(
                    censored=measurements[flag] if flag in measurements.columns else 0.0)
                part = part.dropna(subset=[column]).rename(columns={column: "fraction"})
                pieces.append(part.assign(estimate=label, rule=rule))
    rows = pd.concat(pieces, ignore_index=True) if pieces else pd.DataFrame()
    if rows.empty:
        raise ValueError(f"{figure}: no level has a predicted or measured prune limit for a rule "
                         "(measure with lth hessian RUN --check ...)")
    rows = _runs(rows.assign(y=100 * rows["fraction"]))
    order = [label for label in ESTIMATES.values() if label in set(rows["estimate"])]
    several = rows["run"].nunique() > 1
    ax = new_axes(ax)
    sns.lineplot(rows, x="level", y="y", hue="estimate", hue_order=order, style="rule",
                 style_order=[r for r in RULES if r in set(rows["rule"])], units="run" if several else None,
                 estimator=None if several else "mean", palette=sns.color_palette("colorblind", 4)[:len(order)],
                 markers=True, markersize=7, **({} if several else band(rows)), ax=ax)
    colours = dict(zip(order, sns.color_palette("colorblind", 4)))
    for (direction, label), marker in ((( -1, "limit below this (none matched)"), "v"),
                                       ((1, "limit at least this (all matched)"), "^")):
        points = rows[rows["censored"].fillna(0) == direction]
        if not points.empty:
            ax.scatter(points["level"], points["y"], marker=marker, s=90, facecolors="none", linewidths=1.5,
                       edgecolors=[colours[e] for e in points["estimate"]], label=label, zorder=5)
    ax.set_xlabel("IMP level")
    ax.set_ylabel("largest one-shot prune\n(% of remaining weights)")
    ax.set_ylim(-2, 102)
    ax.xaxis.get_major_locator().set_params(integer=True)
    set_title(ax, f"Prune limit: predicted vs measured ({replicates_note(rows)})")
    place_legend(ax)
    return ax.figure


def spectrum_masses(measurements: pd.DataFrame, ax=None):
    """The fraction of the curvature's eigenvalues (on the unpruned coordinates) that
    are negative (Hessian; above 5% the prediction is outside the theory's domain) or
    near zero (|lambda| <= 1e-4 max |lambda|), by level."""
    figure = "spectrum_masses"
    present = [c for c in MASSES if c in measurements.columns]
    if not present:
        raise ValueError(f"{figure}: needs columns {list(MASSES)}; none present")
    require(measurements, ID, figure)
    rows = measurements.melt(id_vars=ID + ["variant", "kind"], value_vars=present, var_name="mass",
                             value_name="fraction").dropna(subset=["fraction"])
    if rows.empty:
        raise ValueError(f"{figure}: no level has a measured spectrum")
    rows = _runs(rows.assign(y=100 * rows["fraction"], mass=rows["mass"].map(MASSES)))
    several = rows["run"].nunique() > 1
    ax = new_axes(ax)
    sns.lineplot(rows, x="level", y="y", hue="mass", style="run" if several else "mass", markers=True,
                 markersize=7, palette=sns.color_palette("colorblind", 3)[:len(present)], **band(rows), ax=ax)
    ax.axhline(5, color="0.5", linestyle=":", linewidth=1, label="5%: outside the domain")
    ax.set_xlabel("IMP level")
    ax.set_ylabel("share of eigenvalues (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    set_title(ax, f"Curvature spectrum by level ({replicates_note(rows)})")
    place_legend(ax)
    return ax.figure


def directional_curvature(directions: pd.DataFrame, ax=None):
    """The Gauss-Newton curvature ``d^T G d / |d|^2`` along the direction each rule prunes
    (d = the removed weights), against the fraction pruned, one colour per level: lower
    means the rule removes weights along flatter directions (log scale)."""
    figure = "directional_curvature"
    require(directions, [*ID, "variant", "rule", "fraction", "curvature"], figure)
    rows = directions[directions["curvature"] > 0]
    if rows.empty:
        raise ValueError(f"{figure}: no positive curvature to plot")
    return _by_fraction(rows, "curvature", ax, "curvature along the pruning direction\n$d^T G d / |d|^2$ (log scale)",
                        "Where each rule prunes")


def loss_rise_ratio(directions: pd.DataFrame, ax=None):
    """How far the quadratic model is from the loss: the training-loss rise measured right
    after pruning (no retraining) over the rise ``d^T G d / 2`` the Gauss-Newton quadratic
    model predicts along the same direction, against the fraction pruned (log scale; 1 =
    the quadratic model is exact)."""
    figure = "loss_rise_ratio"
    require(directions, [*ID, "variant", "rule", "fraction", "loss_rise", "quadratic_rise"], figure)
    rows = directions[(directions["quadratic_rise"] > 0) & (directions["loss_rise"] > 0)]
    if rows.empty:
        raise ValueError(f"{figure}: no direction with a positive measured and quadratic loss rise")
    rows = rows.assign(ratio=rows["loss_rise"] / rows["quadratic_rise"])
    ax = new_axes(ax)
    ax.axhline(1, color="0.5", linestyle=":", linewidth=1, label="quadratic model exact")
    return _by_fraction(rows, "ratio", ax, "loss rise after pruning:\nmeasured / quadratic model (log scale)",
                        "The quadratic model along pruning directions")


def _by_fraction(rows: pd.DataFrame, y: str, ax, label: str, title: str):
    """``y`` (log scale) against the percent pruned, one colour per level, one line style
    per rule."""
    rows = rows.assign(percent=100 * rows["fraction"], level=rows["level"].astype(int))
    ax = new_axes(ax)
    sns.lineplot(rows, x="percent", y=y, hue="level", style="rule",
                 style_order=[r for r in RULES if r in set(rows["rule"])],
                 palette="viridis", markers=True, markersize=6, **band(rows), ax=ax)
    ax.set_yscale("log")
    ax.set_xlabel("fraction of remaining weights pruned (%)")
    ax.set_ylabel(label)
    set_title(ax, f"{title} ({replicates_note(rows)})")
    place_legend(ax)
    return ax.figure
