"""``augsense mask RUN_DIR``: guided masking with random and least-sensitive baselines."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from augsense.errors import AugsenseError


def parse_floats(text: str, flag: str) -> list[float]:
    """``"0.5,0.9"`` → [0.5, 0.9]; an AugsenseError naming the flag otherwise."""
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise AugsenseError(f"{flag} expects comma-separated numbers, e.g. 0.5,0.9; got {text!r}") from None


@contextmanager
def run_folder_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the block (the analysis and its writes): a second writer, or an
    ``augsense run --overwrite`` into the folder, is refused with one line naming the holder."""
    from augsense.io.lock import holding

    if not Path(run_dir).is_dir():
        from augsense.io.results import load_run

        load_run(run_dir)  # says what is wrong with the folder
    with holding(run_dir):
        yield


def names(text: str | None) -> list[str] | None:
    return [item.strip() for item in text.split(",") if item.strip()] if text else None


def add_common(parser: argparse.ArgumentParser) -> None:
    """Flags shared by ``mask`` and ``single-class``."""
    parser.add_argument("run_dir", help="a run folder written by `augsense run` / `augsense demo`")
    parser.add_argument("--images", default=None, help="images to evaluate on (default: the run's images); "
                        "labels come from class sub-folders")
    parser.add_argument("--factors", default=None, help="comma-separated factors whose maps give masks "
                        "(default: all of the run's factors)")
    parser.add_argument("--quantity", default="total_order", help="first_order, total_order or shapley")
    parser.add_argument("--mask-layers", "--layers", dest="layers", default=None,
                        help="comma-separated layers to mask (default: the run's layers except the classifier "
                        "output layer, e.g. _fc: name it here to mask logits)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch")
    parser.add_argument("--max-batch", type=int, default=64,  # MaskingOptions.max_batch (a test keeps them equal)
                        help="images × mask configurations in one forward pass (default 64: memory and, on the CPU, "
                        "speed; raise it when only deep layers are masked: the layers before the first masked one "
                        "run once per pass)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit-images", type=int, default=None)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def cmd_mask(args: argparse.Namespace) -> int:
    from augsense.analyses.masking import MaskingOptions, run_masking
    from augsense.commands._options import check_seed

    check_seed(args.seed)  # before the run folder is locked or anything is loaded
    augmentations: Any = args.augmentations
    if augmentations not in ("own", "all", "clean"):
        augmentations = names(augmentations) or "own"
    options = MaskingOptions(factors=names(args.factors), quantity=args.quantity, layers=names(args.layers),
                             quantiles=parse_floats(args.quantiles, "--quantiles"),
                             alphas=parse_floats(args.alphas, "--alphas"), soft=args.soft, n_random=args.random,
                             least=args.least, augmentations=augmentations, n_draws=args.draws, seed=args.seed,
                             batch_size=args.batch_size, max_batch=args.max_batch, device=args.device,
                             limit_images=args.limit_images)
    with run_folder_lock(args.run_dir):
        result = run_masking(args.run_dir, options, images=args.images, progress=not args.quiet)
    print(f"masked layers: {', '.join(result.layers)}")
    table = result.table
    reference = table[table["kind"] == "none"]
    print("unmasked top-1 per input: " + ", ".join(f"{a} {t:.3f}" for a, t in zip(reference["augmentation"],
                                                                                   reference["top1"])))
    gap = result.gap[(result.gap["alpha"] == 0.0)]
    if not gap.empty:
        print("damage (α = 0), guided − random top-1 at the largest q, per factor on its own augmentation:")
        for factor, rows in gap.groupby("factor", sort=False):
            own = rows[rows["augmentation"] == factor]
            row = (own if not own.empty else rows).sort_values("q").iloc[-1]
            print(f"  {factor:<20} q={row['q']:.1f} on {row['augmentation']:<18} guided {row['guided']:.3f} "
                  f"random {row['random_mean']:.3f}  gap {row['gap']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]")
    print(f"results: {args.run_dir}/masking.parquet, masking_classes.parquet, masking_spearman.parquet, "
          f"masking_gap.parquet ({result.timings['total_s']:.0f} s)", file=sys.stderr)
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("mask", help="guided masking of the units most sensitive to each factor, "
                                   "with random and least-sensitive baselines")
    add_common(parser)
    parser.add_argument("--quantiles", default="0.5,0.6,0.7,0.8,0.9", help="mask units ≥ these quantiles")
    parser.add_argument("--alphas", default="0,0.5,1.5", help="multipliers: 0 damages, 0.5 attenuates, 1.5 amplifies")
    parser.add_argument("--soft", action=argparse.BooleanOptionalAction, default=True,
                        help="also the soft masks out·M and out·(1 − M)")
    parser.add_argument("--random", type=int, default=2, help="random-baseline draws per quantile mask")
    parser.add_argument("--least", action=argparse.BooleanOptionalAction, default=True,
                        help="also the least-sensitive baseline")
    parser.add_argument("--augmentations", default="own", help="own (clean + each factor's own augmentation), "
                        "all (every augmentation for every factor's masks), clean, or comma-separated factors")
    parser.add_argument("--draws", type=int, default=1, help="parameter draws per augmentation")
    parser.set_defaults(func=cmd_mask)
