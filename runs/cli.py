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

import numpy as np

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
    show.add_argument("--json", action="store_true",
                      help="print one JSON object; its `levels` list has one row per replicate, level and baseline")
    show.set_defaults(command=_show)

    scores = commands.add_parser("scores", help="score every training example (EL2N, GraNd, forgetting)")
    _config_arguments(scores)
    scores.add_argument("--score", required=True, choices=["el2n", "grand", "forgetting"])
    scores.add_argument("--step", help="t, a duration: score after this much training, 0 = at init "
                        "(default: diet.score_step)")
    scores.add_argument("--runs", type=int, help="R independent runs to average (default: diet.score_runs)")
    scores.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    scores.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    scores.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default: 1)")
    scores.add_argument("--quiet", action="store_true", help="no progress bar")
    scores.set_defaults(command=_scores)

    correlate = commands.add_parser("correlate", help="Spearman correlations between stored scores")
    correlate.add_argument("files", nargs="+", help="scores files written by `lth scores`")
    correlate.set_defaults(command=_correlate)

    barrier = commands.add_parser("barrier", help="error barriers of a run's levels (successive, siblings)")
    barrier.add_argument("run", help="a run folder, or a run id under --out")
    barrier.add_argument("--siblings", type=int, default=0, help="copies per level for instability (>= 2)")
    barrier.add_argument("--per-example", action="store_true", help="per-example midpoint barriers of siblings")
    barrier.add_argument("--between", nargs=2, metavar=("A", "B"),
                         help="instead: the barrier between two stored networks (stage names such as "
                              "level_3 and level_3_reinit, or .h5 paths)")
    barrier.add_argument("--replicate", type=int, default=0, help="the replicate of --between (default: 0)")
    _measure_arguments(barrier)
    barrier.set_defaults(command=_barrier)

    perturb = commands.add_parser("perturb", help="train perturbed copies of a run's levels and measure barriers")
    perturb.add_argument("run", help="a run folder, or a run id under --out")
    perturb.add_argument("--sizes", required=True, type=float, nargs="+",
                         help="multiples of ||m_L w_k - m_(L+1) w_k||")
    perturb.add_argument("--directions", nargs="+", default=["gaussian"], choices=["gaussian", "pruned"])
    _measure_arguments(perturb)
    perturb.set_defaults(command=_perturb)

    hessian = commands.add_parser("hessian", help="Hessian spectra of a run's levels and predicted prune limits")
    hessian.add_argument("run", help="a run folder, or a run id under --out")
    hessian.add_argument("--k", type=int, default=5, help="top eigenvalues (default: 5)")
    hessian.add_argument("--check", type=float, nargs="*",
                         help="also prune these fractions in one iteration and retrain, e.g. 0.2 0.4 0.6 0.8")
    _measure_arguments(hessian)
    hessian.set_defaults(command=_hessian)

    plot = commands.add_parser("plot", help="write every figure the runs' results support")
    plot.add_argument("runs", nargs="+", help="run folders, or run ids under --out")
    plot.add_argument("--out", default=DEFAULT_OUT, help=f"results folder of run ids (default: {DEFAULT_OUT})")
    plot.add_argument("--to", default="figures", help="folder for the figures (default: figures)")
    plot.add_argument("--format", default="png", choices=["png", "pdf", "svg"])
    plot.set_defaults(command=_plot)

    report = commands.add_parser("report", help="one self-contained HTML report of the runs")
    report.add_argument("runs", nargs="+", help="run folders, or run ids under --out")
    report.add_argument("--out", default=DEFAULT_OUT, help=f"results folder of run ids (default: {DEFAULT_OUT})")
    report.add_argument("--to", default="report.html", help="the HTML file to write (default: report.html)")
    report.set_defaults(command=_report)

    compare = commands.add_parser("compare", help="compare groups of runs (e.g. rewind points) level by level")
    compare.add_argument("runs", nargs="+", help="run folders, or run ids under --out")
    compare.add_argument("--by", required=True, help="a config key, e.g. prune.rewind or diet.subset")
    compare.add_argument("--out", default=DEFAULT_OUT, help=f"results folder of run ids (default: {DEFAULT_OUT})")
    compare.set_defaults(command=_compare)

    layers = commands.add_parser("layers", help="list the model's prunable tensors and how each is pruned")
    _config_arguments(layers)
    layers.set_defaults(command=_layers)

    ls = commands.add_parser("ls", help="list the runs in a results folder and their progress")
    ls.add_argument("dir", nargs="?", default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    ls.set_defaults(command=_ls)
    return parser


def _measure_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--levels", type=int, nargs="+", help="only these levels (default: all finished)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"results folder (default: {DEFAULT_OUT})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="landscape.KEY=VALUE",
                        help="landscape settings, e.g. landscape.points=11 (repeatable)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default: 1)")
    parser.add_argument("--wait", action="store_true", help="wait if another process holds the run")


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
    from imp.results import level_rows
    from imp.runtime import choose_device, set_threads
    from imp.trunk import run_imp
    from landscape.hooks import level_hooks
    from runs.tables import level_table

    config = _load(args)
    if args.replicates < 1:
        raise UserError(f"--replicates must be at least 1, got {args.replicates}")
    set_threads(args.threads)
    device = choose_device(args.device)
    root = resolve_root(config.data.root, os.environ)
    prune = config.prune
    print(f"run {run_id(config)}: {config.model.name} on {config.data.dataset}, {config.train.epochs} "
          f"per level, levels 0-{prune.levels} ({prune.retrain}, {prune.fraction:g} per level), "
          f"{args.replicates} replicate(s), {device}", file=sys.stderr)
    if config.diet.pretrain.epochs or config.diet.pretrain.iterations:
        diet = config.diet
        print(f"data diet: pre-train for {diet.pretrain} on "
              + ("all examples" if diet.subset == "all" else f"{diet.size} {diet.subset} examples")
              + (f" by {diet.score} after {diet.score_step} ({diet.score_runs} run(s))"
                 if diet.subset in ("easy", "hard") else ""), file=sys.stderr)
    report = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    run = run_imp(config, args.out, root, device, replicates=args.replicates,
                  progress=not args.quiet and sys.stderr.isatty(), wait=args.wait,
                  report=report, hooks=level_hooks(config, device))
    print(level_table(level_rows(run)))
    print(f"run id {run.run_id}; results in {run.path}")
    return 0


def _config(args) -> int:
    from imp.config import canonical_json, run_id, to_dict

    config = _load(args)
    print(json.dumps(to_dict(config, defaults=True, platform=True), indent=2))
    print(f"run id {run_id(config)} (from {canonical_json(config)})")
    return 0


def _show(args) -> int:
    from imp.results import find_run, level_rows, run_info
    from runs.tables import level_table

    run = find_run(args.run, args.out)
    info, rows = run_info(run), level_rows(run)
    if args.json:
        print(json.dumps({**info, "levels": rows}))
        return 0
    config = info["config"]
    print(f"run {run.run_id} in {run.path}")
    print(f"config {json.dumps(config)}")
    if info["diet"] is not None:
        print("diet " + ", ".join(f"{key} {value}" for key, value in info["diet"].items()))
    print(level_table(rows))
    return 0


def _scores(args) -> int:
    from imp.data import load_dataset, resolve_root
    from imp.duration import Duration
    from imp.runtime import choose_device, set_threads
    from imp.scores import ScoreSpec, load_or_compute, roc_auc, spearman

    config = _load(args)
    step = config.diet.score_step
    if args.step is not None:  # a bare number counts epochs, as in TOML
        step = Duration.parse(int(args.step) if args.step.isdigit() else args.step)
    spec = ScoreSpec(args.score, step, config.diet.score_runs if args.runs is None else args.runs)
    set_threads(args.threads)
    device = choose_device(args.device)
    data = load_dataset(config.data, resolve_root(config.data.root, os.environ), device)
    print(f"{spec.score} after {spec.step} ({config.model.name} on {config.data.dataset}), "
          f"mean of {spec.runs} run(s), {len(data.train)} examples, {device}", file=sys.stderr)
    tree, path = load_or_compute(config, data, spec, args.out, progress=not args.quiet and sys.stderr.isatty())
    mean = tree["mean"]
    finite = mean[np.isfinite(mean)]
    print(f"{spec.score}: mean {finite.mean():.4g}, quartiles "
          + ", ".join(f"{q:.4g}" for q in np.quantile(finite, [0.25, 0.5, 0.75]))
          + (f", {int((~np.isfinite(mean)).sum())} never learned (+inf)" if len(finite) < len(mean) else ""))
    print(f"Spearman with the input norm: {spearman(mean, tree['input_norm']):.3f}")
    if tree["noisy"].any():
        print(f"ROC-AUC for finding the {int(tree['noisy'].sum())} permuted labels: "
              f"{roc_auc(mean, tree['noisy']):.3f}")
    print(f"scores in {path}")
    return 0


def _correlate(args) -> int:
    from imp.scores import read_scores, spearman
    from runs.tables import format_table

    trees = [read_scores(path) for path in args.files]
    if any(not np.array_equal(t["index"], trees[0]["index"]) for t in trees):
        raise UserError("these scores are over different training sets; compare scores of one [data] section")
    names = [f"{t['score']}@{t['step']}" for t in trees] + ["input_norm"]
    columns = [t["mean"] for t in trees] + [trees[0]["input_norm"]]
    rows = [[name] + [f"{spearman(a, b):.3f}" for b in columns] for name, a in zip(names, columns)]
    print("Spearman rank correlation")
    print(format_table(["", *names], rows))
    return 0


def _barrier(args) -> int:
    if args.between:
        return _measure(args, [], between=args.between)
    extra = ["landscape.successive=true"]
    if args.siblings:
        extra.append(f"landscape.siblings={args.siblings}")
    if args.per_example:
        extra.append("landscape.per_example=true")
    return _measure(args, extra, "barrier_to_next_test_error", "instability_test_error")


def _perturb(args) -> int:
    extra = [f"landscape.perturb_sizes={list(args.sizes)}",
             f"landscape.perturb_directions={json.dumps(args.directions)}"]
    return _measure(args, extra)


def _hessian(args) -> int:
    extra = ["landscape.hessian=true", f"landscape.hessian_k={args.k}"]
    if args.check:
        extra.append(f"landscape.prune_check={list(args.check)}")
    return _measure(args, extra, "hessian_top_eigenvalue", "predicted_max_prune_fraction",
                    "conservative_max_prune_fraction", "measured_max_prune_fraction")


def _measure(args, extra: list[str], *columns: str, between: Sequence[str] = ()) -> int:
    """Load a run, apply landscape overrides, measure its finished levels (or the pair
    ``between``) under its lock."""
    from imp import store
    from imp.config import with_overrides
    from imp.data import load_dataset, resolve_root
    from imp.results import find_run, level_rows, run_info
    from imp.runtime import choose_device, set_threads
    from landscape.hooks import measure_run
    from landscape.measure import Measurements, claim_settings
    from runs.tables import format_table

    run = find_run(args.run, args.out)
    info = run_info(run)
    for override in args.overrides:
        if not override.startswith("landscape."):
            raise UserError(f"--set {override}: only landscape.* settings can change for an existing run")
    config = with_overrides(info["config"], extra + list(args.overrides))
    set_threads(args.threads)
    device = choose_device(args.device)
    root = resolve_root(str(store.read_run(run).get("data_root", "")), os.environ)
    with store.RunLock(run, wait=args.wait):
        data = load_dataset(config.data, root, device)
        if between:
            claim_settings(run, config, device)
            stage, tree = Measurements(config, data, run, args.replicate).pair(*between)
            rows = [[key, f"{value['interpolated']:.4f}", f"{value['mean']:.4f}"]
                    for key, value in sorted(tree["barrier"].items())]
            print(f"barrier between {between[0]} and {between[1]}:")
            print(format_table(["", "interpolated", "mean"], rows))
            print(f"results in {run.stage_file(args.replicate, stage)}")
            return 0
        measure_run(config, data, run, device, args.levels)
    rows = [r for r in level_rows(run) if r["baseline"] is None]
    for column in columns:
        print(f"{column}" + (" (interpolated baseline)" if "barrier" in column or "instab" in column else "")
              + ", per replicate and level:")
        for row in rows:
            if column in row:
                print(f"  replicate {row['replicate']} level {row['level']}: {row[column]:.4f}")
    print(f"results in {run.path}")
    return 0


def _plot(args) -> int:
    from analysis.load import load_frames
    from analysis.report import save_figures

    paths, skipped = save_figures(load_frames(args.runs, args.out), args.to, args.format)
    for path in paths:
        print(path)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}", file=sys.stderr)
    return 0


def _report(args) -> int:
    from analysis.load import load_frames, load_runs
    from analysis.report import write_report
    from imp.results import run_info

    infos = [run_info(run) for run in load_runs(args.runs, args.out)]
    path = write_report(load_frames(args.runs, args.out), infos, args.to)
    print(f"report in {path}")
    return 0


def _compare(args) -> int:
    from analysis.load import levels_frame, load_runs
    from analysis.report import compare

    try:
        table = compare(levels_frame(load_runs(args.runs, args.out)), args.by)
    except ValueError as error:
        raise UserError(str(error)) from None
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


def _layers(args) -> int:
    from imp.data import load_dataset, resolve_root
    from imp.level import build_initial_model
    from imp.models import prunable_names
    from imp.pruning import groups, prunable_tensors
    from runs.tables import format_table

    config = _load(args)
    prune = config.prune
    data = load_dataset(config.data, resolve_root(config.data.root, os.environ))
    model = build_initial_model(config, data, 0)
    pruned = prunable_tensors(model, prune.exclude, prune.layer_fractions)
    rule = {}
    for names, rate in groups(pruned, prune.strategy, prune.fraction, prune.layer_fractions):
        for name in names:
            rule[name] = f"{rate:g} of remaining, " + ("shared threshold" if len(names) > 1 else "on its own")
    parameters = dict(model.named_parameters())
    rows = [[name, "x".join(map(str, parameters[name].shape)), str(parameters[name].numel()),
             rule.get(name, "excluded")] for name in prunable_names(model)]
    print(format_table(["tensor", "shape", "weights", "pruned per level"], rows))
    print(f"{sum(parameters[n].numel() for n in pruned)} prunable weights in {len(pruned)} tensors")
    return 0


def _ls(args) -> int:
    from imp import store
    from imp.results import levels_done, run_info
    from runs.tables import format_table

    out = Path(args.dir)
    if not out.is_dir():
        raise UserError(f"{out} is not a folder; pass the --out folder of `lth run`")
    lines = []
    for run in store.find_runs(out):
        info = run_info(run)
        config = info["config"]
        planned_levels, planned_replicates = info["planned_levels"], info["planned_replicates"]
        done = [min(levels_done(run, r), planned_levels + 1) for r in range(planned_replicates)]
        complete = all(d == planned_levels + 1 for d in done)
        state = "running" if store.is_locked(run) else ("done" if complete else "stopped")
        lines.append([
            run.run_id,
            config.get("model", {}).get("name", "mlp"),
            config.get("data", {}).get("dataset", "digits"),
            f"{min(done, default=0)}/{planned_levels + 1}",
            f"{sum(d == planned_levels + 1 for d in done)}/{planned_replicates}",
            ",".join(info["baselines"]) or "-",
            state,
        ])
    if not lines:
        print(f"no runs in {out}")
        return 0
    print(format_table(["run", "model", "data", "levels", "replicates", "baselines", "state"], lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
