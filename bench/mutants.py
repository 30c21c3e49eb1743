"""Plant known one-line bugs in a copy of the source and check that the targeted tests catch each.

Issue 16 found five realistic bugs that no test caught (all in intervals or in what the user is
shown). This script re-plants them, and a few relatives, in a temporary copy of ``src/`` and runs
the tests meant to catch them against that copy (``PYTHONPATH=<copy>/src``); the working tree is
never modified. A mutant is *caught* when the tests fail, *survived* when they pass.

Not listed because equivalent: the covariance about zero instead of the mean. Every index is a ratio
N / W whose gradient (1/W, -N/W^2) is orthogonal to the mean (N, W), so grad^T mu mu^T grad = 0 and
the interval does not change.

    .venv/bin/python bench/mutants.py            # all mutants, ~3 min on 2 cores
    .venv/bin/python bench/mutants.py --list     # names and what each one breaks
    .venv/bin/python bench/mutants.py se_missing_n contrast_fdr_bh

Exit status 0 when the unmutated copy passes and every mutant is caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    file: str                                   # relative to src/augsense
    edits: tuple[tuple[str, str], ...]          # (old, new); each old must occur exactly once
    tests: tuple[str, ...]                      # pytest arguments, relative to the repository root
    every: bool = False                         # replace every occurrence (>= 1) instead of exactly one


INTERVALS = ("tests/test_interval_strength.py",)
REPORT = ("tests/test_report.py", "-k", "specialist_rows or layer_table")
MUTANTS = [
    # -- the five survivors of issue 16 --------------------------------------------------------
    Mutant("se_missing_n", "delta-method standard error without its / n (intervals sqrt(n) too wide)",
           "estimators/_delta.py",
           (("var = (grad[..., None, :] @ cov @ grad[..., :, None])[..., 0, 0] / n",
             "var = (grad[..., None, :] @ cov @ grad[..., :, None])[..., 0, 0]"),), INTERVALS),
    Mutant("layer_gradient_sign", "sign flipped in the layer-level (aggregated) first-order interval gradient",
           "estimators/sobol.py",
           (("g1 = torch.stack([1 / Ws, zero, -S1 / Ws], -1)", "g1 = torch.stack([1 / Ws, zero, S1 / Ws], -1)"),),
           INTERVALS),
    Mutant("contrast_fdr_bh", "contrast_fdr uses Benjamini-Hochberg instead of Benjamini-Yekutieli",
           "estimators/contrast.py",
           (("from augsense.estimators.fdr import benjamini_yekutieli",
             "from augsense.estimators.fdr import benjamini_hochberg, benjamini_yekutieli"),
            ('    reject, q = benjamini_yekutieli(combined["p_value"].to_numpy(dtype=np.float64), alpha)\n'
             '    combined["q_value"] = q\n    combined["significant"] = reject\n    return combined',
             '    reject, q = benjamini_hochberg(combined["p_value"].to_numpy(dtype=np.float64), alpha)\n'
             '    combined["q_value"] = q\n    combined["significant"] = reject\n    return combined')),
           ("tests/test_fdr.py",)),
    Mutant("specialists_no_ci", "the report's specialists table loses its interval column",
           "report/html.py",
           (('"estimate", "ci", "runner_up"', '"estimate", "runner_up"'),),
           REPORT),
    Mutant("layer_table_no_ci", "the report's layer table loses its interval text",
           "report/html.py",
           (('value=[interval(e, lo, hi) for e, lo, hi in', 'value=[fixed(e) for e, lo, hi in'),),
           REPORT),
    Mutant("layer_bars_no_whiskers", "the layer bars' interval whiskers collapse to a point",
           "report/figures.py",
           (("whisker = ax.plot([a, b], [y, y]", "whisker = ax.plot([a, a], [y, y]"),),
           ("tests/test_report.py", "-k", "screenshot_of_the_layer_bars")),
    # -- relatives --------------------------------------------------------------------------------
    Mutant("layer_total_gradient_sign", "sign flipped in the layer-level total-order interval gradient",
           "estimators/sobol.py",
           (("gT = torch.stack([zero, 1 / Ws, -ST / Ws], -1)", "gT = torch.stack([zero, 1 / Ws, ST / Ws], -1)"),),
           INTERVALS),
    Mutant("shapley_ratio_gradient_sign", "sign flipped in the Shapley ratio gradient (units and layers)",
           "estimators/shapley.py",
           (("grad = torch.stack([1 / Vs, -ratio / Vs], -1)", "grad = torch.stack([1 / Vs, ratio / Vs], -1)"),),
           INTERVALS),
    Mutant("sobol_denominator_gradient_sign", "sign flipped in the per-output first-order denominator gradient",
           "estimators/sobol.py",
           (("dden1 = -(S1 / Vs)[..., None] * dV[:, None]", "dden1 = (S1 / Vs)[..., None] * dV[:, None]"),),
           INTERVALS),
    Mutant("z_one_sided", "one-sided quantile (z = 1.645: nominal 95 % intervals are 90 % ones)",
           "estimators/_delta.py", (("ppf(0.5 + confidence / 2", "ppf(confidence"),), INTERVALS, every=True),
    Mutant("fdr_by_factor_dropped", "Benjamini-Yekutieli without its c(m) factor", "estimators/fdr.py",
           (("scale *= np.sum(1.0 / ranks)", "scale *= 1.0"),), ("tests/test_fdr.py",)),
]


def plant(mutant: Mutant | None, into: Path) -> Path:
    """Copy src/ into ``into`` and apply ``mutant`` there; returns the copy's src folder."""
    src = into / "src"
    shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    if mutant is not None:
        path = src / "augsense" / mutant.file
        text = path.read_text(encoding="utf-8")
        for old, new in mutant.edits:
            count = text.count(old)
            if count != 1 and not (mutant.every and count):
                raise SystemExit(f"{mutant.name}: expected the line once in {mutant.file}, found it {count} times "
                                 f"(the source changed; update bench/mutants.py):\n  {old!r}")
            text = text.replace(old, new)
        path.write_text(text, encoding="utf-8")
    return src


def run_tests(src: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str, float]:
    """pytest on ``tests`` against the package in ``src``; (return code, last output line, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONDONTWRITEBYTECODE="1")
    where = subprocess.run([sys.executable, "-c", "import augsense; print(augsense.__file__)"], env=env,
                           capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    if not where.startswith(str(src)):
        raise SystemExit(f"augsense imports from {where}, not from the mutated copy {src}")
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              env=env, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s", time.perf_counter() - started
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    failed = [line for line in lines if line.startswith("FAILED")]
    return done.returncode, (failed[0] if failed else lines[-1] if lines else done.stderr[-200:]), \
        time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    args = parser.parse_args(argv)
    if args.list:
        for m in MUTANTS:
            print(f"{m.name:34s} {m.file:24s} {m.what}\n{'':34s} tests: {' '.join(m.tests)}")
        return 0
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutant(s) {', '.join(sorted(unknown))}; see --list")
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    ok = True
    with tempfile.TemporaryDirectory(prefix="augsense-mutants-") as tmp:
        baseline = plant(None, Path(tmp) / "baseline")
        for tests in dict.fromkeys(m.tests for m in chosen):   # each selection passes without a mutation
            code, line, seconds = run_tests(baseline, tests, args.timeout)
            verdict = "passes" if code == 0 else "FAILS"
            print(f"{'baseline: ' + ' '.join(tests):34s} {verdict:8s} {seconds:5.0f} s  {line}")
            ok &= code == 0
        for m in chosen:
            code, line, seconds = run_tests(plant(m, Path(tmp) / m.name), m.tests, args.timeout)
            verdict = "caught" if code == 1 else "SURVIVED" if code == 0 else f"error {code}"
            ok &= code == 1
            print(f"{m.name:34s} {verdict:8s} {seconds:5.0f} s  {line}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
