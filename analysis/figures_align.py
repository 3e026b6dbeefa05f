"""Barriers raw, after permutation alignment and with REPAIR, on one axis.

The other barrier figures show raw barriers only (:func:`raw`); this one puts each pair's
variants side by side (``landscape.align``, ``landscape.repair``; Ainsworth et al. 2023,
"Git Re-Basin"; Jordan et al. 2023, "REPAIR").
"""

import pandas as pd
import seaborn as sns

from analysis.style import band, new_axes, place_legend, replicates_note, require, set_title

ORDER = ["raw", "weights", "activations", "raw+repair", "weights+repair", "activations+repair"]


def raw(frame: pd.DataFrame) -> pd.Series:
    """The rows of raw barriers (all of them in a frame without an ``alignment`` column)."""
    if "alignment" not in frame.columns:
        return pd.Series(True, index=frame.index)
    return frame["alignment"].fillna("raw") == "raw"


def _pair_name(row) -> str:
    if row["kind"] == "successive":
        return f"levels {row['label'].replace('->', '→')}"
    if row["kind"] == "instability":
        return f"siblings, level {row['level']}"
    if row["kind"] == "perturb":
        return f"{row['label']}, level {row['level']}"
    return str(row["label"])


def aligned_barriers(barriers: pd.DataFrame, ax=None, split: str = "test", metric: str = "error",
                     convention: str = "interpolated"):
    """Each measured pair's barrier raw, aligned and REPAIRed (mean over sibling pairs
    and replicates, band as elsewhere): the pairs measured in more than one way."""
    figure = "aligned_barriers"
    require(barriers, ["run_id", "replicate", "kind", "level", "label", "split", "metric", "alignment", convention],
            figure)
    rows = barriers[(barriers["split"] == split) & (barriers["metric"] == metric) & barriers[convention].notna()]
    rows = rows.assign(pair=rows.apply(_pair_name, axis=1) if len(rows) else [])
    ways = rows.groupby(["run_id", "pair"])["alignment"].transform("nunique") if len(rows) else rows["alignment"]
    rows = rows[ways > 1]
    if rows.empty:
        raise ValueError(f"{figure}: no pair measured both raw and aligned or REPAIRed "
                         "(`lth barrier RUN --align weights --repair`)")
    if rows["run_id"].nunique() > 1:
        rows = rows.assign(pair=rows["run_id"].astype(str) + ": " + rows["pair"])
    rows = rows.assign(y=(100 if metric == "error" else 1) * rows[convention])
    order = [way for way in ORDER if way in set(rows["alignment"])]
    pairs = list(rows.sort_values(["kind", "level"])["pair"].drop_duplicates())
    ax = new_axes(ax)
    ax.axhline(0, color="0.6", linewidth=0.8)
    sns.pointplot(rows, x="pair", y="y", hue="alignment", order=pairs, hue_order=order,
                  palette=sns.color_palette("colorblind", len(order)), **band(rows),
                  dodge=0.3 if len(order) > 1 else False, markersize=5, linewidth=1.5, ax=ax)
    ax.set_xlabel("pair of networks")
    if len(pairs) > 3:
        ax.tick_params(axis="x", labelrotation=30)
    unit = "percentage points" if metric == "error" else "nats"
    ax.set_ylabel(f"{split} {metric} barrier ({unit}, {convention})")
    set_title(ax, f"Barriers raw, aligned and REPAIRed ({replicates_note(rows)})")
    place_legend(ax, "alignment")
    return ax.figure
