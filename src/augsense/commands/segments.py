"""``augsense segments``: a sensitivity run on a network segment fed one HSV channel at a time."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``segments`` sub-command (every run option is a flag, as for ``augsense run``)."""
    from augsense.commands._options import add_config_flags

    parser = subparsers.add_parser(
        "segments", help="HSV single-channel segments: which of H, S, V carries each unit's sensitivity",
        description="Cuts a block out of the network (e.g. features.0-2, conv1,bn1,relu,maxpool or layer1), feeds it "
                    "the H, S or V channel of the augmented input replicated to the block's input width, runs the "
                    "sensitivity analysis on the block's units per channel (OUT/h, OUT/s, OUT/v run folders) and "
                    "attributes each unit and (unit, factor) to a channel (OUT/segments.parquet).")
    parser.add_argument("config", nargs="?", help="TOML config file (as for `augsense run`)")
    parser.add_argument("--out", default="runs/segments", help="folder for the per-channel runs and segments.parquet")
    parser.add_argument("--overwrite", action="store_true", help="replace finished runs in the channel folders")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(parser)
    parser.add_argument("--channel", default=None,
                        help="h, s, v, a subset (hs, sv, hv, hsv), comma-separated ones, all (h, s, v) or subsets "
                             "(all seven); default: segment_channel, all three")
    parser.add_argument("--neurons", default=None, metavar="MODULE:INDICES",
                        help="keep only these output channels of one module of the segment, as the paper's selected "
                             "units: e.g. features.0:1,2,4-8 or bn1:0,3; or a .json file ({module: [indices]} or the "
                             "paper's *_single_units.json list); default: all channels")
    parser.add_argument("--resize", action="store_true",
                        help="area-average the input to the segment's resolution inside the network (default: the "
                             "image's own resolution, as the paper)")
    parser.set_defaults(func=cmd_segments)


def cmd_segments(args: argparse.Namespace) -> int:
    from augsense.analyses.segments import run_segments
    from augsense.commands._options import load_config
    from augsense.errors import AugsenseError

    config = load_config(args.config, args)
    if not config.segment:
        raise AugsenseError("name the block with --segment, e.g. features.0-2, conv1,bn1,relu,maxpool or layer1")
    channel = args.channel or config.segment_channel
    channels = [c.strip() for c in channel.lower().split(",")] if channel not in ("all", "subsets") else channel
    layers = config.layers if args.layers is not None or args.config is not None else None
    from augsense.io.lock import ADVICE, holding, prepare_out_dir

    out = prepare_out_dir(args.out)
    with holding(out, advice=ADVICE):  # segments.parquet …: one writer at a time, a second refused naming the holder
        result = run_segments(config, config.segment, channels=channels, out_dir=out, layers=layers,
                              progress=not args.quiet, overwrite=args.overwrite, resize=args.resize,
                              neurons=args.neurons)
    print_segments(result, out)
    return 0


def print_segments(result: Any, out: Path) -> None:
    """A one-screen summary: units per layer attributed to H, S and V."""
    table = result.attribution
    whole = table[(table.factor == "all") & table.attributed]
    print(f"segment {result.segment.spec} (modules {', '.join(result.segment.modules)}; input "
          f"{'×'.join(map(str, result.segment.input_shape))}), channels {', '.join(result.runs)}")
    for module, indices in result.neurons.items():
        print(f"  neurons {module}: {', '.join(map(str, indices))} (the tables' neuron column)")
    for layer, rows in whole.groupby("layer", sort=False):
        counts = rows.channel.value_counts().reindex(list(result.runs), fill_value=0)
        total = int(table[(table.layer == layer) & (table.factor == "all")].unit.nunique())
        print(f"  {layer:<20} units attributed to " + ", ".join(f"{c.upper()} {n}" for c, n in counts.items())
              + f" (of {total}; the rest move under no channel)")
    means = result.indices[result.indices.quantity == "total_order"] if len(result.indices) else result.indices
    if len(means):
        top = means.sort_values("mean", ascending=False).groupby(["channel", "layer"], sort=False).head(1)
        for row in top.itertuples():
            print(f"  {row.channel.upper():<4} {row.layer:<20} largest mean total-order index: {row.factor} {row.mean:.3f}")
    print(f"results: {out}/segments.parquet, segments_indices.parquet, segments_neurons.parquet and run folders "
          f"{', '.join(f'{out}/{c}' for c in result.runs)}")
