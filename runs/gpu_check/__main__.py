"""The device check's command line: ``python -m runs.gpu_check --data DIR --out DIR``.

Exit status 0 when every stage ran and every correctness check passed, 1 otherwise,
2 for a usage error (a missing data folder or file), printed as one line.
"""

import argparse
import json
import sys
from pathlib import Path

from imp.base.errors import UserError


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runs.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with cifar10-jpeg.zip (and, optionally, MNIST/raw/*.gz)")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, gpu_check.md, caches")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU test of this script")
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="stages after this are skipped")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default: inductor, eager with --tiny)")
    parser.add_argument("--recipe", action="store_true",
                        help="then train the whole 160-epoch recipe once with the fastest variant (accuracy "
                             "and minutes targets; outside the budget)")
    parser.add_argument("--recipe-epochs", type=int, default=160, help="epochs of --recipe (160 = the standard)")
    parser.add_argument("--recipe-variant", default=None, help="variant of --recipe (default: the fastest measured)")
    parser.add_argument("--recipe-only", action="store_true",
                        help="only load the data and train the recipe (--recipe-variant, default all), into "
                             "gpu_check_recipe.{json,md}: a second call after the check")
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> dict:
    """Run every stage; the report (also written to OUT/gpu_check.{json,md}, after every
    stage, so a run cut short still leaves what it measured)."""
    import dataclasses

    import imp.train
    from imp.base.runtime import choose_device, set_threads
    from runs.gpu_check import correctness, pipeline, profile, recipe, report, timing
    from runs.gpu_check.common import FULL, TINY, Stages, check_data, load_cifar, machine, unpack_cifar

    has_mnist = check_data(args.data)
    device = choose_device(args.device)
    sizes = TINY if args.tiny else FULL
    if args.compile_backend:
        sizes = dataclasses.replace(sizes, compile_backend=args.compile_backend)
    if args.recipe_epochs < 2:
        raise UserError(f"--recipe-epochs must be at least 2 (160 is the standard), got {args.recipe_epochs}")
    if args.recipe_variant is not None and args.recipe_variant not in timing.ALL_VARIANTS:
        raise UserError(f"--recipe-variant {args.recipe_variant!r} is not one of {', '.join(timing.ALL_VARIANTS)}")
    imp.train.COMPILE_BACKEND = sizes.compile_backend  # the one knob train.compile reads
    if args.tiny:
        import imp.data

        imp.data.BYTES_ON_CPU = True  # the CPU test takes the device's data path
    set_threads(1 if device.type == "cpu" else 0)
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"mode": "tiny (CPU test sizes: the numbers say only that it runs)" if args.tiny else "full",
                **dataclasses.asdict(sizes), "compile_backend": imp.train.COMPILE_BACKEND}
    sections = {"epoch_time": {"rows": [], "batching": []}, "imp": {}, "correctness": {}, "projections": [],
                "profile": [], "targets": [], "recipe": None}
    stages = Stages(60 * args.budget_minutes)
    result = {"passed": False, "wall_seconds": 0.0, "machine": machine(device), "settings": settings,
              "sections": sections, "stages": {}}

    def write() -> None:
        rows, batching = sections["epoch_time"]["rows"], sections["epoch_time"]["batching"]
        sections["targets"] = report.targets(rows, batching, sections["recipe"], sections["profile"])
        result["stages"] = {name: {k: v for k, v in record.items() if k != "result"}
                            for name, record in stages.records.items()}
        result["wall_seconds"] = stages.elapsed()
        result["passed"] = (all(record["ok"] for record in stages.records.values())
                            and all(c["passed"] for c in sections["correctness"].values()))
        (args.out / f"{report_name(args)}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        (args.out / f"{report_name(args)}.md").write_text(report.markdown(result))

    def run(name: str, fn, place=None, *, budget: bool = True):
        """Stage ``name``; ``place(found)`` puts its result (None if it failed or was
        skipped) into the sections before the report is written."""
        found = stages.run(name, fn, budget=budget)
        if place is not None:
            place(found)
        write()
        return found

    held = {}

    def load() -> dict:
        held["root"] = unpack_cifar(args.data, args.out / "cache", sizes.per_class)
        held["data"] = load_cifar(held["root"], sizes.batch, device)
        return {"train": len(held["data"].train), "test": len(held["data"].test), "root": str(held["root"])}

    def correct(name: str, fn) -> None:
        def place(found):
            sections["correctness"][name] = found if found is not None else {
                "passed": False, "error": stages.records[f"correctness.{name}"]["error"]}
        run(f"correctness.{name}", fn, place)

    def appended(items: list):
        """A ``place`` that appends a stage's result to ``items`` when there is one."""
        def place(found):
            if found:
                items.append(found)
        return place

    append_row = appended(sections["epoch_time"]["rows"])

    def epoch_time(variant: str) -> None:
        run(f"epoch_time.{variant}", lambda: timing.time_variant(variant, sizes, data), append_row)

    def train_recipe(variant: str) -> None:
        run("recipe", lambda: recipe.train_recipe(variant, args.recipe_epochs, sizes, data),
            lambda found: sections.update(recipe=found), budget=False)

    run("load_cifar10", load)
    data, root = held.get("data"), held.get("root")
    if args.recipe_only:
        train_recipe(args.recipe_variant or "all")
        return result
    for variant in timing.VARIANTS:
        epoch_time(variant)
    fp32 = next((r for r in sections["epoch_time"]["rows"] if r["variant"] == "fp32"), None)

    def batched_row(found):
        append_row(found)
        if found and fp32:
            sections["epoch_time"]["batching"].append(timing.batching_ratio(fp32, found))

    for replicates in sizes.replicates:
        run(f"epoch_time.batched_x{replicates}", lambda r=replicates: timing.time_batched(r, sizes, data), batched_row)
    eight = next((r for r in sections["epoch_time"]["rows"] if r["variant"] == f"batched x{max(sizes.replicates)}"), None)
    if fp32:
        sections["projections"] = report.projections(fp32["epoch_seconds"],
                                                     eight["epoch_seconds_per_replicate"] if eight else None)

    imp_out = args.out / "imp"
    run("imp_run", lambda: pipeline.run_short_imp(sizes, root, imp_out, device),
        lambda found: sections.update(imp=found or {}))
    run("el2n", lambda: pipeline.run_el2n(sizes, root, imp_out, device),
        lambda found: sections["imp"].update(el2n=found))
    correct("pruned_zero_bf16", lambda: correctness.pruned_stay_zero("bf16", sizes, data))
    correct("pruned_zero_compiled", lambda: correctness.pruned_stay_zero("compiled", sizes, data))
    correct("rewind_restored", lambda: correctness.rewind_restored(sizes, root, imp_out, data))
    correct("batched_agrees", lambda: correctness.batched_agrees(sizes, data))
    correct("same_seeds", lambda: correctness.same_seeds(sizes, data, args.data if has_mnist else None))
    for variant in timing.LATER_VARIANTS:
        epoch_time(variant)
    correct("pruned_zero_cudagraphs", lambda: correctness.pruned_stay_zero("compiled_cudagraphs", sizes, data))
    fastest = timing.fastest(sections["epoch_time"]["rows"])
    for variant in dict.fromkeys(["fp32"] + ([fastest["variant"]] if fastest else [])):
        run(f"profile.{variant}", lambda v=variant: profile.profile_variant(v, sizes, data),
            appended(sections["profile"]))
    if args.recipe:
        train_recipe(args.recipe_variant or (fastest["variant"] if fastest else "fp32"))
    return result


def report_name(args: argparse.Namespace) -> str:
    return "gpu_check_recipe" if args.recipe_only else "gpu_check"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        result = check(args)
    except UserError as error:
        print(f"gpu_check: error: {error}", file=sys.stderr)
        return 2
    failed = [name for name, record in result["stages"].items() if not record["ok"]]
    wrong = [name for name, c in result["sections"]["correctness"].items() if not c["passed"]]
    print(f"gpu_check: {'passed' if result['passed'] else 'FAILED'} in {result['wall_seconds']:.1f} s; "
          f"failed stages: {', '.join(failed) or 'none'}; failed checks: {', '.join(wrong) or 'none'}; "
          f"wrote {args.out / (report_name(args) + '.json')} and {args.out / (report_name(args) + '.md')}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
