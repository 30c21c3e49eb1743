"""Peak memory of the paper's eight-checkpoint AlexNet run per element (sobol2), at two N.

The run: AlexNet (random weights: no downloads), every unit of ``features.2, features.5,
features.7, features.9, avgpool, classifier.2, classifier.5`` and the softmax ``output`` (205 672
outputs, reduction ``none``), paper-set1 with the order factor and the image as a factor
(d = 7), sobol2, the bundled images. Each N runs as its own ``augsense run`` subprocess, started
by a small intermediate process that reports ``getrusage(RUSAGE_CHILDREN).ru_maxrss``, so each
figure is that one run's peak RSS, results writing included. ``--mode estimation`` instead runs
the same analysis in-process without a run folder (nothing written): the peak of the estimation
alone (model, images, accumulator state, compute), for comparison.

Also prints the bytes of state and of results per output of every estimator at this d
(:mod:`augsense.estimators.memory`) and what they come to for this run's outputs.

    .venv/bin/python bench/bench_memory_elements.py [--n 8 16] [--mode cli|estimation|both]

Issue 17's target: <= 3 GB peak at any N (5.9 GB at N = 8 before). About 5-10 minutes a run on
2 shared CPU cores (the accumulator update over 205k outputs dominates the loop).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYERS = "features.2,features.5,features.7,features.9,avgpool,classifier.2,classifier.5,output"
ARGS = ["--model", "alexnet", "--weights", "random", "--layers", LAYERS, "--reduction", "none",
        "--estimator", "sobol2", "--factors", "paper-set1", "--random-order", "--image-mode", "joint"]
D = 7  # paper-set1's five factors + order + image


def cli_command(n: int, out: Path) -> list[str]:
    augsense = Path(sys.executable).with_name("augsense")
    return [str(augsense), "run", *ARGS, "--n", str(n), "--out", str(out), "--overwrite", "--quiet", "--no-report"]


def child_cli(n: int) -> None:
    """Intermediate process: one ``augsense run``; prints its peak RSS (KiB) as JSON."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        done = subprocess.run(cli_command(n, Path(folder) / "run"), capture_output=True, text=True)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"augsense run failed for N = {n}:\n{done.stderr[-3000:]}")
    print(json.dumps({"n": n, "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                      "seconds": seconds}))


def child_estimation(n: int) -> None:
    """The same analysis in this process, nothing written; prints the peak RSS (KiB) and the outputs."""
    from augsense.analyses.sensitivity import run_sensitivity
    from augsense.config import SensitivityConfig

    config = SensitivityConfig(model="alexnet", weights="random", layers=LAYERS.split(","), reduction="none",
                               estimator="sobol2", factors=["paper-set1"], random_order=True, image_mode="joint",
                               n=n)
    started = time.perf_counter()
    run = run_sensitivity(config, progress=False)
    outputs = sum(s.stop - s.start for s in run.slices.values())
    print(json.dumps({"n": n, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "seconds": time.perf_counter() - started, "outputs": outputs}))


def measure(mode: str, n: int) -> dict[str, float]:
    done = subprocess.run([sys.executable, __file__, f"--child-{mode}", str(n)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {mode} child for N = {n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def print_table(m: int) -> None:
    from augsense.estimators.memory import bytes_table

    print(f"bytes per output at d = {D} (state: float64 sums independent of N; results: compute's arrays), "
          f"and for this run's m = {m} outputs:")
    print(f"  {'estimator':<28}{'state B':>9}{'result B':>10}{'state MiB':>11}{'result MiB':>12}")
    for row in bytes_table(D):
        state, result = int(row["state_bytes"]), int(row["result_bytes"])  # type: ignore[call-overload]
        print(f"  {row['estimator']:<28}{state:>9}{result:>10}{state * m / 2**20:>11.0f}{result * m / 2**20:>12.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs=2, default=[8, 16], help="the two N (powers of two)")
    parser.add_argument("--mode", choices=("cli", "estimation", "both"), default="cli")
    parser.add_argument("--child-cli", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-estimation", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_cli is not None:
        return child_cli(args.child_cli)
    if args.child_estimation is not None:
        return child_estimation(args.child_estimation)
    m = 205_672  # AlexNet: 46656 + 32448 + 64896 + 43264 + 9216 + 4096 + 4096 units + 1000 outputs
    print_table(m)
    modes = ("cli", "estimation") if args.mode == "both" else (args.mode,)
    peaks = {}
    for mode in modes:
        for n in args.n:
            row = measure(mode, n)
            peaks[mode, n] = row["peak_kib"] / 2**20
            what = "augsense run (results written)" if mode == "cli" else "estimation only (nothing written)"
            print(f"{what:<36} N = {n:>4}: peak RSS {peaks[mode, n]:.2f} GiB ({row['peak_kib'] * 1024 / 1e9:.2f} GB), "
                  f"{row['seconds']:.0f} s")
    for mode in modes:
        small, large = (peaks[mode, n] for n in args.n)
        print(f"{mode}: peak ratio N = {args.n[1]} / N = {args.n[0]}: {large / small:.3f}; "
              f"{'within' if max(small, large) * 2**30 / 1e9 <= 3 else 'ABOVE'} the 3 GB target")


if __name__ == "__main__":
    main()
