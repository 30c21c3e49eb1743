"""``augsense report RUN_DIR``: write RUN_DIR/report.html from a run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    report = subparsers.add_parser("report", help="write RUN_DIR/report.html from a run folder")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from augsense.io.lock import holding
    from augsense.report.html import write_report

    warnings: list[str] = []
    run_dir = Path(args.run_dir)
    if run_dir.is_dir():
        with holding(run_dir):  # report.html and figures/: one writer at a time
            path = write_report(run_dir, warnings)
    else:
        path = write_report(run_dir, warnings)  # says the folder does not exist
    for line in warnings:  # the page's banner, on the console too
        print(f"augsense: warning: {line}", file=sys.stderr)
    print(f"report: {path}")
    return 0
