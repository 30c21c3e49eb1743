"""The reference code's own test workload as one whole `augsense run` process, against the bare forward floor.

    .venv/bin/python bench/bench_reference_workload.py [--n 64] [--batch-size 512] [--repeats 2] [--device cpu]

Workload (the paper's code, its test configuration): AlexNet (random weights: no download), ``features.5``
per element (reduction none, 192×13×13 units) and the softmax output, factors paper-set1 with the order
factor and the image as a factor (``--random-order --image-mode joint``), ``--preprocessing paper``,
second-order Sobol' (sobol2), N = 64 (N × (2d + 2) = 1024 evaluations for d = 7 players), batch 512.

The run is timed as a subprocess from its start to its exit: imports, model and image loading, the clean
top-1 pass, the loop and writing the results all count. The floor is the bare forward of the same model
on the same number of images at the same batch, in the faster of the NCHW and channels-last layouts,
measured in this process before and after the run (median), under the run's allocator setting.
Prints the ratio (wall time of the run / floor time), the run's own timings and the peak RSS of the
run process (``resource.getrusage(RUSAGE_CHILDREN)``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from augsense.allocator import heap_allocations
from augsense.io.images import load_images
from augsense.io.models import load_model

PLAYERS = 7  # five paper-set1 factors, order, image


def run_command(out: Path, args: argparse.Namespace) -> list[str]:
    augsense = str(Path(sys.executable).with_name("augsense"))
    return [augsense, "run", "--model", "alexnet", "--weights", "random", "--layers", "features.5,output",
            "--reduction", args.reduction, "--output", "softmax", "--factors", "paper-set1", "--random-order",
            "--image-mode", "joint", "--preprocessing", "paper", "--estimator", "sobol2", "--n", str(args.n),
            "--batch-size", str(args.batch_size), "--device", args.device, "--no-report", "--checkpoint-every", "0",
            "--quiet", "--overwrite", "--out", str(out)]


def forward_seconds(module: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one bare forward of the batch ``x`` (after a warm-up)."""
    times = []
    with torch.inference_mode():
        module(x)
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def floors(args: argparse.Namespace, evaluations: int) -> dict[str, float]:
    """Seconds of the bare forward over ``evaluations`` images, per layout (NCHW, channels-last)."""
    device = torch.device(args.device)
    bundle = load_model("alexnet", weights="random", seed=0)
    module = bundle.module.to(device).eval()
    images = load_images("bundled", bundle.input_size, bundle.resize_size)
    batches = -(-evaluations // args.batch_size)
    x = bundle.normalise(images.batch(torch.arange(args.batch_size) % len(images), device))
    out = {}
    with heap_allocations():
        out["nchw"] = forward_seconds(module, x, args.repeats) * batches
        module = module.to(memory_format=torch.channels_last)
        out["channels_last"] = forward_seconds(module, x.contiguous(memory_format=torch.channels_last),
                                               args.repeats) * batches
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per floor measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", help="run folder to keep (default: a temporary folder)")
    parser.add_argument("--reduction", default="none", help="none (the workload) or mean: isolates the loop from "
                        "the per-element accumulator and writing")
    args = parser.parse_args()
    evaluations = args.n * (2 * PLAYERS + 2)
    load = os.getloadavg()[0]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
          f"load average {load:.2f}; {evaluations} evaluations, batch {args.batch_size}")
    before = floors(args, evaluations)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "run"
        command = run_command(out, args)
        print("run:", " ".join(command[:1] + [c for c in command[1:]]).replace(str(Path(sys.executable).parent) + "/", ""))
        start = time.perf_counter()
        finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - start
        if finished.returncode != 0:
            sys.exit(f"augsense run failed ({finished.returncode}): {finished.stderr.strip()[-2000:]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6  # kB → GB (Linux)
        info = json.loads((out / "run.json").read_text())
        sizes = {p.name: p.stat().st_size / 1e6 for p in sorted(out.rglob("*")) if p.is_file()}
    after = floors(args, evaluations)
    nchw = statistics.median([before["nchw"], after["nchw"]])
    last = statistics.median([before["channels_last"], after["channels_last"]])
    floor = min(nchw, last)
    timings = info.get("timings", {})
    print(f"floor: NCHW {nchw:.2f} s ({evaluations / nchw:.0f} img/s), channels-last {last:.2f} s "
          f"({evaluations / last:.0f} img/s)  [before/after the run: {before['nchw']:.2f}/{after['nchw']:.2f}, "
          f"{before['channels_last']:.2f}/{after['channels_last']:.2f} s]")
    print(f"run: {wall:.2f} s wall ({evaluations / wall:.0f} img/s); loop {timings.get('loop_s', float('nan')):.2f} s "
          f"({timings.get('images_per_s', float('nan')):.0f} img/s; accumulator {timings.get('accumulate_s', float('nan')):.2f} s), setup {timings.get('setup_s', float('nan')):.2f} s, "
          f"in-process total {timings.get('total_s', float('nan')):.2f} s")
    print("files (MB): " + ", ".join(f"{name} {size:.1f}" for name, size in sizes.items()))
    print(f"ratio to the faster floor: {wall / floor:.2f}x  (to NCHW {wall / nchw:.2f}x, to channels-last "
          f"{wall / last:.2f}x); loop alone {timings.get('loop_s', float('nan')) / floor:.2f}x")
    print(f"peak RSS of the run process: {peak:.2f} GB  (load average now {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
