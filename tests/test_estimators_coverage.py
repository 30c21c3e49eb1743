"""Coverage study: nominal-95 % delta-method intervals cover the analytic Ishigami values."""

import numpy as np
import pytest

from augsense.estimators.api import shapley_effects, sobol_indices

SEEDS = range(200)
BOUNDS = [(-np.pi, np.pi)] * 3


def ishigami(x, a=7.0, b=0.1):
    return np.sin(x[:, 0]) + a * np.sin(x[:, 1]) ** 2 + b * x[:, 2] ** 4 * np.sin(x[:, 0])


def truth(a=7.0, b=0.1):
    V1, V2, V13 = 0.5 * (1 + b * np.pi**4 / 5) ** 2, a**2 / 8, 8 * b**2 * np.pi**8 / 225
    V = V1 + V2 + V13
    return {"first_order": np.array([V1, V2, 0]) / V, "total_order": np.array([V1 + V13, V2, V13]) / V,
            "shapley": np.array([V1 + V13 / 2, V2, V13 / 2]) / V}


def coverage(run, quantity):
    t = truth()[quantity]
    hits = []
    for seed in SEEDS:
        r = run(seed)
        ci = getattr(r, quantity + "_ci")[:, 0]
        hits.append((ci[0] <= t) & (t <= ci[1]))
    return np.mean(hits, axis=0)


@pytest.mark.slow
@pytest.mark.parametrize("quantity", ["first_order", "total_order"])
def test_sobol_intervals_cover_at_least_90_percent(quantity):
    cov = coverage(lambda s: sobol_indices(ishigami, BOUNDS, 1024, seed=s), quantity)
    print(quantity, cov)
    assert np.all(cov >= 0.90), cov


@pytest.mark.slow
@pytest.mark.parametrize("method, n", [("exact", 256), ("permutation", 512)])
def test_shapley_intervals_cover_at_least_90_percent(method, n):
    cov = coverage(lambda s: shapley_effects(ishigami, BOUNDS, n, method=method, seed=s), "shapley")
    print(method, cov)
    assert np.all(cov >= 0.90), cov
