"""The command line: parse, load the config, call the analyses. Errors print one line, exit 2.

Exit codes: 0 done; 2 bad input or a refused/failed run (one line on stderr); 130 / 143 stopped by
SIGINT / SIGTERM (a checkpoint is written and the resume command printed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path
from typing import Any, Callable, Sequence

from augsense.errors import AugsenseError

EXIT_BAD_INPUT = 2


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


def _print_summary(run: Any, out: Path | None) -> None:
    print(f"\naugsense: {run.bundle.name}, {len(run.images)} images, factors {', '.join(run.players)}, "
          f"{run.config.estimator} N={run.config.n} ({run.design.n_evaluations} evaluations, "
          f"{run.timings.get('images_per_s', float('nan')):.1f} images/s)")
    print(f"weights: {run.bundle.weights}")
    if run.clean_accuracy is not None:
        print(f"top-1 accuracy on the unaugmented labelled images: {run.clean_accuracy:.1%}")
    outside, total = run.result.outside_unit_interval() if run.result is not None else (0, 0)
    if outside:
        print(f"{outside} of {total} unit indices are estimated below 0 or above 1: estimates are not clipped, so "
              "indices near 0 or 1 can land outside [0, 1] by sampling noise (see their intervals)")
    quantity = "shapley" if run.config.estimator.startswith("shapley") else "total_order"
    print(f"dominant factors per layer (aggregated {quantity.replace('_', ' ')} share of variance):")
    for layer, ranking in run.dominant_factors(quantity).items():
        top = ", ".join(f"{name} {value:.2f}" for name, value in ranking[:3])
        print(f"  {layer:<16} {top}")
    if out is not None:
        print(f"results: {out}/indices.parquet, layers.parquet, maps.npz, run.json"
              + (f", report.html" if (out / "report.html").exists() else ""))


def _finish(run: Any, out: Path | None, report: bool) -> None:
    if out is not None and report and run.shard.rank == 0:
        from augsense.report.html import write_report

        write_report(out)
    if run.shard.rank == 0:
        _print_summary(run, out)


def preflight(args: argparse.Namespace) -> None:
    """Check --out before anything heavy is imported or loaded (rank 0 only under torchrun)."""
    from augsense.io.lock import preflight as check_folder

    if os.environ.get("RANK", "0").strip() in ("", "0"):
        check_folder(Path(args.out), resume=args.resume, overwrite=args.overwrite)


def cmd_run(args: argparse.Namespace) -> int:
    preflight(args)
    from augsense.analyses.sensitivity import run_sensitivity

    config = load_config(args.config, args)
    out = Path(args.out)
    if config.segment is not None:
        from augsense.commands.segments import print_segments

        from augsense.analyses.segments import run_segments
        from augsense.config import DEMO_LAYERS

        # the default layers belong to the whole network: a segment defaults to its last module
        layers = None if config.layers == DEMO_LAYERS else config.layers
        result = run_segments(config, config.segment, channels=config.segment_channel, out_dir=out, layers=layers,
                              progress=not args.quiet, overwrite=args.overwrite)
        print_segments(result, out)
        return 0
    run = run_sensitivity(config, out_dir=out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    _finish(run, out, config.report)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    preflight(args)
    from augsense.analyses.sensitivity import run_sensitivity
    from augsense.config import DEMO_LAYERS

    base = {"model": "efficientnet-lite0", "images": "bundled", "layers": list(DEMO_LAYERS),
            "factors": ["paper-set1", "paper-set2"], "estimator": "sobol", "n": 256, "batch_size": 32}
    config = load_config(None, args, base)
    out = Path(args.out)
    print(f"augsense demo: {config.model} on the bundled photos, {len(config.layers)} layers, "
          f"factors {' + '.join(config.factors)}; writing to {out}", file=sys.stderr)
    run = run_sensitivity(config, out_dir=out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    _finish(run, out, config.report)
    return 0


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


def cmd_report(args: argparse.Namespace) -> int:
    from augsense.report.html import write_report

    path = write_report(Path(args.run_dir))
    print(f"report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="augsense", description="Which input augmentations move which units "
                                     "of an image classifier (Sobol indices, Shapley effects, guided masking).")
    from augsense import __version__

    parser.add_argument("--version", action="version", version=f"augsense {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, default_out, help_text, handler in (
            ("run", "runs/run", "run a sensitivity analysis from a TOML config and/or flags", cmd_run),
            ("demo", "runs/demo", "the embedded default: EfficientNet-Lite0 on the bundled photos, offline", cmd_demo)):
        command = sub.add_parser(name, help=help_text)
        if name == "run":
            command.add_argument("config", nargs="?", help="TOML config file (every key is also a flag)")
        command.add_argument("--out", default=default_out, help=f"run folder (default: {default_out})")
        command.add_argument("--resume", action="store_true", help="continue a killed run in --out from its checkpoint")
        command.add_argument("--overwrite", action="store_true", help="replace the finished run or the checkpoint in "
                             "--out (refused without it)")
        command.add_argument("--quiet", action="store_true", help="no progress bar")
        add_config_flags(command)
        command.set_defaults(func=handler)

    layers = sub.add_parser("layers", help="list a model's layers with their output shapes")
    layers.add_argument("model", nargs="?", default="efficientnet-lite0")
    layers.add_argument("--weights", default=None, help="local state-dict file, torchvision weights name, or 'random'")
    layers.add_argument("--depth", type=int, default=None, help="hide modules nested deeper than this")
    layers.set_defaults(func=cmd_layers)

    factors = sub.add_parser("factors", help="list the built-in augmentation factors and presets")
    factors.set_defaults(func=cmd_factors)

    report = sub.add_parser("report", help="write RUN_DIR/report.html from a run folder")
    report.add_argument("run_dir")
    report.set_defaults(func=cmd_report)

    import importlib
    import pkgutil

    import augsense.commands

    for module in pkgutil.iter_modules(augsense.commands.__path__):
        importlib.import_module(f"augsense.commands.{module.name}").register(sub)
    return parser


def resume_command(argv: Sequence[str]) -> str:
    """The command line that continues an interrupted run: the same arguments, --resume, no --overwrite."""
    import shlex

    words = [word for word in argv if word != "--overwrite"]
    if "--resume" not in words:
        words.append("--resume")
    return "augsense " + shlex.join(words)


def main(argv: Sequence[str] | None = None) -> int:
    from augsense.interrupts import RunInterrupted

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except AugsenseError as error:
        print(f"augsense: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunInterrupted as stop:
        if stop.rank == 0:
            out = getattr(args, "out", None)
            given = any(word == "--out" or word.startswith("--out=") for word in argv)
            if stop.checkpoint or (out is not None and (Path(out) / "checkpoint.pt").exists()):
                hint = (f"; resume with: {resume_command(argv)}" + ("" if given else f" --out {out}")
                        + (" (under torchrun: the same torchrun line with --resume)"
                           if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else ""))
            else:
                hint = "; no checkpoint yet: start it again" if out is not None else ""
            print(f"augsense: {stop.describe()}{hint}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        print("augsense: interrupted" + (f"; if {out}/checkpoint.pt exists, resume with: {resume_command(argv)}"
                                         if out else ""), file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
