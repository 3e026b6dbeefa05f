"""Data-diet figures: example scores and per-example barriers.

Scores are unitless (EL2N, GraNd) or counts (forgetting; ``inf`` = never learned, which a
histogram cannot bin: the count is printed instead, and a scatter draws them at the far
end of the axis). Noisy examples (permuted labels) are drawn in vermillion over the rest.
"""

import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from scipy.stats import rankdata, spearmanr

from analysis.style import new_axes, place_legend, replicates_note, require, set_title, variant_suffix

SCORE_UNITS = {"el2n": "EL2N (error-vector norm)", "grand": "GraNd (gradient norm)",
               "forgetting": "forgetting events (count)"}
CLEAN, NOISY = "clean label", "noisy label"
NOISE_COLOURS = dict(zip((CLEAN, NOISY), sns.color_palette("colorblind").as_hex()[0:4:3]))


def _noise_labels(noisy: pd.Series) -> pd.Series:
    return noisy.astype(bool).map({False: CLEAN, True: NOISY})


def score_histogram(scores: pd.DataFrame, ax=None):
    """One histogram per score name (log count axis), noisy examples layered in their own
    colour. With ``ax`` the frame must hold a single score name."""
    figure = "score_histogram"
    require(scores, ["name", "value", "noisy", "position"], figure)
    names = list(pd.unique(scores["name"]))
    if ax is not None and len(names) > 1:
        raise ValueError(f"{figure}: {len(names)} scores need one panel each; pass ax=None")
    single = ax is not None
    if not single:
        columns = min(3, len(names))
        rows = math.ceil(len(names) / columns)
        fig, axes = plt.subplots(rows, columns, figsize=(0.6 + 3.4 * columns, 0.6 + 3.0 * rows),
                                 layout="constrained", squeeze=False)
        for unused in axes.flat[len(names):]:
            unused.set_visible(False)
    else:
        fig, axes = ax.figure, np.array([ax])
    any_noisy = bool(scores["noisy"].any())
    for name, panel in zip(names, axes.flat):
        rows = scores[scores["name"] == name]
        finite = rows[np.isfinite(rows["value"])].assign(example=_noise_labels(rows["noisy"]))
        values = finite["value"]
        # counts (forgetting events) get one bin per integer
        discrete = bool(len(values) and (values == values.round()).all()
                        and values.max() - values.min() <= 60)
        sns.histplot(finite, x="value", hue="example" if any_noisy else None,
                     hue_order=[CLEAN, NOISY], palette=NOISE_COLOURS if any_noisy else None,
                     multiple="layer", element="step", discrete=discrete or None,
                     bins="auto" if discrete else 40, legend=False, ax=panel)
        panel.set_yscale("log")
        if discrete:
            panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        never = int(np.isposinf(rows["value"]).sum())
        unit = SCORE_UNITS.get(rows["score"].iloc[0], "score") if "score" in rows else "score"
        panel.set_xlabel(unit + (f"\n({never} at ∞ not shown)" if never else ""))
        panel.set_ylabel("examples (log scale)")
        if not single:
            panel.set_title(name, fontsize=11)
    note = f"{scores['position'].nunique()} examples"
    note += f", {int(scores.drop_duplicates('position')['noisy'].sum())} noisy" if any_noisy else ""
    handles = [plt.Rectangle((0, 0), 1, 1, color=NOISE_COLOURS[k], alpha=0.5)
               for k in (CLEAN, NOISY)]
    if single:  # the caller's figure: title and legend on the axes only
        set_title(ax, f"{names[0]} ({note})")
        if any_noisy:
            ax.legend(handles, [CLEAN, NOISY], loc="upper left", bbox_to_anchor=(1.02, 1),
                      borderaxespad=0, frameon=False, fontsize=10)
        return fig
    fig.suptitle(f"Example scores ({note})", fontsize=12)
    if any_noisy:
        fig.legend(handles, [CLEAN, NOISY], loc="outside right upper", frameon=False, fontsize=10)
    return fig


def _score_column(scores: pd.DataFrame, name: str, figure: str) -> pd.Series:
    """A score's values (or the input norm, ``name="input_norm"``) indexed by position."""
    if name == "input_norm":
        rows = scores.drop_duplicates("position")
        return rows.set_index("position")["input_norm"].rename(name)
    rows = scores[scores["name"] == name]
    if rows.empty:
        have = sorted(scores["name"].unique())
        raise ValueError(f"{figure}: no score named {name!r}; have {have} and 'input_norm'")
    if rows["position"].duplicated().any():
        raise ValueError(f"{figure}: score {name!r} has several values per example")
    return rows.set_index("position")["value"].rename(name)


def _finite_for_drawing(values: pd.Series) -> tuple[pd.Series, bool]:
    """+inf moved just past the largest finite value, so it can be drawn."""
    infinite = np.isposinf(values)
    if not infinite.any():
        return values, False
    finite = values[~infinite]
    top = finite.max() if len(finite) else 0.0
    span = (top - finite.min()) if len(finite) else 1.0
    return values.where(~infinite, top + 0.1 * (span or 1.0)), True


def score_scatter(scores: pd.DataFrame, x_name: str | None = None, y_name: str | None = None,
                  ax=None):
    """Two scores of the same examples against each other (``"input_norm"`` names the
    input norm), with their Spearman rank correlation; the first two score names by
    default. Ranks treat ``inf`` as larger than every number."""
    figure = "score_scatter"
    require(scores, ["name", "value", "noisy", "position", "input_norm"], figure)
    names = list(pd.unique(scores["name"]))
    if x_name is None or y_name is None:
        if len(names) < 2:
            raise ValueError(f"{figure}: needs two scores, the frame has {names}")
        x_name, y_name = x_name or names[0], y_name or names[1]
    pair = pd.concat([_score_column(scores, x_name, figure).rename("x"),
                      _score_column(scores, y_name, figure).rename("y")],
                     axis=1, join="inner").dropna()
    if len(pair) < 3:
        raise ValueError(f"{figure}: {x_name} and {y_name} share {len(pair)} examples; need 3")
    rho = spearmanr(rankdata(pair["x"]), rankdata(pair["y"])).statistic
    noisy = scores.groupby("position")["noisy"].any().reindex(pair.index, fill_value=False)
    x, x_inf = _finite_for_drawing(pair["x"])
    y, y_inf = _finite_for_drawing(pair["y"])
    ax = new_axes(ax)
    # (name, colour, rows): clean and noisy examples, or all of them when none is noisy
    groups = [(CLEAN if noisy.any() else "examples", NOISE_COLOURS[CLEAN], ~noisy)]
    groups += [(NOISY, NOISE_COLOURS[NOISY], noisy)] if noisy.any() else []
    for _, colour, chosen in groups:
        ax.scatter(x[chosen], y[chosen], s=4, alpha=0.25, linewidths=0, rasterized=True,
                   color=colour)
    handles = [Line2D([], [], linestyle="", marker="o", color=colour,
                      label=f"{label} ({int(chosen.sum())})") for label, colour, chosen in groups]
    ax.legend(handles=handles, title=f"Spearman ρ = {rho:.3f}", loc="upper left",
              bbox_to_anchor=(1.02, 1), borderaxespad=0, frameon=False, fontsize=10,
              title_fontsize=10)
    ax.set_xlabel(x_name + (" (∞ drawn at the right end)" if x_inf else ""))
    ax.set_ylabel(y_name + (" (∞ drawn at the top)" if y_inf else ""))
    set_title(ax, f"{y_name} vs {x_name} ({len(pair)} examples)")
    return ax.figure


def per_example_histogram(per_example: pd.DataFrame, ax=None):
    """Per-example midpoint barriers ``B_i`` between siblings, one histogram per level (and
    run), the threshold tau as a dashed line and the fraction with ``B_i <= tau`` in the
    legend. The x axis spans the central 99.8% of the values (the count beyond is given)."""
    figure = "per_example_histogram"
    require(per_example, ["run_id", "replicate", "level", "midpoint_barrier", "tau"], figure)
    rows = per_example[per_example["midpoint_barrier"].notna()]
    if rows.empty:
        raise ValueError(f"{figure}: no per-example barriers")
    rows = rows.assign(run_id=rows["run_id"].astype(str) + variant_suffix(rows))  # variants apart
    several = rows["run_id"].nunique() > 1
    groups = ["run_id", "level"] if several else ["level"]
    below = (rows["midpoint_barrier"] <= rows["tau"]).groupby([rows[g] for g in groups]).mean()
    names = {key: ("{} L{}: " if several else "L{1}: ").format(*(key if several else ("", key)))
             + f"{100 * fraction:.0f}%" for key, fraction in below.items()}
    keys = list(zip(*(rows[g] for g in groups))) if several else list(rows["level"])
    rows = rows.assign(group=[names[k] for k in keys])
    low, high = rows["midpoint_barrier"].quantile([0.001, 0.999])
    taus = sorted(rows["tau"].unique())
    low, high = min(low, *taus), max(high, *taus)
    beyond = int(((rows["midpoint_barrier"] < low) | (rows["midpoint_barrier"] > high)).sum())
    ax = new_axes(ax)
    order = list(names.values())
    sns.histplot(rows, x="midpoint_barrier", hue="group", hue_order=order,
                 palette=sns.color_palette("viridis", len(order)), stat="percent",
                 common_norm=False, element="step", fill=False, bins=60,
                 binrange=(low, high), ax=ax)
    for tau in taus:
        ax.axvline(tau, color="0.2", linestyle="--", linewidth=1, label=f"$\\tau$ = {tau:g}")
    ax.set_xlabel("midpoint barrier $B_i$ (train loss, nats)"
                  + (f"\n({beyond} values outside the range not shown)" if beyond else ""))
    ax.set_ylabel("examples (% of the level's)")
    set_title(ax, f"Per-example barriers between siblings ({replicates_note(rows)})")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6))
    place_legend(ax, "level: $B_i \\leq \\tau$")
    return ax.figure
