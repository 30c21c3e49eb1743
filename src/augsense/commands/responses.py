"""``augsense responses DESIGN_TABLE RESPONSES --out DIR``: indices of recorded responses to exported stimuli."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``responses`` sub-command."""
    parser = subparsers.add_parser(
        "responses", help="Sobol indices / Shapley effects of recorded responses to exported stimuli",
        description="Reads responses (CSV or Parquet: a 'stimulus' or 'trial' id column, one numeric column per "
                    "recorded unit, rows in any order, empty/NaN for missing trials), averages repeats, drops base "
                    "rows whose pick-freeze group has a missing member, and writes the same run folder as "
                    "`augsense run` (indices.parquet, layers.parquet, maps.npz, run.json, report.html).")
    parser.add_argument("design_table", help="design.parquet / design.csv (or the folder) written by `augsense stimuli`")
    parser.add_argument("responses", help="recorded responses, .csv or .parquet")
    parser.add_argument("--out", default="runs/responses", help="run folder (default: runs/responses)")
    parser.add_argument("--units", default=None, metavar="A,B,…", help="the unit columns (default: every non-id column)")
    parser.add_argument("--layer", default="responses", help="name the units are reported under (default: responses)")
    parser.add_argument("--confidence", default=None, help="CI level (default: the exported config's, 0.95)")
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True, help="write report.html")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of a finished run in --out (refused without it)")
    parser.set_defaults(func=cmd_responses)


def cmd_responses(args: argparse.Namespace) -> int:
    from augsense.commands._options import parse_number
    from augsense.io.lock import open_run_folder

    confidence = parse_number("confidence", args.confidence, float) if args.confidence is not None else None
    units = [u.strip() for u in args.units.split(",") if u.strip()] if args.units else None
    # writable, one writer at a time (a second is refused, naming the holder), and another run's results
    # are replaced only with --overwrite: all before any computing
    held, _ = open_run_folder(args.out, overwrite=args.overwrite)
    out = Path(args.out)
    try:
        return _responses(args, out, units, confidence)
    finally:
        held.release()


def _responses(args: argparse.Namespace, out: Path, units: list[str] | None, confidence: float | None) -> int:
    from augsense.analyses.responses import analyse_responses

    run = analyse_responses(args.design_table, args.responses, units=units, layer=args.layer, confidence=confidence,
                            out_dir=out)
    print("augsense responses: " + "\n  ".join(run.summary.lines()))
    quantity = "shapley" if run.result.shapley is not None else "total_order"
    table = getattr(run.result, quantity)
    print(f"{quantity.replace('_', ' ')} per unit (estimate; dead units NaN):")
    print(f"  {'unit':<16} " + " ".join(f"{p:>12}" for p in run.players))
    for name, row in list(zip(run.units, table))[:20]:
        print(f"  {name:<16} " + " ".join(f"{v:>12.3f}" for v in row))
    if len(run.units) > 20:
        print(f"  … {len(run.units) - 20} more units in {out}/indices.parquet")
    if args.report:
        from augsense.report.html import write_report

        write_report(out)
    print(f"results: {out}/indices.parquet, layers.parquet, maps.npz, run.json" + (", report.html" if args.report else ""))
    return 0
