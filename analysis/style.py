"""What every figure shares: its size, a new Axes, the frame check, the legend outside
the axes, the title, the note on n, and labels that keep measurement variants apart."""

import matplotlib.pyplot as plt
import pandas as pd

FIGSIZE = (6.4, 4.2)  # inches; fonts keep matplotlib's 10 pt (titles 12 pt)


def require(frame: pd.DataFrame, columns, figure: str) -> None:
    """Raise ValueError, naming the figure, for an empty frame or a missing column."""
    if frame is None or len(frame) == 0:
        raise ValueError(f"{figure}: no rows to plot")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{figure}: the frame lacks column(s) {missing}")


def new_axes(ax=None):
    """``ax``, or the Axes of a new figure of the standard size with constrained layout."""
    if ax is None:
        _, ax = plt.subplots(figsize=FIGSIZE, layout="constrained")
    return ax


def place_legend(ax, title: str | None = None) -> None:
    """One legend right of the axes (never over the data): seaborn's entries plus any
    labelled reference lines or bands."""
    old = ax.get_legend()
    handles = list(old.legend_handles) if old else []
    labels = [t.get_text() for t in old.texts] if old else []
    for handle, label in zip(*ax.get_legend_handles_labels()):
        if label not in labels:
            handles.append(handle)
            labels.append(label)
    if title is None and old is not None:
        title = old.get_title().get_text() or None
    if handles:
        ax.legend(handles, labels, title=title, loc="upper left", bbox_to_anchor=(1.02, 1),
                  borderaxespad=0, frameon=False, fontsize=10, title_fontsize=10,
                  ncols=1 if len(labels) <= 14 else 2)


def set_title(ax, text: str) -> None:
    """Left-aligned, so a title wider than axes narrowed by an outside legend stays whole."""
    ax.set_title(text, loc="left", fontsize=11)


def band(frame: pd.DataFrame) -> dict:
    """seaborn's errorbar for a mean over replicates: a 95% bootstrap confidence band
    (seeded, so figures reproduce) when every run has at least 3 replicates; with 2, a
    bootstrap band is only the min-max range, so the range itself is drawn (and
    :func:`replicates_note` says so); with 1 there is no band."""
    if frame.groupby("run_id")["replicate"].nunique().min() >= 3:
        return {"errorbar": ("ci", 95), "seed": 0}
    return {"errorbar": ("pi", 100)}


def replicates_note(frame: pd.DataFrame) -> str:
    """``"n = 3 replicates"`` (per run; a range when runs differ), the number of runs, and
    what the band is when it is not a 95% confidence band (:func:`band`)."""
    counts = frame.groupby("run_id")["replicate"].nunique()
    low, high = int(counts.min()), int(counts.max())
    if low == high:
        note = f"n = {low} replicate{'s' * (high > 1)}"
    else:
        note = f"n = {low}–{high} replicates"
    if low == 2:
        note += ", band = range"
    return note + (f", {len(counts)} runs" if len(counts) > 1 else "")


def variant_suffix(frame: pd.DataFrame) -> pd.Series:
    """`` [<variant>]`` on the rows of a run that holds several variants of their
    measurement (other settings), else ``""``: labels that keep variants apart."""
    if "variant" not in frame.columns:
        return pd.Series("", index=frame.index)
    keys = ["run_id", "kind"] if "kind" in frame.columns else ["run_id"]
    several = frame.groupby(keys)["variant"].transform("nunique") > 1
    return (" [" + frame["variant"].astype(str) + "]").where(several, "")


LONGEST_NAME = 40  # characters of a run's name by config difference; longer: its id


def run_names(frame: pd.DataFrame) -> pd.Series:
    """Each row's run, named by how its config differs from the other runs' in the frame
    (``rewind=500it``, ``rewind=0it, lr=0.05``: the config columns ``section.key`` whose
    values differ, by key), or by run id where the configs do not tell the runs apart or
    such a name would be over :data:`LONGEST_NAME` characters."""
    runs = frame.drop_duplicates("run_id")
    differing = [c for c in frame.columns if "." in c and runs[c].astype(str).nunique() > 1]
    if not differing or len(runs) < 2:
        return frame["run_id"].astype(str)
    names = {row["run_id"]: ", ".join(f"{c.split('.', 1)[1]}={row[c]}" for c in differing)
             for _, row in runs.iterrows()}
    if len(set(names.values())) < len(names):  # two runs with the same differing values: ids
        return frame["run_id"].astype(str)
    if max(map(len, names.values())) > LONGEST_NAME:  # a legend that would crowd out the axes
        return frame["run_id"].astype(str)
    return frame["run_id"].map(names)
