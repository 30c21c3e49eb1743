"""``augsense demo``: the embedded default, EfficientNet-Lite0 on the bundled photos, offline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from augsense.commands._options import add_run_flags, load_config, preflight
from augsense.commands.run import finish


def register(subparsers: Any) -> None:
    command = subparsers.add_parser("demo", help="the embedded default: EfficientNet-Lite0 on the bundled photos, "
                                    "offline")
    add_run_flags(command, "runs/demo")
    command.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from augsense.config import DEMO_LAYERS

    base = {"model": "efficientnet-lite0", "images": "bundled", "layers": list(DEMO_LAYERS),
            "factors": ["paper-set1", "paper-set2"], "estimator": "sobol", "n": 256, "batch_size": 32}
    config = load_config(None, args, base)  # a bad option fails before --out is created
    preflight(args)
    from augsense.analyses.sensitivity import run_sensitivity

    out = Path(args.out)
    print(f"augsense demo: {config.model} on the bundled photos, {len(config.layers)} layers, "
          f"factors {' + '.join(config.factors)}; writing to {out}", file=sys.stderr)
    run = run_sensitivity(config, out_dir=out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    finish(run, out, config.report)
    return 0
