"""``augsense stimuli CONFIG --out DIR``: export a design's augmented images for a recording outside augsense."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``stimuli`` sub-command (every run option is a flag, as for ``augsense run``)."""
    from augsense.commands._options import add_config_flags

    parser = subparsers.add_parser(
        "stimuli", help="export a design's augmented images (PNG) and its design table for an experiment",
        description="Writes OUT/stimuli/<trial>.png in presentation order, OUT/design.csv and design.parquet (one row "
                    "per trial: trial, file, stimulus id, repeat, design block, base row, role, every factor's "
                    "parameters) and OUT/design.json (what rebuilds the design). Record one response per trial and "
                    "analyse them with `augsense responses OUT/design.parquet RESPONSES`.")
    parser.add_argument("config", nargs="?", help="TOML config file (as for `augsense run`: factors, estimator, n, "
                                                  "seed, images, image_mode)")
    parser.add_argument("--out", default="runs/stimuli", help="export folder (default: runs/stimuli)")
    parser.add_argument("--size", default="224", help="stimulus side in pixels (default 224)")
    parser.add_argument("--resize", default=None,
                        help="shorter side before the centre crop (default: 256/224 of --size, as the embedded model)")
    parser.add_argument("--repeats", default="1", help="presentations of every stimulus, to measure trial noise (default 1)")
    parser.add_argument("--shuffle", default=None, metavar="SEED",
                        help="shuffle the presentation order with this seed (the table keeps the mapping)")
    add_config_flags(parser)
    parser.set_defaults(func=cmd_stimuli)


def cmd_stimuli(args: argparse.Namespace) -> int:
    from augsense.analyses.stimuli import StimulusDesign
    from augsense.commands._options import load_config, parse_number
    from augsense.errors import AugsenseError
    from augsense.io.lock import ADVICE, holding, prepare_out_dir

    size = parse_number("size", args.size, int)
    resize = parse_number("resize", args.resize, int) if args.resize is not None else None
    repeats = parse_number("repeats", args.repeats, int)
    shuffle = parse_number("shuffle", args.shuffle, int) if args.shuffle is not None else None
    if size < 8:
        raise AugsenseError(f"--size {size}: stimuli need at least 8 pixels per side")
    config = load_config(args.config, args)
    out = prepare_out_dir(args.out)  # writable, before the images are read
    with holding(out, advice=ADVICE):  # one export at a time: a second is refused at once, naming the holder
        design = StimulusDesign.from_config(config, size=size, resize=resize, repeats=repeats, shuffle_seed=shuffle)
        table = design.export(out)
    print(f"augsense stimuli: {design.n_stimuli} stimuli ({config.estimator}, N = {config.n}, group "
          f"{design.group_size}: {', '.join(design.design.roles[:4])}{', …' if design.group_size > 4 else ''}) on "
          f"{len(design.image_sources)} images, {design.n_trials} trials"
          + (f" in shuffled order (seed {shuffle})" if shuffle is not None else " in design order"))
    print(f"written: {out}/stimuli/*.png, {table}, {out}/design.csv, {out}/design.json")
    print(f"next: record one response per trial (columns: trial or stimulus, then one per unit), then run "
          f"`augsense responses {table} RESPONSES.csv --out RUN_DIR`")
    return 0
