"""Figures to files, one self-contained HTML report, and group comparisons.

The report embeds every figure the runs' results support (PNG, base64), the per-level
summary of each run, a comparison by rewind point, the provenance of every run, and a
note for each figure that could not be drawn (and why: usually, not computed).
"""

import base64
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # the report and plot commands never open windows
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.figures import FIGURES, category_order, per_epoch  # noqa: E402
from imp.base.errors import UserError, did_you_mean  # noqa: E402
from imp.base.store import cannot_write, check_writable  # noqa: E402


# What gives each figure its data, for the note on a figure that could not be drawn.
HOW = {
    "aligned_barriers": "measure barriers aligned and REPAIRed too (`lth barrier RUN --align weights --repair`)",
    "accuracy_vs_density": "train a run (`lth run`)",
    "rewind_comparison": "sweep over prune.rewind (runs that differ only in it)",
    "training_accuracy": "train a run (`lth run`)",
    "training_loss": "train a run (`lth run`)",
    "hessian_vs_level": "measure the curvature (`lth hessian RUN`)",
    "prune_limit": "measure the curvature and prune checks (`lth hessian RUN --check 0.2 0.4 0.6 0.8`)",
    "spectrum_masses": "measure the curvature (`lth hessian RUN`)",
    "directional_curvature": "measure prune checks (`lth hessian RUN --check 0.2 0.4 0.6 0.8`)",
    "loss_rise_ratio": "measure prune checks (`lth hessian RUN --check 0.2 0.4 0.6 0.8`)",
    "barrier_curves": "measure barriers (`lth barrier RUN`)",
    "barrier_vs_level": "measure barriers (`lth barrier RUN`, with `--siblings 2` for instability)",
    "instability_vs": "measure sibling barriers (`lth barrier RUN --siblings 2`) of runs that differ in prune.rewind",
    "per_example_histogram": "measure per-example barriers (`lth barrier RUN --siblings 2 --per-example`)",
    "score_histogram": "compute example scores (`lth scores --score el2n`)",
    "score_scatter": "compute example scores of two kinds (`lth scores`)",
    "subset_pruning_curve": "sweep over subset.keep and subset.rule (`lth sweep runs/subset_fashion_mnist.toml`)",
    "ntk_velocity": "measure the kernel velocity (`lth ntk RUN`)",
    "group_barrier_vs_spawn": "measure group barriers (`lth groups RUN`) of runs that differ in prune.rewind",
    "subset_window": "sweep over subset.offset with subset.rule = 'window' (`lth sweep runs/subset_window_fashion_mnist.toml`)",
}


def draw_all(frames: dict[str, pd.DataFrame]) -> tuple[dict[str, plt.Figure], dict[str, str]]:
    """Every figure the frames support, and for the others why not and what would give
    it its data (:data:`HOW`)."""
    drawn, skipped = {}, {}
    for name, (function, frame) in FIGURES.items():
        data = frames.get(frame, pd.DataFrame())
        try:
            drawn[name] = function(data)
        except ValueError as error:
            reason = str(error).removeprefix(f"{name}: ")
            skipped[name] = f"{reason}; to draw it, {HOW[name]}" if name in HOW else reason
    return drawn, skipped


def save_figures(frames: dict[str, pd.DataFrame], out: str | Path, fmt: str = "png") -> tuple[list[Path], dict]:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a folder; give --figures a folder")
    check_writable(out, "another --figures folder")
    out.mkdir(parents=True, exist_ok=True)
    drawn, skipped = draw_all(frames)
    paths = []
    for name, figure in drawn.items():
        path = out / f"{name}.{fmt}"
        figure.savefig(path, dpi=150, bbox_inches="tight")
        plt.close(figure)
        paths.append(path)
    return paths, skipped


def compare(levels: pd.DataFrame, by: str, metric: str = "test_accuracy") -> pd.DataFrame:
    """Per group of ``by`` and level (trunk only): n, density, mean and standard deviation."""
    if levels.empty:
        raise ValueError("no finished levels to compare")
    if by not in levels.columns:
        keys = sorted(c for c in levels.columns if "." in c)
        hint = did_you_mean(by, keys) or f"; choose a config key such as {', '.join(keys[:8])}, ..."
        raise ValueError(f"unknown key {by!r}{hint}")
    trunk = levels[levels["baseline"] == "imp"]
    grouped = trunk.groupby([by, "level"])
    table = pd.DataFrame({"n": grouped[metric].count(), "density": grouped["density"].mean(),
                          "mean": grouped[metric].mean(), "std": grouped[metric].std()}).reset_index()
    try:  # rewind points by length of training, numbers by size
        order = {value: i for i, value in enumerate(category_order(table[by], per_epoch(trunk)))}
    except ValueError:
        order = {value: i for i, value in enumerate(sorted(table[by].unique(), key=str))}
    return table.sort_values([by, "level"], key=lambda c: c.map(order) if c.name == by else c, ignore_index=True)


def _png(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def _summary(levels: pd.DataFrame) -> str:
    if levels.empty:
        return "<p>No finished levels.</p>"
    columns = [c for c in ["density", "test_accuracy", "train_accuracy", "test_loss", "barrier_to_next_test_error",
                           "instability_test_error", "hessian_top_eigenvalue", "predicted_limit_random",
                           "quadratic_limit_random", "measured_limit_random_level", "measured_max_prune_fraction"] if c in levels.columns]
    groups = levels.groupby(["run_id", "baseline", "level"])
    table = groups[columns].mean()
    table.insert(0, "n", groups.size())
    if "test_accuracy" in columns:  # the spread over replicates (blank for one replicate)
        table.insert(list(table.columns).index("test_accuracy") + 1, "test_accuracy_std", groups["test_accuracy"].std())
    return _scroll(table.to_html(float_format=lambda v: f"{v:.4f}", na_rep="-"))


def _scroll(table: str) -> str:
    """A wide table scrolls sideways inside the page instead of widening it."""
    return f"<div style='overflow-x:auto'>{table}</div>"


def _flat(prefix: str, value) -> list[tuple[str, str]]:
    """Nested dicts as (dotted key, text) rows."""
    if isinstance(value, dict):
        return [row for key, item in value.items() for row in _flat(f"{prefix}.{key}" if prefix else str(key), item)]
    if isinstance(value, (list, tuple)):
        return [(prefix, ", ".join(map(str, value)) or "[]")]
    return [(prefix, str(value))]


def _provenance(info: dict) -> str:
    """A run's config, provenance and plan as a two-column table."""
    provenance = {key: value for key, value in info["provenance"].items() if key != "config"}  # shown above
    rows = _flat("", {"config": info["config"], "provenance": provenance,
                      "planned_levels": info["planned_levels"], "planned_replicates": info["planned_replicates"],
                      "baselines": info["baselines"], "diet": info["diet"]})
    body = "".join(f"<tr><td>{html.escape(key, quote=False)}</td><td>{html.escape(value, quote=False)}</td></tr>"
                   for key, value in rows)
    return _scroll(f"<table><tr><th>key</th><th>value</th></tr>{body}</table>")


def _measurements(measurements: pd.DataFrame) -> str:
    """Each measurement variant (kind and settings id) with its settings, and its summary
    columns per run and level (mean over replicates, n given): variants stay apart."""
    if measurements.empty:
        return "<p>No measurements.</p>"
    keys = ["run_id", "kind", "variant", "level"]
    values = [c for c in measurements.columns if measurements[c].dtype.kind == "f" and c not in keys
              and "." not in c]
    table = measurements.groupby(keys, dropna=False)[values].mean().dropna(axis=1, how="all")
    table.insert(0, "n", measurements.groupby(keys, dropna=False).size())
    settings = measurements.drop_duplicates(["kind", "variant"])[["kind", "variant", "settings"]]
    return (_scroll(table.to_html(float_format=lambda v: f"{v:.4g}", na_rep="-"))
            + "<p>Settings of each variant:</p>" + _scroll(settings.to_html(index=False)))


def write_report(frames: dict[str, pd.DataFrame], infos: list[dict], path: str | Path) -> Path:
    """One HTML page with every figure embedded, summary tables, provenance and notes."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give --html a file name")
    check_writable(path.parent, "another --html file")
    drawn, skipped = draw_all(frames)
    levels = frames.get("levels", pd.DataFrame())
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>lth report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}img{max-width:100%}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
             "</head><body><h1>Lottery-ticket report</h1>",
             f"<p>Runs: {', '.join(html.escape(i['run_id']) for i in infos)}</p>",
             "<h2>Summary per level</h2>", _summary(levels),
             "<h2>Measurements</h2>", _measurements(frames.get("measurements", pd.DataFrame()))]
    if not levels.empty and levels["prune.rewind"].nunique() > 1:
        parts += ["<h2>Comparison of rewind points</h2>", compare(levels, "prune.rewind").to_html(index=False)]
    parts.append("<h2>Figures</h2>")
    for name, figure in drawn.items():
        parts.append(f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' "
                     f"src='data:image/png;base64,{_png(figure)}'>")
    parts.append("<h2>Not computed</h2>")
    parts.append("<ul>" + "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(r)}</li>" for n, r in skipped.items())
                 + "</ul>" if skipped else "<p>Everything was computed.</p>")
    parts.append("<h2>Provenance</h2>")
    for info in infos:
        parts.append(f"<h3>{html.escape(info['run_id'])}</h3>" + _provenance(info))
    parts.append("</body></html>")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(parts))
    except OSError as error:
        raise cannot_write(path, error, "another --html file") from None
    return path
