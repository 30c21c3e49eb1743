"""Time SobolAccumulator.update alone on the reference workload's design (issue #17).

    .venv/bin/python bench/bench_accumulator.py [--reps 5] [--threads 1,2] [--profile] [--chunk-elements 18,19,20,21]

Design as ``bench_reference_workload.py`` builds it: sobol2 on paper-set1 with the order factor and the
image as a factor (dims (4, 1, 2, 1, 1, 1, 1), d = 7 players, G = 16), N = 64, batch 512 (32 blocks of 2
rows), outputs AlexNet ``features.5`` per element (192 x 13 x 13) plus the softmax output (1000), in two
groups (the layers). Outputs are random float32 (r, G, m), made before timing. Prints, per thread count,
the median over ``--reps`` of the seconds to add all blocks, and the load average. ``--profile`` prints
the hottest ops of one pass (torch.profiler, CPU). ``--chunk-elements`` times ``SobolAccumulator.chunk_elements``
= 2**k for each k, the sizes interleaved rep by rep (forward, then backward) so that load drifts hit all alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from augsense.design import make_design
from augsense.estimators import make_accumulator

DIMS = (4, 1, 2, 1, 1, 1, 1)
LAYERS = {"features.5": 192 * 13 * 13, "output": 1000}


def setup(n: int, block_size: int, seed: int = 0):
    design = make_design("sobol2", DIMS, n, block_size=block_size)
    m = sum(LAYERS.values())
    groups = torch.cat([torch.full((k,), g, dtype=torch.long) for g, k in enumerate(LAYERS.values())])
    gen = torch.Generator().manual_seed(seed)
    blocks = list(design.blocks())
    outputs = [torch.rand(b.points.shape[0], design.group_size, m, generator=gen) * 3 + 1 for b in blocks]
    return design, m, groups, blocks, outputs


def one_pass(design, m, groups, blocks, outputs, **options) -> tuple[float, object]:
    acc = make_accumulator(design, m, groups=groups, **options)
    start = time.perf_counter()
    for block, out in zip(blocks, outputs):
        acc.update(block, out)
    return time.perf_counter() - start, acc


def sweep_chunks(design, m, groups, blocks, outputs, sizes: list[int], reps: int) -> None:
    """Median seconds per pass for each chunk size (at the last thread count), interleaved rep by rep."""
    from augsense.estimators.sobol import SobolAccumulator

    default, times = SobolAccumulator.chunk_elements, {s: [] for s in sizes}
    try:
        for rep in range(reps):
            for size in sizes if rep % 2 == 0 else sizes[::-1]:
                SobolAccumulator.chunk_elements = size
                times[size].append(one_pass(design, m, groups, blocks, outputs)[0])
        probe = make_accumulator(design, m, groups=groups)
        per_output = probe._per_output(blocks[0].points.shape[0])
        for size in sizes:
            SobolAccumulator.chunk_elements = size
            n_chunks = len(probe._chunks(per_output))
            print(f"chunk_elements 2**{size.bit_length() - 1}: {n_chunks} chunks, median "
                  f"{statistics.median(times[size]):.3f} s (min {min(times[size]):.3f}); load {os.getloadavg()[0]:.2f}")
    finally:
        SobolAccumulator.chunk_elements = default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--chunk-elements", default="", help="comma-separated powers of two to compare, e.g. 18,19,20")
    args = parser.parse_args()
    group = 2 * len(DIMS) + 2
    design, m, groups, blocks, outputs = setup(args.n, max(1, args.batch_size // group))
    print(f"design sobol2 dims {DIMS} n {args.n}: {len(blocks)} blocks of {blocks[0].points.shape[0]} rows, "
          f"G {design.group_size}, m {m}")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        one_pass(design, m, groups, blocks[:2], outputs[:2])   # warm-up
        times = [one_pass(design, m, groups, blocks, outputs)[0] for _ in range(args.reps)]
        print(f"threads {threads}: update of all blocks median {statistics.median(times):.3f} s "
              f"(min {min(times):.3f}, max {max(times):.3f}, {args.reps} reps; "
              f"{statistics.median(times) / len(blocks) * 1e3:.1f} ms/block); load {os.getloadavg()[0]:.2f}")
    if args.chunk_elements:
        sweep_chunks(design, m, groups, blocks, outputs, [1 << int(k) for k in args.chunk_elements.split(",")],
                     args.reps)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            one_pass(design, m, groups, blocks, outputs)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
