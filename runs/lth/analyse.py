"""The commands that read results: figures, reports and comparisons."""

import sys

from imp.base.errors import UserError


def plot(args) -> int:
    from analysis.load import load_frames
    from analysis.report import save_figures

    paths, skipped = save_figures(load_frames(args.runs, args.results), args.out, args.format)
    for path in paths:
        print(path)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    return 0


def report(args) -> int:
    from analysis.load import load_frames, load_runs
    from analysis.report import write_report
    from imp.base.results import run_info

    infos = [run_info(run) for run in load_runs(args.runs, args.results)]
    path = write_report(load_frames(args.runs, args.results), infos, args.out)
    print(f"report in {path}")
    return 0


def compare(args) -> int:
    from analysis.load import levels_frame, load_runs
    from analysis.report import compare

    try:
        table = compare(levels_frame(load_runs(args.runs, args.results)), args.by)
    except ValueError as error:
        raise UserError(str(error)) from None
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0
