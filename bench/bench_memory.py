"""Peak memory of a run does not grow with N: peak RSS of fresh processes at a small and a large N.

Two measurements, each size in its own subprocess (so ``ru_maxrss`` is that run's peak), sizes
interleaved over repeats so a change in machine load hits both alike, on the planted network of
the tests with every unit of its ``colour`` layer (4×32×32 = 4096 units, reduction ``none``):

1. bookkeeping (N = 2**10 vs 2**26, the largest N accepted): the run's own code path at both
   sizes with the same forward work. ``run_sensitivity`` with a run folder, a checkpoint after
   every round, stopped after ``--blocks`` blocks, then resumed from that checkpoint and stopped
   again: design, schedule, finished-block set, progress bar, accumulator, collective checkpoint
   write, checkpoint read and consistency check all see N = 2**26 (millions of blocks) while only
   2 × ``--blocks`` blocks go through the network. Before blocks were kept as ranges this grew by
   about 120 bytes a block (0.7 GB at N = 2**26 with 12 rows a block, 8 GB with 1 row a block).
   The issue's acceptance: peak RSS at 2**26 within 10 % of 2**10.
2. streaming (N = 256 vs 16·256): complete runs; the accumulators and one batch are all a run
   holds, so the peak must not grow with the number of samples either.

Prints peak RSS per N, the process's RSS before the run (imports, model, images), the ratio of
the two peaks and the growth during each run (peak − before).

    .venv/bin/python bench/bench_memory.py [--mode both|bookkeeping|streaming] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"


def child(n: int, layer: str, reduction: str, blocks: int | None) -> None:
    sys.path.insert(0, str(TESTS))
    import torch

    from augsense.analyses.sensitivity import run_sensitivity
    from augsense.config import SensitivityConfig
    from planted import PLANTED_CONFIG, planted_bundle, planted_images

    torch.set_num_threads(1)
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(n=n, layers=[layer], reduction=reduction, batch_size=64,
                  checkpoint_every=0 if blocks is None else 1e-9)
    config = SensitivityConfig(**values)
    bundle, images = planted_bundle(), planted_images(64)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    if blocks is None:  # streaming: one complete run, nothing written
        run = run_sensitivity(config, model=bundle, images=images, progress=False)
        evaluated = run.design.n_evaluations
    else:  # bookkeeping: the run's path at this N, a few blocks forward, checkpointed, resumed
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "run"
            run = run_sensitivity(config, model=bundle, images=images, out_dir=out, progress=True,
                                  stop_after_blocks=blocks)
            run = run_sensitivity(config, model=bundle, images=images, out_dir=out, resume=True, progress=True,
                                  stop_after_blocks=blocks)
            assert not run.complete
        evaluated = 2 * blocks * run.design.block_size * run.design.group_size
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "evaluations": evaluated, "blocks": run.design.n_blocks, "units": int(sum(
        s.stop - s.start for s in run.slices.values())), "baseline_kib": before, "peak_kib": peak, "seconds": seconds}))


def measure(n: int, layer: str, reduction: str, blocks: int | None) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", str(n), "--layer", layer, "--reduction", reduction]
    if blocks is not None:
        command += ["--child-blocks", str(blocks)]
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"the child for N={n} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(title: str, sizes: tuple[int, int], args: argparse.Namespace, blocks: int | None) -> bool:
    print(f"--- {title}")
    peaks: dict[int, list[float]] = {n: [] for n in sizes}
    grown: dict[int, list[float]] = {n: [] for n in sizes}
    for repeat in range(args.repeats):
        for n in sizes:  # interleaved, so a change in machine load hits both sizes alike
            row = measure(n, args.layer, args.reduction, blocks)
            peaks[n].append(row["peak_kib"] / 1024)
            grown[n].append((row["peak_kib"] - row["baseline_kib"]) / 1024)
            print(f"repeat {repeat}: N=2**{n.bit_length() - 1:<2} ({row['blocks']:>8} blocks, {row['evaluations']:>6} "
                  f"forward images, {row['units']} units): peak RSS {row['peak_kib'] / 1024:7.1f} MiB (before the run "
                  f"{row['baseline_kib'] / 1024:7.1f} MiB), {row['seconds']:.1f} s")
    small, large = (statistics.median(peaks[n]) for n in sizes)
    within = abs(large / small - 1) <= 0.10
    print(f"median peak RSS: N=2**{sizes[0].bit_length() - 1}: {small:.1f} MiB, N=2**{sizes[1].bit_length() - 1}: "
          f"{large:.1f} MiB, ratio {large / small:.3f} ({'within' if within else 'OUTSIDE'} 10 %)")
    small, large = (statistics.median(grown[n]) for n in sizes)
    print(f"median growth during the run (peak - before): {small:.1f} MiB vs {large:.1f} MiB "
          f"(difference {large - small:+.1f} MiB for {sizes[1] // sizes[0]}x the base rows)")
    return within


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("both", "bookkeeping", "streaming"), default="both")
    parser.add_argument("--n", type=int, default=256, help="streaming: the smaller N")
    parser.add_argument("--factor", type=int, default=16, help="streaming: the larger N is this times --n")
    parser.add_argument("--blocks", type=int, default=4, help="bookkeeping: blocks forward before each stop")
    parser.add_argument("--layer", default="colour")
    parser.add_argument("--reduction", default="none")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-blocks", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.layer, args.reduction, args.child_blocks)
        return
    from augsense.config import MAX_N

    ok = True
    if args.mode in ("both", "bookkeeping"):
        ok &= compare(f"bookkeeping: the run's path at N = 2**10 and 2**26 (= MAX_N), {args.blocks} blocks forward, "
                      "checkpointed every round, then resumed", (2 ** 10, MAX_N), args, args.blocks)
    if args.mode in ("both", "streaming"):
        ok &= compare(f"streaming: complete runs at N = {args.n} and {args.n * args.factor}",
                      (args.n, args.n * args.factor), args, None)
    print("all within 10 %" if ok else "SOME OUTSIDE 10 %")


if __name__ == "__main__":
    main()
