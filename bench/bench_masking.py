"""Masking throughput: K configurations per forward pass versus one at a time, and the demo grid's cost.

    .venv/bin/python bench/bench_masking.py                      # batching ratio on EfficientNet-Lite0
    .venv/bin/python bench/bench_masking.py --model resnet18 --mask-layers layer4,fc   # shared prefix
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


def batching(model: str, layers: list[str], configs: int, images: int, repeats: int) -> None:
    from augsense.probe.hooks import list_layers, unit_shape

    bundle = load_model(model)
    module = bundle.module.eval()
    x = bundle.normalise(torch.rand(images, 3, bundle.input_size, bundle.input_size))
    shapes = {info.name: unit_shape(info.shape, "mean") for info in list_layers(module, bundle.input_size)}
    generator = torch.Generator().manual_seed(0)
    bank = {name: (torch.rand((configs,) + shapes[name], generator=generator) > 0.5).float() for name in layers}

    shared_forward = MaskedForward(module, bank)  # one instance, as in evaluate_masks: its fallback is remembered

    def together() -> bool:
        with torch.inference_mode(), shared_forward as masked:
            masked(x)
            return masked.expand_inside

    def one_by_one() -> None:
        for k in range(configs):
            with torch.inference_mode(), MaskedForward(module, {n: m[k:k + 1] for n, m in bank.items()}) as masked:
                masked(x)

    shared = together()
    t_batched, t_loop = median_time(together, repeats), median_time(one_by_one, repeats)
    print(f"{model}: {configs} configurations × {images} images, masks in {', '.join(layers)} "
          f"({'prefix shared' if shared else 'input repeated: the model reshapes with its input batch size'}): "
          f"batched {t_batched:.2f} s, one at a time {t_loop:.2f} s (medians of {repeats}); "
          f"ratio {t_loop / t_batched:.2f}; {configs * images / t_batched:.1f} masked images/s")


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
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--mask-layers", default="_blocks.15,_fc", help="layers masked in the batching benchmark")
    parser.add_argument("--configs", type=int, default=8)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", default=None, help="a demo run folder: time the default grid on it")
    parser.add_argument("--factors", default=None, help="comma-separated subset of factors for --run")
    parser.add_argument("--augmentations", default="own")
    parser.add_argument("--layers", default=None, help="comma-separated layers to mask for --run")
    args = parser.parse_args()
    batching(args.model, args.mask_layers.split(","), args.configs, args.images, args.repeats)
    if args.run:
        grid(args.run, args.factors.split(",") if args.factors else None, args.augmentations,
             args.layers.split(",") if args.layers else None)


if __name__ == "__main__":
    main()
