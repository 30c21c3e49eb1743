"""``augsense factors``: the built-in augmentation factors and presets."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    factors = subparsers.add_parser("factors", help="list the built-in augmentation factors and presets")
    factors.set_defaults(func=cmd_factors)


def cmd_factors(args: argparse.Namespace) -> int:
    from augsense.factors import factor_names, get_factor, preset

    print(f"{'factor':<22} parameters (bounds, unit)")
    for name in factor_names():
        factor = get_factor(name)
        params = ", ".join(f"{p.name} ∈ [{p.low:g}, {p.high:g}]{(' ' + p.unit) if p.unit else ''}"
                           for p in factor.parameters) or f"on/off (p = {factor.p:g})"
        print(f"{name:<22} {params}")
    from augsense.factors.registry import PRESETS

    for name in PRESETS:
        print(f"preset {name}: {', '.join(f.name for f in preset(name))}")
    return 0
