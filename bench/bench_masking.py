"""Masking throughput: K configurations per forward pass versus one at a time, the CPU layout and
allocator, and the demo grid's cost.

    .venv/bin/python bench/bench_masking.py                      # batching ratio on EfficientNet-Lite0
    .venv/bin/python bench/bench_masking.py --mask-layers _blocks.15   # shared prefix up to a deep layer
    .venv/bin/python bench/bench_masking.py --layouts            # NCHW vs channels-last vs + heap allocations
    .venv/bin/python bench/bench_masking.py --run runs/demo --factors grayscale,hue,erasing,hflip   # demo grid

Prints medians of repeated timings and their ratio measured in this run (the machine may be shared:
compare ratios, not absolute times).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from augsense.io.models import load_model
from augsense.probe.masks import MaskedForward, channels_last_copy, heap_allocations


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def batching(model: str, layers: list[str], configs: int, images: int, repeats: int) -> None:
    from augsense.probe.hooks import list_layers, unit_shape

    bundle = load_model(model, weights="random" if model != "efficientnet-lite0" else None)
    module = bundle.module.eval()
    x = bundle.normalise(torch.rand(images, 3, bundle.input_size, bundle.input_size))
    shapes = {info.name: unit_shape(info.shape, "mean") for info in list_layers(module, bundle.input_size)}
    generator = torch.Generator().manual_seed(0)
    bank = {name: (torch.rand((configs,) + shapes[name], generator=generator) > 0.5).float() for name in layers}
    fast = channels_last_copy(module)  # as evaluate_masks runs it on the CPU (with heap allocations, below)
    if fast is not None:
        module, x = fast, x.contiguous(memory_format=torch.channels_last)

    shared_forward = MaskedForward(module, bank)  # one instance, as in evaluate_masks: its fallback is remembered
    repeated_forward = MaskedForward(module, bank, expand_inside=False)  # every configuration from the input

    def together() -> bool:
        with torch.inference_mode(), shared_forward as masked:
            masked(x)
            return masked.expand_inside

    def repeated() -> None:
        with torch.inference_mode(), repeated_forward as masked:
            masked(x)

    def one_by_one() -> None:
        for k in range(configs):
            with torch.inference_mode(), MaskedForward(module, {n: m[k:k + 1] for n, m in bank.items()}) as masked:
                masked(x)

    times: dict[str, list[float]] = {"batched": [], "input repeated": [], "one at a time": []}
    with heap_allocations():
        shared = together()
        for _ in range(repeats):  # interleaved, so load changes hit every variant alike
            for name, fn in (("batched", together), ("input repeated", repeated), ("one at a time", one_by_one)):
                times[name].append(median_time(fn, 1))
    t_batched, t_repeated, t_loop = (statistics.median(t) for t in times.values())
    print(f"{model}: {configs} configurations × {images} images, masks in {', '.join(layers)} "
          f"({'prefix shared' if shared else 'input repeated: the model reshapes with its input batch size'}): "
          f"batched {t_batched:.2f} s, input repeated {t_repeated:.2f} s, one at a time {t_loop:.2f} s "
          f"(medians of {repeats}); shared prefix ×{t_repeated / t_batched:.2f}, batching ×{t_loop / t_batched:.2f}; "
          f"{configs * images / t_batched:.1f} masked images/s")


def layouts(model: str, layers: list[str], configs: int, images: int, repeats: int) -> None:
    """The same masked forward with NCHW weights, a channels-last copy, and channels-last + heap allocations."""
    from augsense.probe.hooks import list_layers, unit_shape

    bundle = load_model(model, weights="random" if model != "efficientnet-lite0" else None)
    module = bundle.module.eval()
    fast = channels_last_copy(module)
    if fast is None:
        print(f"{model} has no 2-D convolution: layouts do not apply")
        return
    x = bundle.normalise(torch.rand(images, 3, bundle.input_size, bundle.input_size))
    shapes = {info.name: unit_shape(info.shape, "mean") for info in list_layers(module, bundle.input_size)}
    generator = torch.Generator().manual_seed(0)
    bank = {name: (torch.rand((configs,) + shapes[name], generator=generator) > 0.5).float() for name in layers}

    def forward(net: torch.nn.Module, inputs: torch.Tensor, heap: bool) -> None:
        with torch.inference_mode(), heap_allocations() if heap else contextlib.nullcontext(), \
                MaskedForward(net, bank) as masked:
            masked(inputs)

    nhwc = x.contiguous(memory_format=torch.channels_last)
    variants = {"nchw": lambda: forward(module, x, False), "channels_last": lambda: forward(fast, nhwc, False),
                "channels_last+heap": lambda: forward(fast, nhwc, True)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved, so load changes hit every variant alike
        for name, fn in variants.items():
            times[name].append(median_time(fn, 1))
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["nchw"]
    print(f"{model}: {configs} configurations × {images} images, masks in {', '.join(layers)}; medians of {repeats}: "
          + ", ".join(f"{name} {t:.2f} s ({configs * images / t:.1f} img/s, ×{base / t:.2f})"
                      for name, t in medians.items()))


def grid(run: str, factors: list[str] | None, augmentations: str, layers: list[str] | None) -> None:
    from augsense.analyses.masking import MaskingOptions, run_masking

    started = time.perf_counter()
    result = run_masking(run, MaskingOptions(factors=factors, augmentations=augmentations, layers=layers), progress=True)
    elapsed = time.perf_counter() - started
    forwards = result.timings["forwards"]
    print(f"default grid on {run} (factors {factors or 'all'}, masked layers {', '.join(result.layers)}, "
          f"augmentations {augmentations}): "
          f"{len(result.table)} rows, {forwards:.0f} masked image forwards in {elapsed:.0f} s "
          f"({forwards / elapsed:.1f}/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--mask-layers", default="_bn0,_blocks.2,_blocks.7,_blocks.15",
                        help="layers masked in the batching benchmark (default: the demo's, output layer aside)")
    parser.add_argument("--configs", type=int, default=8)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layouts", action="store_true", help="also compare NCHW, channels-last and heap allocations")
    parser.add_argument("--run", default=None, help="a demo run folder: time the default grid on it")
    parser.add_argument("--factors", default=None, help="comma-separated subset of factors for --run")
    parser.add_argument("--augmentations", default="own")
    parser.add_argument("--layers", default=None, help="comma-separated layers to mask for --run")
    args = parser.parse_args()
    batching(args.model, args.mask_layers.split(","), args.configs, args.images, args.repeats)
    if args.layouts:
        layouts(args.model, args.mask_layers.split(","), args.configs, args.images, args.repeats)
    if args.run:
        grid(args.run, args.factors.split(",") if args.factors else None, args.augmentations,
             args.layers.split(",") if args.layers else None)


if __name__ == "__main__":
    main()
