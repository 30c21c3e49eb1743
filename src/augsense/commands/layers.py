"""``augsense layers [MODEL]``: a model's layers with their output shapes, layouts and unit counts."""

from __future__ import annotations

import argparse
import math
from typing import Any


def register(subparsers: Any) -> None:
    layers = subparsers.add_parser("layers", help="list a model's layers with their output shapes, layouts and units")
    layers.add_argument("model", nargs="?", default="efficientnet-lite0",
                        help="efficientnet-lite0, a torchvision name (resnet18, vit_b_16 …) or timm:NAME")
    layers.add_argument("--weights", default=None, help="local weights file, torchvision weights name, or 'random' "
                        "(the default for a name: listing layers needs no trained weights)")
    layers.add_argument("--depth", type=int, default=None, help="hide modules nested deeper than this")
    layers.add_argument("--layouts", default=None, metavar="LAYER=LAYOUT,…",
                        help="declare layouts (nchw, nhwc, tokens, tokens:P), e.g. features.1=nhwc")
    layers.set_defaults(func=cmd_layers)


def _units(layer: Any, reduction: str) -> str:
    """Unit count of a layer under ``reduction``, or '-' where it cannot apply (ambiguous, no class token)."""
    from augsense.errors import AugsenseError

    try:
        return str(math.prod(layer.layout.unit_shape(reduction, layer.name)))
    except AugsenseError:
        return "-"


def cmd_layers(args: argparse.Namespace) -> int:
    from augsense.errors import AugsenseError
    from augsense.io.models import DEFAULT_MODEL, RANDOM_WEIGHTS, load_model
    from augsense.probe.hooks import list_layers

    declared: dict[str, str] = {}
    if args.layouts:
        pairs = [item.split("=", 1) for item in args.layouts.split(",") if item.strip()]
        if any(len(pair) != 2 for pair in pairs):
            raise AugsenseError(f"--layouts {args.layouts!r}: write LAYER=LAYOUT[,LAYER=LAYOUT], e.g. features.1=nhwc")
        declared = {layer.strip(): layout.strip() for layer, layout in pairs}
    # listing layers needs no trained weights: a name without --weights is built at random
    weights = args.weights if args.weights is not None or args.model in (DEFAULT_MODEL, "default") else RANDOM_WEIGHTS
    bundle = load_model(args.model, weights=weights)
    layers = list_layers(bundle.module, bundle.input_size, layouts=declared)
    print(f"{'layer':<40} {'type':<24} {'output shape':<16} {'layout':<16} {'units mean':>10} {'units none':>11}")
    ambiguous = 0
    for layer in layers:
        if args.depth is not None and layer.name.count(".") >= args.depth:
            continue
        shape = "×".join(str(s) for s in layer.shape)
        notes = [f"called {layer.calls} times"] if layer.calls > 1 else []
        if layer.layout.kind in ("unknown", "batched"):
            ambiguous += layer.layout.kind == "unknown"
            notes.append(layer.layout.how)
        elif layer.layout.kind == "tokens" and layer.layout.prefix:
            notes.append(f"cls: {_units(layer, 'cls')} units")
        note = f"  ({'; '.join(notes)})" if notes else ""
        print(f"{layer.name:<40} {layer.kind:<24} {shape:<16} {layer.layout.label:<16} {_units(layer, 'mean'):>10} "
              f"{_units(layer, 'none'):>11}{note}")
    if ambiguous:
        print(f"\n{ambiguous} layer(s) with an ambiguous layout: declare one to probe it, e.g. "
              "layouts = {\"LAYER\" = \"nhwc\"} in the config or --layouts LAYER=nhwc")
    return 0
