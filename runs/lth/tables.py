"""Plain-text tables for the terminal: the per-level summary of a run and the run list."""

import statistics
from collections.abc import Sequence

import json

from imp.base.names import BASELINES

# Landscape summaries shown when measured: test-error barriers (interpolated convention).
LANDSCAPE_COLUMNS = {"barrier_to_next_test_error": "barrier to next", "instability_test_error": "instability"}


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Right-aligned columns, two spaces apart."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _percent(values: list[float]) -> str:
    """Mean of fractions as a percentage, with the standard deviation when n > 1."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.2f}%"
    return f"{100 * mean:.2f}±{100 * statistics.stdev(values):.2f}%"


def level_table(rows: list[dict], metric: str = "test_accuracy") -> str:
    """One line per level: density and ``metric`` of the trunk and of each baseline, and
    the trunk's test-error barriers where measured (percentage points), averaged over
    replicates (± standard deviation across them)."""
    if not rows:
        return "(no finished levels yet)"
    baselines = [b for b in BASELINES if any(r["baseline"] == b for r in rows)]
    extra = [key for key in LANDSCAPE_COLUMNS if any(key in r for r in rows)]
    header = ["level", "density", "imp", *baselines, *(LANDSCAPE_COLUMNS[key] for key in extra)]
    lines = []
    for level in sorted({r["level"] for r in rows}):
        at = [r for r in rows if r["level"] == level]
        trunk = [r for r in at if r["baseline"] is None]
        density = (trunk or at)[0]["density"]
        cells = [str(level), f"{100 * density:.2f}%", _percent([r[metric] for r in trunk])]
        cells += [_percent([r[metric] for r in at if r["baseline"] == b]) for b in baselines]
        cells += [_percent([r[key] for r in trunk if key in r]) for key in extra]
        lines.append(cells)
    replicates = len({r["replicate"] for r in rows})
    title = f"{metric.replace('_', ' ')} (mean over {replicates} replicate(s))"
    return title + "\n" + format_table(header, lines)


CENSORED = "_censored"  # landscape.spectra.CENSORED: the flag column of a censored limit


def format_columns(columns: dict[str, float]) -> str:
    """``key value, ...`` sorted by key; a value with a censoring flag (``<key>_censored``:
    -1 or +1) is printed as ``< value`` or ``>= value`` and the flag is not printed."""
    parts = []
    for key, value in sorted(columns.items()):
        if key.endswith(CENSORED):
            continue
        flag = columns.get(key + CENSORED, 0)
        parts.append(f"{key} {'< ' if flag < 0 else '>= ' if flag > 0 else ''}{value:.4g}")
    return ", ".join(parts)


def measurement_table(rows: list[dict]) -> str:
    """The run's measurements: one line per replicate, level, measurement and variant
    (settings id), with its summary columns; then each variant's settings."""
    lines = []
    for row in rows:
        values = format_columns(row["columns"]) or "-"
        lines.append([str(row["replicate"]), "-" if row["level"] is None else str(row["level"]),
                      row["measurement"], row["settings_id"], values])
    settings = sorted({(row["measurement"], row["settings_id"], json.dumps(row["settings"], sort_keys=True))
                       for row in rows})
    table = format_table(["replicate", "level", "measurement", "variant"], [line[:4] for line in lines])
    rows = table.split("\n")
    table = "\n".join([rows[0] + "  values"] + [row + "  " + line[4] for row, line in zip(rows[1:], lines)])
    return ("measurements\n" + table
            + "\n" + "\n".join(f"  {kind} [{variant}]: {text}" for kind, variant, text in settings))
