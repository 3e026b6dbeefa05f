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
    parser.add_argument("--data", type=Path, required=True, help="folder with MNIST/raw/*.gz and cifar10-jpeg.zip")
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, gpu_check.md, caches")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU test of this script")
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="stages after this are skipped")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend (default: inductor, eager with --tiny)")
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> dict:
    """Run every stage; the report (also written to OUT/gpu_check.{json,md})."""
    import dataclasses

    import imp.train
    from imp.base.runtime import choose_device, set_threads
    from runs.gpu_check import correctness, pipeline, report, timing
    from runs.gpu_check.common import FULL, TINY, Stages, check_data, load_cifar, machine, unpack_cifar

    check_data(args.data)
    device = choose_device(args.device)
    sizes = TINY if args.tiny else FULL
    if args.compile_backend:
        sizes = dataclasses.replace(sizes, compile_backend=args.compile_backend)
    imp.train.COMPILE_BACKEND = sizes.compile_backend  # the one knob train.compile reads
    set_threads(1 if device.type == "cpu" else 0)
    args.out.mkdir(parents=True, exist_ok=True)
    stages = Stages(60 * args.budget_minutes)
    run = stages.run
    held = {}

    def load() -> dict:
        held["root"] = unpack_cifar(args.data, args.out / "cache", sizes.per_class)
        held["data"] = load_cifar(held["root"], sizes.batch, device)
        return {"train": len(held["data"].train), "test": len(held["data"].test), "root": str(held["root"])}

    run("load_cifar10", load)
    data, root = held.get("data"), held.get("root")
    rows = [run(f"epoch_time.{variant}", lambda v=variant: timing.time_variant(v, sizes, data))
            for variant in timing.VARIANTS]
    batched = [run(f"epoch_time.batched_x{r}", lambda r=r: timing.time_batched(r, sizes, data))
               for r in sizes.replicates]
    fp32 = rows[0]
    ratios = [timing.batching_ratio(fp32, b) for b in batched if fp32 and b]

    imp_out = args.out / "imp"
    imp_result = run("imp_run", lambda: pipeline.run_short_imp(sizes, root, imp_out, device)) or {}
    imp_result["el2n"] = run("el2n", lambda: pipeline.run_el2n(sizes, root, imp_out, device))

    checks = {
        "pruned_zero_bf16": lambda: correctness.pruned_stay_zero("bf16", sizes, data),
        "pruned_zero_compiled": lambda: correctness.pruned_stay_zero("compiled", sizes, data),
        "rewind_restored": lambda: correctness.rewind_restored(sizes, root, imp_out, data),
        "batched_agrees": lambda: correctness.batched_agrees(sizes, data),
        "same_seeds": lambda: correctness.same_seeds(sizes, data, args.data),
    }
    correct = {}
    for name, fn in checks.items():
        found = run(f"correctness.{name}", fn)
        correct[name] = found if found is not None else {"passed": False, "error": stages.records[f"correctness.{name}"]["error"]}

    eight = next((b for b in batched if b and b["replicates"] == max(sizes.replicates)), None)
    projected = run("projections", lambda: {"rows": report.projections(
        fp32["epoch_seconds"], eight["epoch_seconds_per_replicate"] if eight else None)}) or {"rows": []}

    passed = all(record["ok"] for record in stages.records.values()) and all(c["passed"] for c in correct.values())
    settings = {"mode": "tiny (CPU test sizes: the numbers say only that it runs)" if args.tiny else "full",
                **dataclasses.asdict(sizes), "compile_backend": imp.train.COMPILE_BACKEND}
    result = {
        "passed": passed, "wall_seconds": stages.elapsed(), "machine": machine(device), "settings": settings,
        "sections": {"epoch_time": {"rows": [r for r in rows + batched if r], "batching": ratios},
                     "imp": imp_result, "correctness": correct, "projections": projected["rows"]},
        "stages": {name: {k: v for k, v in record.items() if k != "result"} for name, record in stages.records.items()},
    }
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "gpu_check.md").write_text(report.markdown(result))
    return result


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
          f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
