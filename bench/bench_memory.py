"""Peak memory of a run does not grow with N: peak RSS at N and 16·N, same layers, fresh processes.

Each size runs in its own subprocess (so ``ru_maxrss`` is that run's peak) on the planted network
of the tests, by default with every unit of its ``colour`` layer (4×32×32 = 4096 units, reduction
``none``), whose accumulator state is the same at any N. Prints peak RSS per N, the baseline of
the process before the run (imports, model, images), the ratio of the two peaks (a streaming
run keeps it within 1 ± 0.10) and the growth during each run, which holds the accumulators and
one batch and so must not scale with N either.

    .venv/bin/python bench/bench_memory.py [--n 256] [--factor 16] [--layer colour] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def child(n: int, layer: str, reduction: str) -> None:
    sys.path.insert(0, str(TESTS))
    import torch

    from augsense.analyses.sensitivity import run_sensitivity
    from augsense.config import SensitivityConfig
    from planted import PLANTED_CONFIG, planted_bundle, planted_images

    torch.set_num_threads(1)
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(n=n, layers=[layer], reduction=reduction, checkpoint_every=0, batch_size=64)
    bundle, images = planted_bundle(), planted_images(64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    run = run_sensitivity(SensitivityConfig(**values), model=bundle, images=images, progress=False)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "evaluations": run.design.n_evaluations, "units": int(sum(
        s.stop - s.start for s in run.slices.values())), "baseline_kib": before, "peak_kib": peak, "seconds": seconds}))


def measure(n: int, layer: str, reduction: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", str(n), "--layer", layer, "--reduction", reduction],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--factor", type=int, default=16)
    parser.add_argument("--layer", default="colour")
    parser.add_argument("--reduction", default="none")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.layer, args.reduction)
        return
    sizes = (args.n, args.n * args.factor)
    peaks: dict[int, list[float]] = {n: [] for n in sizes}
    grown: dict[int, list[float]] = {n: [] for n in sizes}
    for repeat in range(args.repeats):
        for n in sizes:  # interleaved, so a change in machine load hits both sizes alike
            row = measure(n, args.layer, args.reduction)
            peaks[n].append(row["peak_kib"] / 1024)
            grown[n].append((row["peak_kib"] - row["baseline_kib"]) / 1024)
            print(f"repeat {repeat}: N={n:>6} ({row['evaluations']:>7} forward images, {row['units']} units): "
                  f"peak RSS {row['peak_kib'] / 1024:7.1f} MiB (before the run {row['baseline_kib'] / 1024:7.1f} MiB), "
                  f"{row['seconds']:.1f} s")
    small, large = (statistics.median(peaks[n]) for n in sizes)
    print(f"median peak RSS: N={sizes[0]}: {small:.1f} MiB, N={sizes[1]}: {large:.1f} MiB, "
          f"ratio {large / small:.3f} ({'within' if abs(large / small - 1) <= 0.10 else 'OUTSIDE'} 10 %)")
    small, large = (statistics.median(grown[n]) for n in sizes)
    print(f"median growth during the run (peak - before): {small:.1f} MiB vs {large:.1f} MiB "
          f"(difference {large - small:+.1f} MiB for {args.factor}x the samples)")


if __name__ == "__main__":
    main()
