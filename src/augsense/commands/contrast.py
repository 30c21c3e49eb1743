"""``augsense contrast``: each augmentation alone versus the clean image, per unit, with BY-FDR."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``contrast`` sub-command (every run option is a flag, as for ``augsense run``)."""
    from augsense.commands._options import add_config_flags

    parser = subparsers.add_parser(
        "contrast", help="treatment–control contrast: each factor alone vs the clean image, per unit (Wilcoxon, BY-FDR)",
        description="Pairs every image with several draws of each factor alone and tests, per unit, whether the "
                    "factor moves it (mean difference, Cohen's d_z, Wilcoxon signed-rank, rank-biserial and point-biserial r), with "
                    "Benjamini–Yekutieli FDR across all units, layers and factors. Writes OUT/contrast.parquet.")
    parser.add_argument("config", nargs="?", help="TOML config file (as for `augsense run`)")
    parser.add_argument("--out", default="runs/contrast", help="folder for contrast.parquet (a run folder is fine)")
    parser.add_argument("--draws", default="8", help="parameter draws per image for parametric factors (default 8)")
    parser.add_argument("--alpha", default="0.05", help="false discovery rate (default 0.05)")
    parser.add_argument("--max-difference-mib", default="1024",
                        help="memory for the kept paired differences of the rank tests (default 1024 MiB)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(parser)
    parser.set_defaults(func=cmd_contrast)


def cmd_contrast(args: argparse.Namespace) -> int:
    from augsense.analyses.contrast import format_summary, run_contrast
    from augsense.commands._options import load_config, parse_number
    from augsense.io.lock import ADVICE, holding, prepare_out_dir

    draws = parse_number("draws", args.draws, int)
    alpha = parse_number("alpha", args.alpha, float)
    memory = parse_number("max_difference_mib", args.max_difference_mib, float)
    config = load_config(args.config, args)
    out = prepare_out_dir(args.out)  # writable, before any computing
    with holding(out, advice=ADVICE):  # one writer at a time: a second is refused at once, naming the holder
        run = run_contrast(config, out_dir=out, draws=draws, alpha=alpha, max_difference_bytes=int(memory * 2**20),
                           progress=not args.quiet)
    print(format_summary(run))
    print(f"results: {out}/contrast.parquet, contrast.json")
    return 0
