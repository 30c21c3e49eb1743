"""Coverage of the whole CNN path against exact answers (issue: no silently wrong numbers).

A planted network whose units depend on image x factors (tests/planted_images.py) goes through
``run_sensitivity`` — design, image assignment, real factor code, hooks, accumulators — for many
seeds; the exact indices come from enumerating every image x factor grid value (tests/exact.py).
Nominal 95 % intervals must cover the exact value between 90 % and 99 % of the time: too rarely
means a bias or too narrow intervals, too often means intervals too wide. The fast tests run a
few configurations in ``make test``; the full study (2, 4, 20, 25, 64 images x within/joint x Sobol
and both Shapley methods x 100 seeds) is in the slow suite.
"""

from __future__ import annotations

import numpy as np
import pytest

import planted_images as planted
from augsense.analyses.sensitivity import run_sensitivity
from augsense.config import SensitivityConfig
from augsense.design.core import image_assignment
from exact import exact_indices, exact_within, gauss_legendre

#: float32 forward passes: an interval counts as covering within this absolute slack
SLACK = 1e-6
QUANTITIES = {"sobol": ("first_order", "total_order"), "shapley-exact": ("shapley",),
              "shapley-permutation": ("shapley",)}


def run_once(n_images: int, mode: str, estimator: str, seed: int, n: int):
    config = SensitivityConfig(model="image-factor", images="python", layers=["readout"], factors=planted.FACTORS,
                               bounds=planted.BOUNDS, image_mode=mode, estimator=estimator, n=n, seed=seed,
                               batch_size=512, device="cpu", output="logits", report=False)
    return run_sensitivity(config, model=planted.bundle(), images=planted.images(n_images), progress=False)


def coverage(n_images: int, mode: str, estimator: str, seeds: range, n: int = 256) -> tuple[float, int, list[str]]:
    """Share of (seed, unit, player, quantity) intervals that cover the exact value, their number,
    and the worst misses (for the failure message)."""
    image_set = planted.images(n_images)
    grid = planted.grid_values(image_set)
    fixed = planted.exact_answer(image_set, mode, grid=grid) if mode == "joint" else None
    hits, misses = [], []
    for seed in seeds:
        result = run_once(n_images, mode, estimator, seed, n).result
        if fixed is None:  # within: the estimand weights each image by its share of the base rows
            counts = np.bincount(image_assignment(np.arange(n), n_images, n=n, seed=seed), minlength=n_images)
            truth = planted.exact_answer(image_set, mode, counts / n, grid=grid)
        else:
            truth = fixed
        for quantity in QUANTITIES[estimator]:
            value, ci = getattr(result, quantity), getattr(result, f"{quantity}_ci")
            for unit, exact in enumerate(truth):
                for player, target in enumerate(getattr(exact, quantity)):
                    low, high = ci[0, unit, player], ci[1, unit, player]
                    covered = low - SLACK <= target <= high + SLACK
                    hits.append(covered)
                    if not covered:
                        misses.append(f"seed {seed} unit {unit} {quantity}[{player}] = {value[unit, player]:.4f} "
                                      f"[{low:.4f}, {high:.4f}] vs exact {target:.4f}")
    return float(np.mean(hits)), len(hits), misses[:5]


# -- the exact answers themselves -------------------------------------------------------------------

def test_exact_indices_of_analytic_functions():
    x, w = gauss_legendre(0.0, 1.0, 3)
    linear = 1.0 * x[:, None] + 2.0 * x[None, :]
    exact = exact_indices(linear, [w, w])
    np.testing.assert_allclose(exact.first_order, [0.2, 0.8], atol=1e-12)
    np.testing.assert_allclose(exact.total_order, [0.2, 0.8], atol=1e-12)
    np.testing.assert_allclose(exact.shapley, [0.2, 0.8], atol=1e-12)
    product = x[:, None] * x[None, :]  # X1 X2 on [0, 1]^2: V = 7/144, V_1 = 3/144
    exact = exact_indices(product, [w, w])
    np.testing.assert_allclose(exact.variance, 7 / 144, atol=1e-12)
    np.testing.assert_allclose(exact.first_order, [3 / 7, 3 / 7], atol=1e-12)
    np.testing.assert_allclose(exact.total_order, [4 / 7, 4 / 7], atol=1e-12)
    np.testing.assert_allclose(exact.shapley, [0.5, 0.5], atol=1e-12)
    coin = np.array([[0.0, 1.0], [1.0, 1.0]])  # OR of two fair coins
    half = np.array([0.5, 0.5])
    exact = exact_indices(coin, [half, half])
    np.testing.assert_allclose(exact.variance, 3 / 16)
    np.testing.assert_allclose(exact.first_order, [1 / 3, 1 / 3])


def test_within_mode_averages_numerators_and_denominators_separately():
    coin = np.array([0.5, 0.5])
    moved_by_first = np.array([[0.0, 0.0], [2.0, 2.0]])   # image 0: V = 1, all from player 0
    moved_by_second = np.array([[0.0, 1.0], [0.0, 1.0]])  # image 1: V = 1/4, all from player 1
    exact = exact_within(np.stack([moved_by_first, moved_by_second]), np.array([0.5, 0.5]), [coin, coin])
    np.testing.assert_allclose(exact.first_order, [0.8, 0.2])   # (1/2 * 1) / (1/2 * 5/4), not (1 + 0) / 2
    np.testing.assert_allclose(exact.shapley, [0.8, 0.2])
    np.testing.assert_allclose(exact.variance, 0.625)


def test_the_planted_units_depend_on_image_and_factors():
    exact = planted.exact_answer(planted.images(8), "joint")
    image = np.array([e.first_order[3] for e in exact])
    flip_total = np.array([e.total_order[2] for e in exact])
    assert (image > 0.01).all() and (flip_total > 0.01).all()
    within = planted.exact_answer(planted.images(8), "within")
    interactions = np.array([e.total_order - e.first_order for e in within])
    assert (interactions.max(axis=1) > 0.01).sum() >= 4  # not additive: pick-freeze has something to find
    for e in within + exact:
        assert abs(e.shapley.sum() - 1) < 1e-9 and (e.total_order >= e.first_order - 1e-12).all()


# -- coverage: fast -----------------------------------------------------------------------------------

@pytest.mark.parametrize("n_images, mode, estimator", [
    (4, "within", "sobol"),
    (25, "within", "shapley-exact"),
    (20, "joint", "sobol"),
])
def test_intervals_cover_the_exact_value(n_images, mode, estimator):
    share, count, misses = coverage(n_images, mode, estimator, range(12))
    assert 0.88 <= share <= 0.995, f"coverage {share:.3f} of {count}: {misses}"


# -- coverage: the full study (slow) ------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["sobol", "shapley-exact", "shapley-permutation"])
@pytest.mark.parametrize("mode", ["within", "joint"])
@pytest.mark.parametrize("n_images", [2, 4, 20, 25, 64])
def test_full_coverage_study(n_images, mode, estimator):
    share, count, misses = coverage(n_images, mode, estimator, range(100))
    assert 0.90 <= share <= 0.99, f"coverage {share:.3f} of {count}: {misses}"
