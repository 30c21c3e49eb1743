"""Flags and config loading shared by the sub-commands that run an analysis (run, demo, segments, …)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from pathlib import Path
from typing import Any

from augsense.errors import AugsenseError


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per SensitivityConfig field (``batch_size`` → ``--batch-size``)."""
    from augsense.config import SensitivityConfig

    hints = typing.get_type_hints(SensitivityConfig)
    group = parser.add_argument_group("run options (override the config file)")
    for f in dataclasses.fields(SensitivityConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if f.name == "bounds":
            group.add_argument(flag, action="append", metavar="FACTOR.PARAM=LOW,HIGH", default=None,
                               help="narrow a parameter's bounds, e.g. hue.shift=-0.25,0.25 (repeatable)")
        elif f.name == "layouts":
            group.add_argument(flag, metavar="LAYER=LAYOUT,…", default=None,
                               help="declare output layouts: nchw, nhwc, tokens or tokens:P, e.g. features.1=nhwc")
        elif hint is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif typing.get_origin(hint) is list:
            group.add_argument(flag, metavar="A,B,…", default=None, help="comma-separated list")
        else:
            group.add_argument(flag, default=None, metavar=f.name.upper())


def parse_number(key: str, text: str, kind: type) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise AugsenseError(f"--{key.replace('_', '-')} expects {'an integer' if kind is int else 'a number'}, "
                            f"got {text!r}") from None


def check_seed(seed: int, flag: str = "--seed") -> int:
    """``seed`` when it is a non-negative integer (what numpy's and torch's generators take), else an AugsenseError.

    The same rule and words as ``run`` / ``stimuli`` (the design refuses a negative seed there).
    """
    if int(seed) < 0:
        raise AugsenseError(f"{flag}: seed must be a non-negative integer, got {seed}")
    return int(seed)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from augsense.config import SensitivityConfig

    hints = typing.get_type_hints(SensitivityConfig)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(SensitivityConfig):
        raw = getattr(args, f.name, None)
        if raw is None:
            continue
        hint = hints[f.name]
        base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        if f.name == "bounds":
            bounds: dict[str, dict[str, list[float]]] = {}
            for item in raw:
                try:
                    target, span = item.split("=", 1)
                    factor, parameter = target.split(".", 1)
                    low, high = (float(v) for v in span.split(","))
                except ValueError:
                    raise AugsenseError(f"--bounds {item!r}: write FACTOR.PARAM=LOW,HIGH, "
                                        "e.g. hue.shift=-0.25,0.25") from None
                bounds.setdefault(factor, {})[parameter] = [low, high]
            values["bounds"] = bounds
        elif f.name == "layouts":
            pairs = [item.split("=", 1) for item in raw.split(",") if item.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise AugsenseError(f"--layouts {raw!r}: write LAYER=LAYOUT[,LAYER=LAYOUT], e.g. features.1=nhwc")
            values["layouts"] = {layer.strip(): layout.strip() for layer, layout in pairs}
        elif hint is bool:
            values[f.name] = raw
        elif typing.get_origin(hint) is list:
            values[f.name] = [v.strip() for v in raw.split(",") if v.strip()]
        elif base is int:
            values[f.name] = parse_number(f.name, raw, int)
        elif base is float:
            values[f.name] = parse_number(f.name, raw, float)
        else:
            values[f.name] = raw
    return values


def load_config(path: str | None, args: argparse.Namespace, base: dict[str, Any] | None = None):
    import tomllib

    from augsense.config import SensitivityConfig

    data: dict[str, Any] = dict(base or {})
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise AugsenseError(f"config file {path!r} does not exist")
        try:
            data.update(tomllib.loads(file.read_text(encoding="utf-8")))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise AugsenseError(f"config file {path!r} is not valid TOML: {error}") from error
    data.update(_overrides(args))
    return SensitivityConfig.from_dict(data)


def preflight(args: argparse.Namespace) -> None:
    """Check --out before anything heavy is imported or loaded (rank 0 only under torchrun)."""
    from augsense.io.lock import preflight as check_folder

    if os.environ.get("RANK", "0").strip() in ("", "0"):
        check_folder(Path(args.out), resume=args.resume, overwrite=args.overwrite)


def add_run_flags(command: argparse.ArgumentParser, default_out: str) -> None:
    """--out, --resume, --overwrite, --quiet and every config key: the flags of ``run`` and ``demo``."""
    command.add_argument("--out", default=default_out, help=f"run folder (default: {default_out})")
    command.add_argument("--resume", action="store_true", help="continue a killed run in --out from its checkpoint")
    command.add_argument("--overwrite", action="store_true", help="replace the finished run or the checkpoint in "
                         "--out (refused without it)")
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(command)
