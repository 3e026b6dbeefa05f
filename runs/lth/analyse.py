"""The commands that read results: figures, reports, comparisons and exported tables."""

import os
import sys
from pathlib import Path

from imp.base.errors import UserError


def plot(args) -> int:
    from analysis.load import load_frames
    from analysis.report import save_figures

    paths, skipped = save_figures(load_frames(args.runs, args.out), args.figures, args.format)
    for path in paths:
        print(path)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    return 0


def report(args) -> int:
    from analysis.load import load_frames, load_runs
    from analysis.report import write_report
    from imp.base.results import run_info

    infos = [run_info(run) for run in load_runs(args.runs, args.out)]
    path = write_report(load_frames(args.runs, args.out), infos, args.html)
    print(f"report in {path}")
    return 0


def compare(args) -> int:
    from analysis.load import levels_frame, load_runs
    from analysis.report import compare

    try:
        table = compare(levels_frame(load_runs(args.runs, args.out)), args.by)
    except ValueError as error:
        raise UserError(str(error)) from None
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


TABLES = ("levels", "metrics", "measurements", "directions", "curves", "barriers", "per_example", "scores")


def export(args) -> int:
    """``lth export``: one frame of :func:`analysis.load.load_frames` as CSV or Parquet."""
    from analysis.load import load_frames
    from imp.base.store import cannot_write, check_writable

    path = Path(args.file or f"{args.table}.{args.format}")
    if args.format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError("--format parquet needs pyarrow (pip install pyarrow); or use --format csv") from None
    check_writable(path.parent, "another --file")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give --file a file name")
    frame = load_frames(args.runs, args.out)[args.table]
    if frame.empty:
        raise UserError(f"the runs have no {args.table} rows (nothing of that kind was measured)")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        frame.to_csv(temporary, index=False) if args.format == "csv" else frame.to_parquet(temporary, index=False)
        os.replace(temporary, path)
    except OSError as error:
        raise cannot_write(path, error, "another --file") from None
    finally:
        temporary.unlink(missing_ok=True)
    print(f"{len(frame)} rows x {len(frame.columns)} columns of {args.table} in {path}")
    return 0
