"""Projections of the papers' experiments from measured epoch times, and the Markdown file.

Projections are arithmetic on measured numbers, never measurements: each row carries
its formula and its assumptions, and every value is labelled "projected".
"""

import json

LEVELS = 19  # 20% per level: 0.8^19 = 1.44% density
EPOCHS = 160


def projections(epoch_seconds: float, batched_epoch_seconds: float | None) -> list[dict]:
    """Projected hours of (a), (b), (c) at ``epoch_seconds`` per ResNet-20 epoch (one
    replicate, sequential, fp32); with ``batched_epoch_seconds`` (per replicate, 8 batched)
    also the hours if every training ran batched that way."""
    trunk_and_baselines = (LEVELS + 1) + 2 * LEVELS  # dense + 19 levels, reinit and random at each level
    rows = [
        ("(a) IMP ResNet-20 CIFAR-10, 19 levels + dense, 160 ep, rewind 0/500/2000 it, reinit + random, 3 replicates",
         f"3 rewinds x 3 replicates x ((19 + 1) + 2 x 19) networks x {EPOCHS} ep",
         3 * 3 * trunk_and_baselines * EPOCHS),
        ("(b) data diet then IMP: EL2N at epoch 20 (4 runs); pre-train 2000 it on easy/random x 3 sizes + all "
         "(7 rewind points); IMP 10 levels + dense from each, 160 ep, no baselines, 1 replicate (assumed)",
         f"4 x 20 ep + 7 x (2000/391 ep + 11 x {EPOCHS} ep)", 4 * 20 + 7 * (2000 / 391 + 11 * EPOCHS)),
        ("(c) data diet: EL2N at epoch 20 and GraNd at init over 10 runs each; keep-hardest 30/40/50/60/70% by "
         "EL2N and GraNd and random + full data, 160 ep of full-data iterations each, 1 replicate (assumed; "
         "a GraNd pass counted as 1 epoch, not measured)",
         f"10 x 20 ep + 10 x 1 ep + (3 x 5 + 1) x {EPOCHS} ep", 10 * 20 + 10 * 1 + (3 * 5 + 1) * EPOCHS),
    ]
    out = []
    for name, formula, epochs in rows:
        row = {"experiment": name, "formula": f"{formula} = {epochs:,.0f} epochs; hours = epochs x epoch s / 3600",
               "epochs": epochs, "projected_hours_sequential": epochs * epoch_seconds / 3600}
        if batched_epoch_seconds is not None:
            row["projected_hours_batched_x8"] = epochs * batched_epoch_seconds / 3600
        out.append(row)
    return out


def targets(rows: list[dict], batching: list[dict], recipe: dict | None, profiles: list[dict]) -> list[dict]:
    """Issue 16's three targets against what was measured (or, for the minutes without
    ``--recipe``, projected from the fastest one-replicate epoch time, and said so). A
    missed target carries the profile's reading of the variant it was judged on."""
    from runs.gpu_check import timing
    from runs.gpu_check.recipe import STANDARD_EPOCHS, TARGET_ACCURACY, TARGET_MINUTES

    why = {p["variant"]: p["reading"] for p in profiles}
    fastest = timing.fastest(rows)
    standard = recipe if recipe and recipe.get("standard") else None
    out = []
    if standard:
        accuracy = standard["test_accuracy"]
        out.append({"target": f"test accuracy >= {TARGET_ACCURACY:.0%} (160-epoch recipe)", "how": "measured",
                    "value": f"{accuracy:.2%} ({standard['variant']})", "met": accuracy >= TARGET_ACCURACY,
                    "gap": f"{100 * (TARGET_ACCURACY - accuracy):+.2f} points", "why": ""})
    else:
        value = (f"--recipe ran {recipe['epochs']} epochs at width {recipe['width']}, not the standard recipe"
                 if recipe else "run with --recipe")
        out.append({"target": f"test accuracy >= {TARGET_ACCURACY:.0%} (160-epoch recipe)", "how": "not measured",
                    "value": value, "met": None, "gap": "", "why": ""})
    if standard:
        minutes, variant, how = standard["minutes"], standard["variant"], "measured"
    elif fastest:
        minutes, variant = STANDARD_EPOCHS * fastest["epoch_seconds"] / 60, fastest["variant"]
        how = "PROJECTED: 160 x the measured epoch time, compilation and evaluation excluded"
    else:
        minutes = None
    if minutes is None:
        out.append({"target": f"<= {TARGET_MINUTES:g} min per training", "how": "not measured", "value": "",
                    "met": None, "gap": "", "why": ""})
    else:
        met = minutes <= TARGET_MINUTES
        out.append({"target": f"<= {TARGET_MINUTES:g} min per training", "how": how,
                    "value": f"{minutes:.2f} min ({variant})", "met": met,
                    "gap": f"x{minutes / TARGET_MINUTES:.2f} of the target", "why": "" if met else why.get(variant, "")})
    eight = next((b for b in batching if b["replicates"] == 8), None)
    if eight is None:
        out.append({"target": "8 batched >= 4x sequential", "how": "not measured", "value": "", "met": None,
                    "gap": "", "why": ""})
    else:
        ratio = eight["ratio_batched_over_sequential"]
        out.append({"target": "8 batched >= 4x sequential", "how": "measured (fp32)", "value": f"{ratio:.2f}x",
                    "met": ratio >= 4.0, "gap": f"x{4.0 / ratio:.2f} short" if ratio < 4.0 else "",
                    "why": "" if ratio >= 4.0 else why.get("fp32", "")})
    return out


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)[:200].replace("|", "/")
    return str(value).replace("|", "/").replace("\n", " ")


def table(rows: list[dict]) -> str:
    if not rows:
        return "(none)\n"
    keys = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(row.get(key, "")) for key in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(report: dict) -> str:
    """The Markdown file: machine, stages, then a table per section."""
    sections = report["sections"]
    parts = [f"# Device check ({'passed' if report['passed'] else 'FAILED'})\n",
             f"Total wall time {report['wall_seconds']:.1f} s; settings: {report['settings']['mode']}.\n",
             "## Machine\n", table([report["machine"]]),
             "## Stages\n", table([{"stage": name, "ok": record["ok"], "seconds": record["seconds"],
                                    "error": record.get("error", "")} for name, record in report["stages"].items()]),
             "## 1. Epoch time (measured; one epoch = 391 iterations extrapolated)\n",
             table(sections["epoch_time"]["rows"]), table(sections["epoch_time"]["batching"]),
             "## 2. Short IMP run on CIFAR-10 (measured)\n",
             table(sections["imp"].get("networks", [])),
             table([{"measurement": m["measurement"], "level": m["level"],
                     **{k: v for k, v in m.items() if k not in ("measurement", "level", "columns")},
                     **m["columns"]} for m in sections["imp"].get("measurements", [])]),
             table([sections["imp"]["el2n"]] if sections["imp"].get("el2n") else []),
             "## 3. Correctness on the device\n",
             table([{"check": name, **check} for name, check in sections["correctness"].items()]),
             "## 4. Projections (PROJECTED from the measured fp32 epoch time, not measured)\n",
             table(sections["projections"]),
             "## 5. Where a step's time goes (measured, torch.profiler)\n",
             table([{k: v for k, v in p.items() if k != "top_kernels"} for p in sections["profile"]]),
             *[f"Top kernels of {p['variant']}:\n\n" + table(p["top_kernels"]) for p in sections["profile"]
               if p.get("top_kernels")],
             "## 6. Targets (issue 16)\n", table(sections["targets"]),
             "## 7. The whole recipe (--recipe; measured)\n", table([sections["recipe"]] if sections["recipe"] else [])]
    return "\n".join(parts)
