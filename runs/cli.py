"""The ``lth`` command: the one place that reads argv and the environment.

Bad input of any kind (config keys, values, missing data, a locked run) ends with one
line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from imp.errors import UserError

DEFAULT_OUT = "results"


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.command(args)
    except UserError as error:
        print(f"lth: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lth: interrupted; finished stages are kept, rerun the command to resume",
              file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lth", description="Lottery-ticket research toolkit.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="train a run (resumes where it stopped)")
    _config_arguments(run)
    run.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    run.add_argument("--replicates", type=int, default=1, help="independent replicates (default: 1)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    run.add_argument("--threads", type=int, default=1,
                     help="CPU intra-op threads, 0 = one per core (default: 1; see DESIGN §5)")
    run.add_argument("--wait", action="store_true", help="wait if another process holds the run")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(command=_run)

    config = commands.add_parser("config", help="print the full config and its run id")
    _config_arguments(config)
    config.set_defaults(command=_config)

    show = commands.add_parser("show", help="print a run's results")
    show.add_argument("run", help="a run folder, or a run id under --out")
    show.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    show.set_defaults(command=_show)
    return parser


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="a TOML config file (default: all defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")


def _load(args):
    from imp.config import load_config

    return load_config(args.config, args.overrides)


def _run(args) -> int:
    from imp.config import run_id
    from imp.data import resolve_root
    from imp.dense import run_dense
    from imp.runtime import choose_device, set_threads

    config = _load(args)
    if args.replicates < 1:
        raise UserError(f"--replicates must be at least 1, got {args.replicates}")
    set_threads(args.threads)
    device = choose_device(args.device)
    root = resolve_root(config.data.root, os.environ)
    print(f"run {run_id(config)}: {config.model.name} on {config.data.dataset}, "
          f"{config.train.epochs}, {args.replicates} replicate(s), {device}", file=sys.stderr)
    run = run_dense(config, args.out, root, device, replicates=args.replicates,
                    progress=not args.quiet, wait=args.wait)
    print(_table(_summary(run)))
    print(f"run id {run.run_id}; results in {run.path}")
    return 0


def _config(args) -> int:
    from imp.config import canonical_json, run_id, to_dict

    config = _load(args)
    print(json.dumps(to_dict(config, defaults=True, platform=True), indent=2))
    print(f"run id {run_id(config)} (from {canonical_json(config)})")
    return 0


def _show(args) -> int:
    from imp.store import RunDir, is_run

    path = Path(args.run)
    if not is_run(path):
        path = Path(args.out) / args.run
    if not is_run(path):
        raise UserError(f"{args.run!r} is not a run folder, nor a run id under {args.out}/")
    rows = _summary(RunDir(path.parent, path.name))
    print(json.dumps({"run_id": path.name, "replicates": rows}) if args.json else _table(rows))
    return 0


def _summary(run) -> list[dict]:
    from imp.dense import DENSE_STAGE
    from imp.store import read_h5

    rows = []
    for replicate in run.replicates():
        if not run.has_stage(replicate, DENSE_STAGE):
            continue
        result = read_h5(run.stage_file(replicate, DENSE_STAGE))
        rows.append({"replicate": replicate, "iterations": result["iterations"],
                     **result["final"], "train_seconds": result["train_seconds"]})
    return rows


def _table(rows: list[dict]) -> str:
    if not rows:
        return "(no finished replicates)"
    columns = [c for c in rows[0] if c != "step"]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
