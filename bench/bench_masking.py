"""Masking throughput: K configurations per forward pass versus one at a time, and the demo grid's cost.

    .venv/bin/python bench/bench_masking.py                      # batching ratio on EfficientNet-Lite0
    .venv/bin/python bench/bench_masking.py --run runs/demo      # + the default grid on a demo run folder

Prints medians of repeated timings and their ratio measured in this run (the machine may be shared:
compare ratios, not absolute times).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from augsense.io.models import load_model
from augsense.probe.masks import MaskedForward


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def batching(configs: int, images: int, repeats: int) -> None:
    bundle = load_model("efficientnet-lite0")
    module = bundle.module.eval()
    x = bundle.normalise(torch.rand(images, 3, bundle.input_size, bundle.input_size))
    generator = torch.Generator().manual_seed(0)
    bank = {"_blocks.7": (torch.rand(configs, 80, generator=generator) > 0.5).float(),
            "_blocks.15": (torch.rand(configs, 320, generator=generator) > 0.5).float()}

    def together() -> None:
        with torch.inference_mode(), MaskedForward(module, bank) as masked:
            masked(x)

    def one_by_one() -> None:
        for k in range(configs):
            with torch.inference_mode(), MaskedForward(module, {n: m[k:k + 1] for n, m in bank.items()}) as masked:
                masked(x)

    together()
    t_batched, t_loop = median_time(together, repeats), median_time(one_by_one, repeats)
    print(f"{configs} configurations × {images} images, masks in _blocks.7 and _blocks.15: batched "
          f"{t_batched:.2f} s, one at a time {t_loop:.2f} s (medians of {repeats}); ratio {t_loop / t_batched:.2f}; "
          f"{configs * images / t_batched:.1f} masked images/s")


def grid(run: str, factors: list[str] | None, augmentations: str, layers: list[str] | None) -> None:
    from augsense.analyses.masking import MaskingOptions, run_masking

    started = time.perf_counter()
    result = run_masking(run, MaskingOptions(factors=factors, augmentations=augmentations, layers=layers), progress=True)
    elapsed = time.perf_counter() - started
    forwards = result.timings["forwards"]
    print(f"default grid on {run} (factors {factors or 'all'}, layers {layers or 'all'}, augmentations {augmentations}): "
          f"{len(result.table)} rows, {forwards:.0f} masked image forwards in {elapsed:.0f} s "
          f"({forwards / elapsed:.1f}/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", type=int, default=8)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", default=None, help="a demo run folder: time the default grid on it")
    parser.add_argument("--factors", default=None, help="comma-separated subset of factors for --run")
    parser.add_argument("--augmentations", default="own")
    parser.add_argument("--layers", default=None, help="comma-separated layers to mask for --run")
    args = parser.parse_args()
    batching(args.configs, args.images, args.repeats)
    if args.run:
        grid(args.run, args.factors.split(",") if args.factors else None, args.augmentations,
             args.layers.split(",") if args.layers else None)


if __name__ == "__main__":
    main()
