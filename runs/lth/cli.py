"""The ``lth`` command. With :mod:`runs.lth.measure` (commands that measure existing runs)
and :mod:`runs.lth.analyse` (commands that read results), it is the one place that reads
argv and the environment; this module holds the parser and the run commands.

Bad input of any kind (config keys, values, missing data, a locked run) ends with one
line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from imp.base.errors import Terminated, UserError
from runs.lth import analyse, measure

DEFAULT_OUT = "results"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    words = argv[:1] == ["scores"] and argv[1:2] in (["export"], ["import"])
    parser = _scores_words_parser() if words else _parser()
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
    except Terminated as error:
        print(f"lth: {error}", file=sys.stderr)
        return 143


def _parser() -> argparse.ArgumentParser:
    from imp import __version__

    parser = argparse.ArgumentParser(prog="lth", description="Lottery-ticket research toolkit.")
    parser.add_argument("--version", action="version", version=f"lth {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="train a run (resumes where it stopped)")
    _config_arguments(run)
    run.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    run.add_argument("--replicates", type=int, default=1, help="independent replicates (default: 1)")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    run.add_argument("--threads", type=int, default=1,
                     help="CPU intra-op threads, 0 = one per core (default: 1; see DESIGN §5)")
    run.add_argument("--wait", action="store_true", help="wait if another process holds the run")
    _quiet_arguments(run)
    run.set_defaults(command=_run)

    config = commands.add_parser("config", help="print the full config and its run id")
    _config_arguments(config)
    config.set_defaults(command=_config)

    show = commands.add_parser("show", help="print a run's results")
    show.add_argument("run", help="a run folder, or a run id under --out")
    show.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    show.add_argument("--json", action="store_true",
                      help="print one JSON object; its `levels` list has one row per replicate, level and baseline")
    show.set_defaults(command=_show)

    scores = commands.add_parser("scores", help="score every training example (EL2N, GraNd, forgetting, margin, "
                                 "AUM); `lth scores export|import` convert scores files",
                                 epilog="`lth scores export SCORES.h5 --format csv|npy|parquet` and `lth scores "
                                 "import FILE --dataset NAME` move scores between tools (see --help of each)")
    _config_arguments(scores)
    scores.add_argument("--score", required=True, choices=["el2n", "grand", "forgetting", "margin", "aum"])
    scores.add_argument("--step", help="t, a duration: score after this much training, 0 = at init "
                        "(default: diet.score_step)")
    scores.add_argument("--runs", type=int, help="R independent runs to average (default: diet.score_runs)")
    scores.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    scores.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    scores.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default: 1)")
    _quiet_arguments(scores)
    scores.set_defaults(command=measure.scores)

    correlate = commands.add_parser("correlate", help="Spearman correlations between stored scores")
    correlate.add_argument("files", nargs="+", help="scores files written by `lth scores`")
    correlate.set_defaults(command=measure.correlate)

    barrier = commands.add_parser("barrier", help="error barriers of a run's levels (successive, siblings)")
    barrier.add_argument("run", help="a run folder, or a run id under --out")
    barrier.add_argument("--siblings", type=int, default=0, help="copies per level for instability (>= 2)")
    barrier.add_argument("--per-example", action="store_true", help="per-example midpoint barriers of siblings")
    barrier.add_argument("--between", nargs=2, metavar=("A", "B"),
                         help="instead: the barrier between two stored networks (stage names such as "
                              "level_3 and level_3_reinit, or .h5 paths)")
    barrier.add_argument("--replicate", type=int, default=0, help="the replicate of --between (default: 0)")
    _align_arguments(barrier)
    _measure_arguments(barrier)
    barrier.set_defaults(command=measure.barrier)

    perturb = commands.add_parser("perturb", help="train perturbed copies of a run's levels and measure barriers")
    perturb.add_argument("run", help="a run folder, or a run id under --out")
    perturb.add_argument("--sizes", required=True, type=float, nargs="+",
                         help="multiples of ||m_L w_k - m_(L+1) w_k||")
    perturb.add_argument("--directions", nargs="+", default=["gaussian"], choices=["gaussian", "pruned"])
    _align_arguments(perturb)
    _measure_arguments(perturb)
    perturb.set_defaults(command=measure.perturb)

    hessian = commands.add_parser("hessian", help="curvature spectra of a run's levels, predicted and measured prune limits")
    hessian.add_argument("run", help="a run folder, or a run id under --out")
    hessian.add_argument("--k", type=int, default=5, help="top eigenvalues (default: 5)")
    hessian.add_argument("--examples", type=int,
                         help="training examples of the curvature (default: landscape.hessian_examples, 0 = all)")
    hessian.add_argument("--check", type=float, nargs="*",
                         help="also prune these fractions in one iteration and retrain, e.g. 0.2 0.4 0.6 0.8")
    _measure_arguments(hessian)
    hessian.set_defaults(command=measure.hessian)

    from landscape.registry import REGISTRY  # registers the measurements' config keys, too

    for measurement in REGISTRY:
        if measurement.command:
            command = commands.add_parser(measurement.kind, help=measurement.help)
            command.add_argument("run", help="a run folder, or a run id under --out")
            _measure_arguments(command)
            command.set_defaults(command=measure.registered(measurement.kind))

    upgrade = commands.add_parser("upgrade", help="convert a run stored by earlier versions (measurements "
                                  "before settings ids, parameters before named layers)")
    upgrade.add_argument("run", help="a run folder, or a run id under --out")
    upgrade.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    upgrade.set_defaults(command=_upgrade)

    plot = commands.add_parser("plot", help="write every figure the runs' results support")
    plot.add_argument("runs", nargs="+", help="run folders, or run ids under --out")
    plot.add_argument("--figures", default="figures", help="folder for the figures (default: figures)")
    plot.add_argument("--format", default="png", choices=["png", "pdf", "svg"])
    _results_argument(plot)
    plot.set_defaults(command=analyse.plot)

    report = commands.add_parser("report", help="one self-contained HTML report of the runs")
    report.add_argument("runs", nargs="+", help="run folders, or run ids under --out")
    report.add_argument("--html", default="report.html", help="the HTML file to write (default: report.html)")
    _results_argument(report)
    report.set_defaults(command=analyse.report)

    compare = commands.add_parser("compare", help="compare groups of runs (e.g. rewind points) level by level")
    compare.add_argument("runs", nargs="+", help="run folders, or run ids under --out")
    compare.add_argument("--by", required=True, help="a config key, e.g. prune.rewind or diet.subset")
    _results_argument(compare)
    compare.set_defaults(command=analyse.compare)

    export = commands.add_parser("export", help="write one tidy table of the runs (CSV or Parquet)")
    export.add_argument("runs", nargs="+", help="run folders, or run ids under --out")
    export.add_argument("--table", required=True, choices=list(analyse.TABLES),
                        help="which frame of analysis.load (columns documented there and in the README)")
    export.add_argument("--format", default="csv", choices=["csv", "parquet"])
    export.add_argument("--file", help="the file to write (default: <table>.<format>)")
    _results_argument(export)
    export.set_defaults(command=analyse.export)

    layers = commands.add_parser("layers", help="list the model's prunable tensors and how each is pruned")
    _config_arguments(layers)
    layers.set_defaults(command=_layers)

    sweep = commands.add_parser("sweep", help="run (or resume, or submit) every run of a sweep file")
    sweep.add_argument("file", help="a TOML run config with a [sweep] table of axes")
    sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one value of the sweep's base config, as for `lth run` (repeatable)")
    sweep.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    sweep.add_argument("--executor", default="local", choices=["local", "parallel", "slurm"],
                       help="local: one run after another; parallel: --workers processes; slurm: a job array, "
                            "one task per run")
    sweep.add_argument("--workers", type=int, default=max(1, os.cpu_count() or 1),
                       help="worker processes for --executor parallel (default: one per core)")
    sweep.add_argument("--threads", type=int, default=0,
                       help="CPU threads per worker (default: the cores divided between the workers)")
    sweep.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    _quiet_arguments(sweep)
    slurm = sweep.add_argument_group("Slurm (--executor slurm; each also a key of the sweep file's [slurm] table, "
                                     "which these override)")
    slurm.add_argument("--partition", help="partition (default: the cluster's default)")
    slurm.add_argument("--gpus-per-job", type=int, help="GPUs per job (default: 0)")
    slurm.add_argument("--cpus-per-job", type=int, help="CPUs per job, also its torch threads (default: 1)")
    slurm.add_argument("--minutes", type=int, help="time limit per job (default: 1440)")
    slurm.add_argument("--mem", help="memory per job, e.g. 16G (default: the partition's)")
    slurm.add_argument("--account", help="account to charge")
    slurm.add_argument("--qos", help="quality of service")
    slurm.add_argument("--constraint", help="node features, e.g. a100")
    slurm.add_argument("--sbatch", action="append", default=[], metavar="KEY=VALUE",
                       help="any other sbatch option, e.g. --sbatch exclude=node07 (repeatable)")
    slurm.add_argument("--setup", action="append", default=[], metavar="LINE",
                       help="a shell line run before the job's Python, e.g. \"module load cuda\" (repeatable)")
    slurm.add_argument("--array-parallelism", type=int, help="array tasks running at once (default: no limit)")
    slurm.add_argument("--array-chunk", type=int, help="most tasks per job array (default: all in one)")
    slurm.add_argument("--follow", action="store_true",
                       help="wait for the jobs, showing each run's state; exit 1 if any failed")
    slurm.add_argument("--poll", type=float, default=30.0, help="seconds between --follow's looks (default: 30)")
    sweep.set_defaults(command=_sweep)

    ls = commands.add_parser("ls", help="list the runs in a results folder and their progress")
    ls.add_argument("dir", nargs="?", default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    ls.set_defaults(command=_ls)
    return parser


def _results_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"the results folder, where run ids are looked up (default: {DEFAULT_OUT})")


def _align_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--align", choices=["none", "weights", "activations"], default="none",
                        help="also measure after permuting B's hidden units to A's (Git Re-Basin weight or "
                             "activation matching); the raw barrier is measured too (default: none)")
    parser.add_argument("--repair", action="store_true",
                        help="also measure with REPAIR (Jordan et al. 2023) on the aligned (or raw) pair")


def _measure_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--levels", type=int, nargs="+", help="only these levels (default: all finished)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="landscape.KEY=VALUE",
                        help="landscape settings, e.g. landscape.points=11 (repeatable)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default: 1)")
    parser.add_argument("--wait", action="store_true", help="wait if another process holds the run")
    parser.add_argument("--silent", action="store_true", help="no progress lines (results are still printed)")


def _scores_words_parser() -> argparse.ArgumentParser:
    """The parser of ``lth scores export`` and ``lth scores import`` (imp.scoreio), kept apart
    from ``lth scores [CONFIG]``, whose optional config file would take the word."""
    parser = argparse.ArgumentParser(prog="lth")
    scores = parser.add_subparsers(required=True, metavar="COMMAND").add_parser("scores")
    words = scores.add_subparsers(required=True, metavar="WORD")
    export = words.add_parser("export", help="write a scores file as a CSV, .npy or Parquet table")
    export.add_argument("file", help="a scores file written by `lth scores` (or imported)")
    export.add_argument("--format", required=True, metavar="csv|npy|parquet", help="the table's format")
    export.add_argument("--to", help="the table to write (default: beside FILE, with the format's suffix)")
    export.set_defaults(command=measure.scores_export)
    load = words.add_parser("import", help="check an exported table against a data set and store it as scores")
    load.add_argument("file", help="a .csv, .npy (with its .npy.json) or .parquet table from `lth scores export`")
    load.add_argument("--dataset", required=True, help="the data set it scores (data.dataset)")
    load.add_argument("--set", dest="overrides", action="append", default=[], metavar="data.KEY=VALUE",
                      help="a [data] setting the scores were computed with (repeatable)")
    load.add_argument("--orientation", choices=["high_is_hard", "high_is_easy"],
                      help="what a high score means, for a table that does not say")
    load.add_argument("--out", default=DEFAULT_OUT, help=f"results folder; the file goes under its scores/ "
                      f"(default: {DEFAULT_OUT})")
    load.set_defaults(command=measure.scores_import)
    return parser


def _quiet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar (progress lines stay)")
    parser.add_argument("--silent", action="store_true", help="no progress bar and no progress lines")


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="a TOML config file (default: all defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")


def _load(args):
    from imp.base.config import load_config

    return load_config(args.config, args.overrides)


def _run(args) -> int:
    from imp.base.config import run_id

    config = _load(args)  # before the imports that take seconds (torch): a typo answers at once
    if args.replicates < 1:
        raise UserError(f"--replicates must be at least 1, got {args.replicates}")

    from imp.base import store
    from imp.datasets import resolve_root
    from imp.base.results import level_rows
    from imp.base.runtime import choose_device, set_threads
    from imp.trunk import run_config, run_imp
    from landscape.hooks import level_hooks
    from runs.lth.tables import level_table

    root = resolve_root(config.data.root, os.environ)
    config = run_config(config, args.out, root)  # the id of equal work: "23it" and "1ep" alike
    store.check_files(store.RunDir(args.out, run_id(config)))  # a damaged stage is not a finished one
    set_threads(args.threads)
    device = choose_device(args.device)
    prune = config.prune
    report = measure.progress_lines(args)
    say = report or (lambda line: None)
    say(f"run {run_id(config)}: {config.model.name} on {config.data.dataset}, {config.train.epochs} "
        f"per level, levels 0-{prune.levels} ({prune.retrain}, {prune.fraction:g} per level), "
        f"{args.replicates} replicate(s), {device}")
    if config.diet.pretrain.epochs or config.diet.pretrain.iterations:
        diet = config.diet
        say(f"data diet: pre-train for {diet.pretrain} on "
            + ("all examples" if diet.subset == "all" else f"{diet.size} {diet.subset} examples")
            + (f" by {diet.score} after {diet.score_step} ({diet.score_runs} run(s))"
               if diet.subset in ("easy", "hard", "ccs") else ""))
    run = run_imp(config, args.out, root, device, replicates=args.replicates, threads=args.threads,
                  progress=measure.progress_bar(args), wait=args.wait,
                  report=report, hooks=level_hooks(config, device, report))
    print(level_table(level_rows(run)))
    print(f"run id {run.run_id}; results in {run.path}")
    return 0


def _config(args) -> int:
    from imp.base.config import canonical_json, run_id, to_dict
    from imp.datasets import DataNotFound, canonical_config, resolve_root

    config = _load(args)
    try:
        config = canonical_config(config, resolve_root(config.data.root, os.environ))
    except DataNotFound as error:  # an image folder's size fixes its durations: no id without it
        print(json.dumps(to_dict(config, defaults=True, platform=True), indent=2))
        print(f"run id: not known until the data is found ({error})")
        return 0
    print(json.dumps(to_dict(config, defaults=True, platform=True), indent=2))
    print(f"run id {run_id(config)} (from {canonical_json(config)})")
    return 0


def _show(args) -> int:
    from imp.base.results import find_run, level_rows, measurement_rows, run_info
    from runs.lth.tables import level_table, measurement_table

    run = find_run(args.run, args.out)
    info, rows, measured = run_info(run), level_rows(run), measurement_rows(run)
    if args.json:
        print(json.dumps({**info, "levels": rows, "measurements": measured}))
        return 0
    config = info["config"]
    print(f"run {run.run_id} in {run.path}")
    print(f"config {json.dumps(config)}")
    if info["diet"] is not None:
        print("diet " + ", ".join(f"{key} {value}" for key, value in info["diet"].items()))
    print(level_table(rows))
    if measured:
        print(measurement_table(measured))
    return 0


def _upgrade(args) -> int:
    from imp.base import store
    from imp.base.results import find_run
    from imp.datasets import DataNotFound, stored_root
    from imp.legacy import upgrade_canonical
    from landscape.upgrade import upgrade_run

    run = find_run(args.run, args.out, legacy=True)
    root = stored_root(str(store.read_run(run).get("data_root", "")), os.environ)
    converted, names = upgrade_run(run)
    try:
        with store.RunLock(names.run):
            moved = upgrade_canonical(names.run, root)
    except DataNotFound as error:  # the id's durations need the data set's size
        moved = names.run
        print(f"run {names.run.run_id} keeps its id: its data was not found to check it ({error}); rerun "
              "`lth upgrade` where the data is")
    for old, new in converted:
        print(f"{old} -> {new.name}")
    for path in names.renamed:
        print(f"{path.relative_to(names.run.path)}: parameters renamed")
    for line in names.patterns:
        print(line)
    if names.run.run_id != run.run_id:
        print(f"run {run.run_id} -> {names.run.run_id} (the id of its config with renamed patterns)")
    if moved.run_id != names.run.run_id:
        print(f"run {names.run.run_id} -> {moved.run_id} (the id of its config with durations written one way)")
    done = ([f"converted {len(converted)} file(s)"] if converted else []) + (
        [f"renamed the parameters in {len(names.renamed)} file(s)"] if names.renamed else [])
    if done:
        print(f"{' and '.join(done)} of run {moved.run_id}")
    elif moved.run_id == run.run_id:
        print(f"run {run.run_id} has nothing in the old layout")
    return 0


def _sweep(args) -> int:
    from runs.lth.sweep import main_sweep

    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    return main_sweep(args)


def _layers(args) -> int:
    from imp.data import load_dataset, resolve_root
    from imp.datasets import input_spec
    from imp.models import build_model, prunable_names
    from imp.pruning import groups, prunable_tensors
    from runs.lth.tables import format_table

    config = _load(args)
    prune = config.prune
    spec = input_spec(config.data.dataset)  # known from the name: no data needed, except for imagefolder
    if spec is None:
        data = load_dataset(config.data, resolve_root(config.data.root, os.environ))
        spec = data.input_shape, data.num_classes
    input_shape, num_classes = spec
    model = build_model(config.model.name, input_shape, num_classes,
                        widths=config.model.widths, width=config.model.width)
    pruned = prunable_tensors(model, prune.exclude, prune.layer_fractions)
    rule = {}
    shared = {"global": "shared threshold", "erk": "ERK allocation", "lamp": "LAMP allocation"}
    for names, rate in groups(pruned, prune.rule, prune.fraction, prune.layer_fractions):
        for name in names:
            rule[name] = f"{rate:g} of remaining, " + (shared[prune.rule] if len(names) > 1 else "on its own")
    parameters = dict(model.named_parameters())
    rows = [[name, "x".join(map(str, parameters[name].shape)), str(parameters[name].numel()),
             rule.get(name, "excluded")] for name in prunable_names(model)]
    print(format_table(["tensor", "shape", "weights", "pruned per level"], rows))
    print(f"{sum(parameters[n].numel() for n in pruned)} prunable weights in {len(pruned)} tensors")
    return 0


def _ls(args) -> int:
    from imp.base import store
    from runs.lth.sweep import read_manifests
    from imp.base.results import levels_done, run_info
    from runs.lth.tables import format_table

    out = Path(args.dir)
    if not out.is_dir():
        raise UserError(f"{out} is not a folder; pass the --out folder of `lth run`")
    lines, damaged = [], []
    for run in store.find_runs(out):
        try:  # a run with a damaged file is listed, and the file named after the table
            store.check_files(run)
            intact = True
        except UserError as error:
            damaged.append(str(error))
            intact = False
        try:
            info = run_info(run)
        except UserError:
            lines.append([run.run_id, "?", "?", "?", "?", "?", "damaged"])
            continue
        config = info["config"]
        planned_levels, planned_replicates = info["planned_levels"], info["planned_replicates"]
        done = [min(levels_done(run, r), planned_levels + 1) for r in range(planned_replicates)]
        complete = all(d == planned_levels + 1 for d in done)
        state = ("damaged" if not intact else "running" if store.is_locked(run)
                 else "done" if complete else "stopped")
        lines.append([
            run.run_id,
            config.get("model", {}).get("name", "mlp"),
            config.get("data", {}).get("dataset", "digits"),
            f"{min(done, default=0)}/{planned_levels + 1}",
            f"{sum(d == planned_levels + 1 for d in done)}/{planned_replicates}",
            ",".join(info["baselines"]) or "-",
            state,
        ])
    if lines:
        print(format_table(["run", "model", "data", "levels", "replicates", "baselines", "state"], lines))
    else:
        print(f"no runs in {out}")
    states = {line[0]: line[-1] for line in lines}
    for manifest in read_manifests(out):
        if manifest.get("jobs"):  # a Slurm sweep: its jobs' states, from the queue and the files
            from runs.lth.slurm import table_rows

            rows = table_rows(manifest, lambda run_id: states.get(run_id) == "done")
            print(f"sweep {manifest['name']} (Slurm):")
            print(format_table(["point", "run", "job", "state"], rows))
            continue
        done = sum(states.get(run_id) == "done" for run_id in manifest["runs"])
        running = sum(states.get(run_id) == "running" for run_id in manifest["runs"])
        print(f"sweep {manifest['name']}: {done}/{len(manifest['runs'])} runs done, {running} running")
    if damaged:
        others = f" ({len(damaged) - 1} more damaged run(s) listed above)" if len(damaged) > 1 else ""
        raise UserError(damaged[0] + others)
    return 0


if __name__ == "__main__":
    sys.exit(main())
