"""The commands that measure: example scores and the landscape of existing runs."""

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from imp.base.errors import UserError


def progress_lines(args):
    """Where progress lines go: stderr, or nowhere with ``--silent``."""
    if getattr(args, "silent", False):
        return None
    return lambda line: print(line, file=sys.stderr, flush=True)


def progress_bar(args) -> bool:
    return not (args.quiet or args.silent) and sys.stderr.isatty()


def scores(args) -> int:
    from imp.base.config import load_config
    from imp.data import load_dataset, resolve_root
    from imp.base.duration import Duration
    from imp.base.runtime import choose_device, set_threads
    from imp.scores import ScoreSpec, hardness, load_or_compute, roc_auc, spearman

    config = load_config(args.config, args.overrides)
    step = config.diet.score_step
    if args.step is not None:  # a bare number counts epochs, as in TOML
        step = Duration.parse(int(args.step) if args.step.isdigit() else args.step)
    spec = ScoreSpec(args.score, step, config.diet.score_runs if args.runs is None else args.runs)
    set_threads(args.threads)
    device = choose_device(args.device)
    data = load_dataset(config.data, resolve_root(config.data.root, os.environ), device)
    if not args.silent:
        print(f"{spec.score} after {spec.step} ({config.model.name} on {config.data.dataset}), "
              f"mean of {spec.runs} run(s), {len(data.train)} examples, {device}", file=sys.stderr)
    tree, path = load_or_compute(config, data, spec, args.out, progress=progress_bar(args),
                                 threads=args.threads)
    mean = tree["mean"]
    finite = mean[np.isfinite(mean)]
    print(f"{spec.score}: mean {finite.mean():.4g}, quartiles "
          + ", ".join(f"{q:.4g}" for q in np.quantile(finite, [0.25, 0.5, 0.75]))
          + (f", {int((~np.isfinite(mean)).sum())} never learned (+inf)" if len(finite) < len(mean) else "")
          + ("; high = easy" if tree.get("orientation") == "high_is_easy" else ""))
    print(f"Spearman with the input norm: {spearman(mean, tree['input_norm']):.3f}")
    if tree["noisy"].any():
        print(f"ROC-AUC for finding the {int(tree['noisy'].sum())} permuted labels: "
              f"{roc_auc(hardness(tree), tree['noisy']):.3f}")  # the hardest first, whichever way the score points
    print(f"scores in {path}")
    return 0


def scores_export(args) -> int:
    """``lth scores export``: a scores file as a CSV, .npy or Parquet table (imp.scoreio)."""
    from imp.scoreio import export_scores

    path = export_scores(args.file, args.format, args.to)
    print(f"scores table in {path}" + (f" (metadata in {path.name}.json)" if args.format == "npy" else ""))
    return 0


def scores_import(args) -> int:
    """``lth scores import``: an exported table, checked against the data set's training
    split, as a scores file under ``--out`` (imp.scoreio)."""
    from imp.base.config import load_config, to_dict
    from imp.data import load_dataset, resolve_root
    from imp.scoreio import check_dataset, import_table, read_table

    other = [item for item in args.overrides if not item.strip().startswith("data.")]
    if other:
        raise UserError(f"`lth scores import` takes only [data] settings; drop --set {other[0]}")
    config = load_config(None, [f"data.dataset={json.dumps(args.dataset)}", *args.overrides])
    source = Path(args.file)
    table = read_table(source, args.orientation)
    check_dataset(table, config.data.dataset, source)  # before reading the data set's files
    data = load_dataset(config.data, resolve_root(config.data.root, os.environ))
    config_json = json.dumps({"data": to_dict(config.data, defaults=True)}, sort_keys=True)
    path = import_table(table, source, data, args.out, config_json)
    print(f"scores in {path}")
    return 0


def correlate(args) -> int:
    from imp.scores import read_scores, spearman
    from runs.lth.tables import format_table

    trees = [read_scores(path) for path in args.files]
    if any(not np.array_equal(t["index"], trees[0]["index"]) for t in trees):
        raise UserError("these scores are over different training sets; compare scores of one [data] section")
    prints = {str(t["data_fingerprint"]) for t in trees if t.get("data_fingerprint")}
    if len(prints) > 1:
        raise UserError(f"these scores were computed on different data (fingerprints {', '.join(sorted(prints))}); "
                        "compare scores of one data set")
    names = [f"{t['score']}@{t['step']}" for t in trees] + ["input_norm"]
    columns = [t["mean"] for t in trees] + [trees[0]["input_norm"]]
    rows = [[name] + [f"{spearman(a, b):.3f}" for b in columns] for name, a in zip(names, columns)]
    print("Spearman rank correlation")
    print(format_table(["", *names], rows))
    return 0


def _aligning(args) -> list[str]:
    """The landscape overrides of ``--align`` and ``--repair``."""
    return [f"landscape.align={args.align}"] + (["landscape.repair=true"] if args.repair else [])


def barrier(args) -> int:
    if args.between:
        return _on_run(args, _aligning(args), between=args.between)
    extra = ["landscape.successive=true", *_aligning(args)]
    if args.siblings:
        extra.append(f"landscape.siblings={args.siblings}")
    if args.per_example:
        extra.append("landscape.per_example=true")
    return _on_run(args, extra, kinds=("successive", "instability"))


def perturb(args) -> int:
    extra = [f"landscape.perturb_sizes={list(args.sizes)}",
             f"landscape.perturb_directions={json.dumps(args.directions)}", *_aligning(args)]
    return _on_run(args, extra, kinds=("perturb",))


def hessian(args) -> int:
    extra = ["landscape.hessian=true", f"landscape.hessian_k={args.k}"]
    if args.examples is not None:
        extra.append(f"landscape.hessian_examples={args.examples}")
    if args.check:
        extra.append(f"landscape.prune_check={list(args.check)}")
    return _on_run(args, extra, kinds=("hessian", "prune_check"))


def registered(kind: str):
    """The command of a registry measurement with ``command`` set: turn on its first key."""
    def command(args) -> int:
        from landscape.registry import by_kind

        key = next(iter(by_kind(kind).keys))
        return _on_run(args, [f"landscape.{key}=true"], kinds=(kind,))
    return command


def _on_run(args, extra: list[str], kinds: Sequence[str] = (), between: Sequence[str] = ()) -> int:
    """Load a run, apply landscape overrides, measure its finished levels (or the pair
    ``between``) under its lock, and print exactly the measurements asked for."""
    from imp.base import store
    from imp.base.config import with_overrides
    from imp.data import load_dataset
    from imp.datasets import stored_root
    from imp.legacy import check_run
    from imp.base.results import find_run, run_info
    from imp.base.runtime import choose_device, set_threads
    from imp.diet import subset_data
    from imp.trunk import check_data
    from landscape.hooks import measure_run

    run = find_run(args.run, args.out)
    check_run(run)  # parameters named before named layers: one line, before any work
    info = run_info(run)
    for override in args.overrides:
        if not override.startswith("landscape."):
            raise UserError(f"--set {override}: only landscape.* settings can change for an existing run")
    config = with_overrides(info["config"], extra + list(args.overrides))
    set_threads(args.threads)
    device = choose_device(args.device)
    root = stored_root(str(store.read_run(run).get("data_root", "")), os.environ)
    with store.RunLock(run, wait=args.wait):
        if args.levels and not between:  # under the lock: with --wait, what the writer finished counts
            _check_levels(run, args.levels)
        data = load_dataset(config.data, root, device)
        check_data(run, data)  # the data the run was trained on, or one line
        data, _ = subset_data(config, data, run, args.out)  # a [subset] run is measured on what it trained on
        if between:
            return _pair(config, data, run, args.replicate, between)
        measured = [m for m in measure_run(config, data, run, device, args.levels, report=progress_lines(args))
                    if m.measurement in kinds]
    if not measured:
        raise UserError(f"nothing to measure: run {run.run_id} has no finished level that fits "
                        + (f"--levels {' '.join(map(str, args.levels))}" if args.levels else "these measurements")
                        + " (a measurement between levels L and L+1 needs level L+1 finished too; "
                        "`lth show` lists the levels)")
    from runs.lth.tables import format_columns

    for m in measured:
        values = format_columns(m.columns) or "stored"
        print(f"replicate {m.replicate} level {m.level} {m.measurement} [{m.settings_id}]: {values}")
    print(f"settings: " + "; ".join(sorted({f"{m.measurement} [{m.settings_id}] {json.dumps(m.settings)}"
                                             for m in measured})))
    print(f"results in {run.path}")
    return 0


def _check_levels(run, levels: Sequence[int]) -> None:
    """Refuse ``--levels`` that no replicate of ``run`` has finished."""
    from imp.base.results import levels_done

    done = max((levels_done(run, r) for r in run.replicates()), default=0)
    missing = sorted(level for level in set(levels) if level >= done)
    if missing:
        raise UserError(f"run {run.run_id} has levels 0-{done - 1} finished; --levels "
                        f"{' '.join(map(str, missing))} are not (`lth run` with a larger prune.levels "
                        "trains them)" if done else f"run {run.run_id} has no finished level yet")


def _pair(config, data, run, replicate: int, between: Sequence[str]) -> int:
    from landscape.measure import Context, curve_variants, pair, pair_networks, variant_name
    from landscape.registry import PAIR, store_measurement
    from runs.lth.tables import format_table

    if replicate not in run.replicates():
        raise UserError(f"run {run.run_id} has no replicate {replicate}; it has "
                        f"{', '.join(map(str, run.replicates())) or 'none'}")
    context = Context(config, data, run, replicate)
    states, network_names = pair_networks(context, *between)
    rows, files = [], []
    for curve in curve_variants(config.landscape):  # raw, then aligned, then REPAIRed: each its own result
        settings = {**curve, "networks": network_names}
        measured = store_measurement(context, PAIR, None, settings, lambda: pair(context, settings, states))
        tree = context.read(measured.stage)
        rows += [[variant_name(curve), key, f"{value['interpolated']:.4f}", f"{value['mean']:.4f}"]
                 for key, value in sorted(tree["barrier"].items())]
        files.append(str(run.stage_file(replicate, measured.stage)))
    print(f"barrier between {between[0]} and {between[1]}:")
    print(format_table(["", "", "interpolated", "mean"], rows))
    print("results in " + ", ".join(files))
    return 0
