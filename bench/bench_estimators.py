"""Estimator benchmarks, measured in one run (ratios, no assertions).

(a) S1 + ST for m = 100 000 outputs, d = 8, N = 1024: our accumulator (with delta-method CIs)
    vs SALib's per-output loop, both single-threaded; SALib timed on tens to hundreds of outputs
    and extrapolated linearly to m, once as users run it (default bootstrap, num_resamples=100)
    and once with num_resamples=1 (its point estimates alone).
(b) Shapley RMSE against model evaluations on Ishigami: ours (exact, permutation) on a grid of n
    and the Song-Nelson-Staum 2016 permutation estimator (outer/inner Monte Carlo loops); for each
    SNS budget, the evaluations our estimators need to reach its RMSE (log-log interpolation), and
    per method the range of those ratios and at how many budgets they are <= 1/10.
(c) Peak memory of a streaming run at N = 1024 vs N = 16 384 for fixed m (separate processes, each
    started from a fresh launcher so its peak RSS is its own: _measured.py).

Usage: python bench/bench_estimators.py [--quick] [--sections abc]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
import torch
from _measured import measured

from augsense.design import make_design
from augsense.estimators import make_accumulator
from augsense.estimators.api import shapley_effects

PI = np.pi


def ishigami(x: np.ndarray) -> np.ndarray:
    return np.sin(x[..., 0]) + 7 * np.sin(x[..., 1]) ** 2 + 0.1 * x[..., 2] ** 4 * np.sin(x[..., 0])


ISH_SHAPLEY = np.array([0.4357, 0.4424, 0.1218])


def bench_speed(m: int, d: int = 8, n: int = 1024, salib_outputs: int = 40, salib_minimal_outputs: int = 400) -> None:
    design = make_design("sobol", [1] * d, n, seed=0, block_size=64)
    rng = np.random.default_rng(0)
    w = torch.as_tensor(rng.normal(size=(d, m)))
    acc = make_accumulator(design, m)
    kept, ours = [], 0.0
    for b in design.blocks():
        y = torch.sin(torch.as_tensor(b.points) @ w)               # (r, G, m), made outside the timer
        kept.append(y[:, :, :salib_minimal_outputs].clone())
        t0 = time.perf_counter()
        acc.update(b, y)
        ours += time.perf_counter() - t0
        del y
    t0 = time.perf_counter()
    res = acc.compute(centre="all")
    ours += time.perf_counter() - t0
    from SALib.analyze import sobol as salib_sobol

    order = [0, *range(2, 2 + d), 1]                                 # SALib rows: A, AB_1..AB_d, B
    Y = torch.cat(kept)[:, order].reshape(n * (d + 2), -1).numpy()
    problem = {"num_vars": d, "names": [f"x{i}" for i in range(d)], "bounds": [[0, 1]] * d}

    def salib(outputs: int, **kw: int) -> tuple[float, dict]:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for j in range(outputs):
                ref = salib_sobol.analyze(problem, Y[:, j], calc_second_order=False, print_to_console=False,
                                          seed=1, **kw)
        return (time.perf_counter() - t0) / outputs * m, ref

    default, ref = salib(salib_outputs)                              # num_resamples=100 bootstrap: what users run
    minimal, _ = salib(salib_minimal_outputs, num_resamples=1)      # point estimates only, in effect
    agree = max(np.abs(res.first_order[salib_outputs - 1] - ref["S1"]).max(),
                np.abs(res.total_order[salib_outputs - 1] - ref["ST"]).max())
    print(f"(a) S1+ST with 95 % CIs, m={m}, d={d}, N={n}, torch threads {torch.get_num_threads()}: "
          f"ours {ours:.1f} s")
    print(f"    SALib sobol.analyze per-output loop, default (num_resamples=100 bootstrap), extrapolated from "
          f"{salib_outputs} outputs: {default:.0f} s -> ours {default / ours:.0f}x faster")
    print(f"    SALib with num_resamples=1 (its point estimates only), extrapolated from {salib_minimal_outputs} "
          f"outputs: {minimal:.0f} s -> ours {minimal / ours:.1f}x faster")
    print(f"    max |S1, ST difference| vs SALib on output {salib_outputs - 1}: {agree:.1e}")


def song_nelson_staum(n_perm: int, n_v: int, n_o: int, n_i: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Song, Nelson & Staum 2016 (Algorithm 1 with random permutations): returns shares, evaluations."""
    d = 3
    sample = lambda k: rng.uniform(-PI, PI, size=(k, d))
    var = ishigami(sample(n_v)).var(ddof=1)
    sh = np.zeros(d)
    evals = n_v
    for _ in range(n_perm):
        perm = rng.permutation(d)
        prev = 0.0
        for j in range(d):
            if j == d - 1:
                cost = var
            else:
                fixed = perm[j + 1:]          # c(S) = E[Var(Y | X_{-S})], S = perm[:j+1]
                outer = sample(n_o)
                inner = sample(n_o * n_i).reshape(n_o, n_i, d)
                inner[:, :, fixed] = outer[:, None, fixed]
                cost = ishigami(inner).var(axis=1, ddof=1).mean()
                evals += n_o * n_i
            sh[perm[j]] += cost - prev
            prev = cost
    return sh / n_perm / var, evals


def _rmse(errors: list[np.ndarray]) -> float:
    return float(np.sqrt(np.mean(np.square(errors))))


def _evals_to_reach(curve: list[tuple[int, float]], target: float) -> tuple[float, bool] | None:
    """Evaluations at which an RMSE curve reaches target, interpolating log RMSE vs log evaluations,
    and whether that figure is only an upper bound (the grid's cheapest point already beats target);
    None when the grid never reaches it."""
    curve = sorted(curve)
    if curve[0][1] <= target:
        return float(curve[0][0]), curve[0][1] < target
    for (e0, r0), (e1, r1) in zip(curve, curve[1:]):
        if r1 <= target < r0:
            t = (np.log(target) - np.log(r0)) / (np.log(r1) - np.log(r0))
            return float(np.exp(np.log(e0) + t * (np.log(e1) - np.log(e0)))), False
    return None


def bench_shapley_rmse(reps: int) -> None:
    rng = np.random.default_rng(0)
    print(f"(b) Shapley RMSE on Ishigami (over 3 factors and {reps} seeds per point) vs model evaluations")
    curves: dict[str, list[tuple[int, float]]] = {}
    for method, G in (("exact", 8), ("permutation", 4)):
        for n in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096):
            err = [shapley_effects(ishigami, [(-PI, PI)] * 3, n, method=method, seed=s).shapley[0] - ISH_SHAPLEY
                   for s in range(reps)]
            curves.setdefault(f"ours-{method}", []).append((n * G, _rmse(err)))
    # SNS with its recommended N_O = 1, N_I = 3 and many permutations (N_V: as many evaluations as
    # the permutation part, at least 1000, so the variance estimate does not cap its accuracy),
    # and with larger outer loops
    sns = []
    for n_perm, n_v, n_o in ((32, 1000, 1), (128, 1000, 1), (512, 3072, 1), (2048, 12288, 1), (8192, 49152, 1),
                             (6, 1000, 16), (24, 4608, 32), (96, 36864, 64)):
        err, evals = [], 0
        for _ in range(reps):
            sh, evals = song_nelson_staum(n_perm, n_v, n_o, 3, rng)
            err.append(sh - ISH_SHAPLEY)
        sns.append((f"SNS perms={n_perm} N_V={n_v} N_O={n_o} N_I=3", evals, _rmse(err)))
    for name, curve in curves.items():
        print(f"    {name:18s} " + "  ".join(f"{e}:{r:.4f}" for e, r in curve) + "  (evaluations:RMSE)")
    for method, G in (("exact", 8), ("permutation", 4)):   # the blocks (replicates) behind each grid point
        blocks = [make_design(f"shapley-{method}", [1] * 3, e // G, block_size=65536 // G).n_blocks
                  for e, _ in curves[f"ours-{method}"]]
        print(f"    ours-{method:11s} blocks " + " ".join(map(str, blocks)))
    ratios: dict[str, list[tuple[float, bool] | None]] = {name: [] for name in curves}
    for label, e_sns, r_sns in sns:
        line = f"    {label:36s} evaluations {e_sns:7d} RMSE {r_sns:.4f}"
        for name, curve in curves.items():
            need = _evals_to_reach(curve, r_sns)
            ratios[name].append(None if need is None else (need[0] / e_sns, need[1]))
            if need is None:
                line += f" | {name}: beyond the grid"
            else:
                le = "<" if need[1] else "="
                line += f" | {name} needs {le}{need[0]:7.0f} {le} {need[0] / e_sns:.3f}x"
        print(line)
    for name, rs in ratios.items():
        found = [r for r, _ in filter(None, rs)]
        print(f"    {name}: {min(found):.3f}-{max(found):.3f}x SNS evaluations ('<' figures count as their bound), "
              f"<= 1/10 at {sum(r <= 0.1 for r in found)} of {len(rs)} budgets")


def memory_child(n: int, m: int, threads: int) -> None:
    torch.set_num_threads(threads)
    design = make_design("sobol", [1] * 4, n, seed=0, block_size=32)  # equal blocks at both N (>= 32 blocks)
    acc = make_accumulator(design, m)
    w = torch.randn(4, m, dtype=torch.float64)
    for b in design.blocks():
        acc.update(b, torch.sin(torch.as_tensor(b.points) @ w))
    acc.compute()


def bench_memory(m: int) -> None:
    peaks = {}
    for n in (1024, 16384):  # each from a fresh launcher: its own peak, not this process's (_measured.py)
        done = measured([sys.executable, __file__, "--memory-child", str(n), str(m), str(torch.get_num_threads())])
        if done.returncode != 0:
            sys.exit(f"the memory child for N={n} failed: {done.stderr[-2000:]}")
        peaks[n] = done.peak_kib / 1024
    print(f"(c) peak RSS, m={m}, d=4: N=1024 {peaks[1024]:.0f} MiB, N=16384 {peaks[16384]:.0f} MiB, "
          f"ratio {peaks[16384] / peaks[1024]:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller m and fewer repetitions")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for our estimator (default 1)")
    parser.add_argument("--sections", default="abc", help="which sections to run, e.g. 'b' (default abc)")
    parser.add_argument("--memory-child", nargs=3, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    # one thread, like SALib's numpy loop; on an oversubscribed CPU torch's OpenMP threads also
    # wait on each other in every small kernel
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    sections = {"a": lambda: bench_speed(10_000 if args.quick else 100_000),
                "b": lambda: bench_shapley_rmse(10 if args.quick else 40), "c": lambda: bench_memory(20_000)}
    for key, section in sections.items():
        if key not in args.sections:
            continue
        t0 = time.perf_counter()
        section()
        print(f"    [{time.perf_counter() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
