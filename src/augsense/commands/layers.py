"""``augsense layers [MODEL]``: a model's layers with their output shapes and unit counts."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    layers = subparsers.add_parser("layers", help="list a model's layers with their output shapes")
    layers.add_argument("model", nargs="?", default="efficientnet-lite0")
    layers.add_argument("--weights", default=None, help="local state-dict file, torchvision weights name, or 'random'")
    layers.add_argument("--depth", type=int, default=None, help="hide modules nested deeper than this")
    layers.set_defaults(func=cmd_layers)


def cmd_layers(args: argparse.Namespace) -> int:
    import math

    from augsense.io.models import load_model
    from augsense.probe.hooks import list_layers, unit_shape

    from augsense.io.models import DEFAULT_MODEL, RANDOM_WEIGHTS

    # listing layers needs no trained weights: a torchvision name without --weights is built at random
    weights = args.weights if args.weights is not None or args.model in (DEFAULT_MODEL, "default") else RANDOM_WEIGHTS
    bundle = load_model(args.model, weights=weights)
    layers = list_layers(bundle.module, bundle.input_size)
    print(f"{'layer':<36} {'type':<24} {'output shape':<18} {'units (mean)':>12} {'units (none)':>12}")
    for layer in layers:
        if args.depth is not None and layer.name.count(".") >= args.depth:
            continue
        shape = "×".join(str(s) for s in layer.shape)
        shared = "  (called {} times)".format(layer.calls) if layer.calls > 1 else ""
        print(f"{layer.name:<36} {layer.kind:<24} {shape:<18} {math.prod(unit_shape(layer.shape, 'mean')):>12} "
              f"{math.prod(unit_shape(layer.shape, 'none')):>12}{shared}")
    return 0
