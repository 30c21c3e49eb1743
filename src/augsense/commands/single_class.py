"""``augsense single-class RUN_DIR``: which classes does damaging / amplifying a factor's units favour?"""

from __future__ import annotations

import argparse
from typing import Any

from augsense.commands.mask import add_common, names, parse_floats, run_folder_lock


def cmd_single_class(args: argparse.Namespace) -> int:
    from augsense.commands._options import check_seed

    check_seed(args.seed)  # before the run folder is locked or anything is loaded
    with run_folder_lock(args.run_dir):  # the analyses and their writes: one writer at a time
        return _single_class(args)


def _single_class(args: argparse.Namespace) -> int:
    from augsense.analyses.single_class import SingleClassOptions, run_single_class

    augmentations: Any = args.augmentations
    if augmentations not in ("own", "all", "clean"):
        augmentations = names(augmentations) or "clean"
    options = SingleClassOptions(factors=names(args.factors), quantity=args.quantity, k=args.k,
                                 layers=names(args.layers), candidates_layer=args.candidates_layer,
                                 quantiles=parse_floats(args.quantiles, "--quantiles"),
                                 alphas=parse_floats(args.alphas, "--alphas"), augmentations=augmentations,
                                 n_draws=args.draws, seed=args.seed, batch_size=args.batch_size,
                                 max_batch=args.max_batch, device=args.device, limit_images=args.limit_images)
    table = run_single_class(args.run_dir, options, images=args.images, progress=not args.quiet)
    if table.empty:
        print("no configurations evaluated")
        return 0
    print(f"null fence (Q3 + 1.5·IQR of the mean Jaccard of random {args.k}-subsets): "
          f"{table['threshold'].iloc[0]:.4g} over {table['n_images'].iloc[0]} images")
    confirmed = table[table["confirmed"]]
    if confirmed.empty:
        best = table.loc[table["mean_jaccard"].idxmax()] if table["mean_jaccard"].notna().any() else None
        print(f"none of the {len(table)} (factor, mask) configurations biases the network towards its candidates "
              "(no mean Jaccard index above the null fence)"
              + (f"; the highest: {best['factor']} q={best['q']:.1f} α={best['alpha']:g}, Jaccard "
                 f"{best['mean_jaccard']:.3f}" if best is not None else ""))
    else:
        print(f"{len(confirmed)} of {len(table)} (factor, mask) configurations bias the network towards their "
              "candidates:")
    for _, row in confirmed.iterrows():
        print(f"  {row['factor']:<20} q={row['q']:.1f} α={row['alpha']:g}  Jaccard {row['mean_jaccard']:.3f} "
              f"(unmasked {row['unmasked_jaccard']:.3f})  → {', '.join(row['candidate_names'])}")
    written = f"{args.run_dir}/single_class.parquet"
    if args.decay is not None:
        from augsense.analyses.single_class import ClassDecayOptions, class_decay

        decay = class_decay(args.run_dir, ClassDecayOptions(
            factors=names(args.factors), quantity=args.quantity, k=args.k, layers=names(args.layers),
            candidates_layer=args.candidates_layer, quantiles=parse_floats(args.decay, "--decay"),
            n_random=args.decay_draws, classes=args.decay_classes, seed=args.seed, batch_size=args.batch_size,
            max_batch=args.max_batch, device=args.device, limit_images=args.limit_images),
            images=args.images, progress=not args.quiet)
        guided = decay[decay["kind"] == "guided"]
        print(f"class decay: {decay['class'].nunique()} classes × {guided['q'].nunique()} masked fractions, "
              f"guided vs {args.decay_draws} random mask(s) each")
        written += f", {args.run_dir}/class_decay.parquet"
    print(f"results: {written}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("single-class", help="candidate classes per factor and the biases a targeted "
                                   "mask confirms (mean Jaccard above the null fence)")
    add_common(parser)
    parser.add_argument("--k", type=int, default=5, help="candidate classes per factor and top-k predictions")
    parser.add_argument("--candidates-layer", default=None,
                        help="layer whose map ranks the classes (default: output, else the run's last 1-D layer)")
    parser.add_argument("--quantiles", default="0.9", help="mask units ≥ these quantiles")
    parser.add_argument("--alphas", default="0,1.5", help="multipliers: 0 damages, 1.5 amplifies")
    parser.add_argument("--augmentations", default="clean", help="clean, own, all or comma-separated factors")
    parser.add_argument("--draws", type=int, default=1, help="parameter draws per augmentation")
    parser.add_argument("--decay", default=None, metavar="Q,Q,…",
                        help="also write class_decay.parquet: each class's share of top-1 predictions as the units ≥ "
                        "these quantiles are zeroed, guided vs random masks (e.g. 0.5,0.7,0.8,0.9,0.95)")
    parser.add_argument("--decay-classes", default="candidates", choices=("candidates", "predicted"),
                        help="classes followed by --decay: each factor's candidates, or the k most predicted")
    parser.add_argument("--decay-draws", type=int, default=2, help="random masks per quantile for --decay")
    parser.set_defaults(func=cmd_single_class)
