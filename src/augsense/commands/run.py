"""``augsense run [CONFIG]``: a sensitivity analysis from a TOML config and/or flags."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from augsense.commands._options import add_run_flags, load_config, preflight


def register(subparsers: Any) -> None:
    command = subparsers.add_parser("run", help="run a sensitivity analysis from a TOML config and/or flags")
    command.add_argument("config", nargs="?", help="TOML config file (every key is also a flag)")
    add_run_flags(command, "runs/run")
    command.set_defaults(func=cmd_run)


def print_summary(run: Any, out: Path | None) -> None:
    print(f"\naugsense: {run.bundle.name}, {len(run.images)} images, factors {', '.join(run.players)}, "
          f"{run.config.estimator} N={run.config.n} ({run.design.n_evaluations} evaluations, "
          f"{run.timings.get('images_per_s', float('nan')):.1f} images/s)")
    print(f"weights: {run.bundle.weights}")
    if run.clean_accuracy is not None:
        print(f"top-1 accuracy on the unaugmented labelled images: {run.clean_accuracy:.1%}")
    else:
        from augsense.report.trust import top1_reason

        labels = getattr(run.images, "labels", None)
        labelled = labels is not None and bool((labels >= 0).any())
        print(f"top-1 accuracy on the unaugmented images: {top1_reason(labelled, run.images.notices)}")
    outside, total = run.result.outside_unit_interval() if run.result is not None else (0, 0)
    if outside:
        print(f"{outside} of {total} unit indices are estimated below 0 or above 1: estimates are not clipped, so "
              "indices near 0 or 1 can land outside [0, 1] by sampling noise (see their intervals)")
    quantity = "shapley" if run.config.estimator.startswith("shapley") else "total_order"
    print(f"dominant factors per layer (aggregated {quantity.replace('_', ' ')} share of variance):")
    for layer, ranking in run.dominant_factors(quantity).items():
        if all(value != value for _, value in ranking):  # every share NaN: no unit of the layer varied at all
            print(f"  {layer:<16} no variance: every unit is constant under the augmentations (a constant layer, "
                  "e.g. an untrained head initialised to zero), so it has no indices")
            continue
        top = ", ".join(f"{name} {value:.2f}" for name, value in ranking[:3])
        print(f"  {layer:<16} {top}")
    warnings = summary_warnings(run)
    if warnings:
        print("before trusting these numbers:")
        for line in warnings:
            print(f"  warning: {line}")
    if out is not None:
        print(f"results: {out}/indices.parquet, layers.parquet, maps.npz, run.json"
              + (f", report.html" if (out / "report.html").exists() else ""))


def summary_warnings(run: Any) -> list[str]:
    """The run's warnings (printed at its start too) and those its results raise: skipped files, wide intervals."""
    from augsense.report.trust import skipped_warning, wide_interval_warning

    lines = list(run.warnings)
    skipped = skipped_warning(list(getattr(run.images, "skipped", []) or []))
    if skipped:
        lines.append(skipped)
    aggregated = run.result.aggregated if run.result is not None else None
    if aggregated is not None:
        rows = []
        for quantity in ("first_order", "total_order", "shapley"):
            ci = getattr(aggregated, f"{quantity}_ci", None)
            if ci is None:
                continue
            for g, layer in enumerate(run.layers):
                for j, factor in enumerate(run.players):
                    rows.append((layer, factor, quantity, float(ci[0][g, j]), float(ci[1][g, j])))
        for quantity in ("second_order", "interactions"):  # layer-level pairs: (2, groups, d, d)
            ci = getattr(aggregated, f"{quantity}_ci", None)
            if ci is None:
                continue
            for g, layer in enumerate(run.layers):
                for i, first in enumerate(run.players):
                    for j in range(i + 1, len(run.players)):
                        rows.append((layer, f"{first}×{run.players[j]}", quantity, float(ci[0][g, i, j]),
                                     float(ci[1][g, i, j])))
        wide = wide_interval_warning(rows)
        if wide:
            lines.append(wide)
    return lines


def finish(run: Any, out: Path | None, report: bool) -> None:
    if out is not None and report and run.shard.rank == 0:
        write_report_locked(out)
    if run.shard.rank == 0:
        print_summary(run, out)


def write_report_locked(out: Path) -> None:
    """Write the report of the results just committed, holding the folder's lock (the run released it).

    Another writer that took the folder in between (a ``run --overwrite``, ``augsense mask``) leaves the
    committed results alone: the report is skipped with one line saying how to write it later.
    """
    from augsense.errors import AugsenseError
    from augsense.io.lock import holding
    from augsense.report.html import write_report

    try:
        with holding(out, command="report"):
            write_report(out)
    except AugsenseError as error:
        print(f"augsense: report skipped, the results are written: {error}; write it later with "
              f"`augsense report {out}`", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args)  # a bad config fails before --out is created
    preflight(args)
    from augsense.analyses.sensitivity import run_sensitivity

    out = Path(args.out)
    if config.segment is not None:
        from augsense.commands.segments import print_segments

        from augsense.analyses.segments import run_segments
        from augsense.config import DEMO_LAYERS

        # the default layers belong to the whole network: a segment defaults to its last module
        layers = None if config.layers == DEMO_LAYERS else config.layers
        from augsense.io.lock import ADVICE, holding

        with holding(out, advice=ADVICE):  # segments.parquet …: one writer at a time, as `augsense segments`
            result = run_segments(config, config.segment, channels=config.segment_channel, out_dir=out,
                                  layers=layers, progress=not args.quiet, overwrite=args.overwrite)
        print_segments(result, out)
        return 0
    run = run_sensitivity(config, out_dir=out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    finish(run, out, config.report)
    return 0
