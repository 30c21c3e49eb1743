"""Intervals that are right, not merely wide: two-sided coverage and delta-method SEs vs the truth.

Every check here can fail both ways. Asking only "is the truth inside the interval" passes an
interval that is √n too wide; these tests also demand coverage ≤ 0.99 at nominal 95 % and a
delta-method standard error within ±25 % of the empirical spread of the estimate over independent
replicates.

The replicates are independent *iid* samples, fed to the accumulators directly: the design only
supplies the pick-freeze layout (which member takes which factor from A or from B), while A and B
are drawn afresh with numpy for every replicate. That is the setting the delta method models
exactly (Janon et al. 2014); on the scrambled Sobol' points of the function API the iid
covariance is conservative by design (see :mod:`augsense.estimators._delta`), which the QMC
coverage study in ``test_estimators_coverage.py`` checks that path. Replicates of the Sobol and
exact-Shapley estimators are vectorised as outputs of one accumulator (nothing but the layout is
shared between outputs, so they are independent); permutation Shapley shares each row's player
order between the outputs of an accumulator, so each of its replicates gets its own accumulator
(and the test draws the orders iid too).

Test functions, on x uniform in [0, 1]^4 (x4 is the "noise factor" of the layer tests):

- Ishigami (a = 7, b = 0.1) on 2π x - π of x1..x3, closed-form indices (Ishigami & Homma 1990);
- ``component`` units a L1 + b S2 + c I13 + s N4 with unit-variance, mutually orthogonal ANOVA
  components L1 = √12 (x1 - ½), S2 = √2 sin 2π x2, I13 = 12 (x1 - ½)(x3 - ½) (pure interaction),
  N4 = √12 (x4 - ½); so V1 = a², V2 = b², V13 = c², V4 = s² and every index is a ratio of these.
  A layer of such units has the exact aggregated index Σ_u V_i^(u) / Σ_u V^(u).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from augsense.design import DesignBlock, make_design
from augsense.design.layouts import fixed_mask, permutation_walk_mask
from augsense.estimators import make_accumulator

Z95 = 1.959963984540054
D = 4
#: (a, b, c, s) of the units of one planted "layer"
UNITS = np.array([[2.0, 1.0, 1.0, 0.7],
                  [1.5, 0.5, 0.8, 1.0],
                  [1.0, 0.0, 1.2, 1.0],
                  [2.5, 1.0, 0.3, 0.5]])


# -- planted functions and their exact indices ---------------------------------------------------
def ishigami(x: np.ndarray, a: float = 7.0, b: float = 0.1) -> np.ndarray:
    u = 2 * np.pi * x[..., :3] - np.pi
    return np.sin(u[..., 0]) + a * np.sin(u[..., 1]) ** 2 + b * u[..., 2] ** 4 * np.sin(u[..., 0])


def ishigami_truth(a: float = 7.0, b: float = 0.1) -> dict[str, np.ndarray]:
    """Exact indices over the 4 factors (x4 unused), Ishigami & Homma (1990)."""
    V1, V2, V13 = 0.5 * (1 + b * np.pi**4 / 5) ** 2, a**2 / 8, 8 * b**2 * np.pi**8 / 225
    return _indices(np.array(V1), np.array(V2), np.array(V13), np.array(0.0))


def components(x: np.ndarray, coef: np.ndarray = UNITS) -> np.ndarray:
    """(..., 4) -> (..., U): the planted units a L1 + b S2 + c I13 + s N4 of ``coef`` (U, 4)."""
    L1 = np.sqrt(12) * (x[..., 0] - 0.5)
    S2 = np.sqrt(2) * np.sin(2 * np.pi * x[..., 1])
    I13 = 12 * (x[..., 0] - 0.5) * (x[..., 2] - 0.5)
    N4 = np.sqrt(12) * (x[..., 3] - 0.5)
    return np.stack([L1, S2, I13, N4], -1) @ coef.T


def _indices(V1, V2, V13, V4) -> dict[str, np.ndarray]:
    """first/total/Shapley (..., 4) from the ANOVA variances of the component model."""
    V = V1 + V2 + V13 + V4
    zero = np.zeros_like(V)
    parts = {"first_order": [V1, V2, zero, V4], "total_order": [V1 + V13, V2, V13, V4],
             "shapley": [V1 + V13 / 2, V2, V13 / 2, V4]}
    return {q: np.stack(p, -1) / V[..., None] for q, p in parts.items()}


def component_truth(coef: np.ndarray = UNITS) -> dict[str, np.ndarray]:
    """Exact per-unit (U, 4) indices of :func:`components`."""
    return _indices(*(coef[:, k] ** 2 for k in range(4)))


def layer_truth(coef: np.ndarray = UNITS) -> dict[str, np.ndarray]:
    """Exact layer-level (4,) indices Σ_u V_i^(u) / Σ_u V^(u) of a layer made of the units ``coef``."""
    return _indices(*((coef[:, k] ** 2).sum() for k in range(4)))


# -- iid replicates through the real accumulators ------------------------------------------------
#: the units of every replicate: Ishigami, then the four component units of one planted layer
GROUPS = np.array([0, 1, 1, 1, 1])
LAYER = 1


def planted_units(x: np.ndarray) -> np.ndarray:
    """(..., 4) -> (..., 5): Ishigami and the units of :data:`UNITS`."""
    return np.concatenate([ishigami(x)[..., None], components(x)], -1)


def unit_truth() -> dict[str, np.ndarray]:
    """Exact (5, 4) indices of :func:`planted_units`."""
    ish, comp = ishigami_truth(), component_truth()
    return {q: np.concatenate([ish[q][None], comp[q]]) for q in ish}


def _blocks(design, kind: str, rng: np.random.Generator):
    """The design's blocks (rows, group size, block numbers) with iid player orders for permutation
    designs; the points are left empty because the test draws its own inputs."""
    for k in range(design.n_blocks):
        start = k * design.block_size
        r = min(design.block_size, design.n - start)
        orders = np.argsort(rng.random((r, D)), axis=1) if kind == "shapley-permutation" else None
        yield DesignBlock(k, np.arange(start, start + r), np.zeros((r, design.group_size, D)), orders)


def _from_b(kind: str, block) -> np.ndarray:
    """(r, G, d) bool: member g of a row takes factor i from B."""
    if kind == "shapley-permutation":
        return permutation_walk_mask(block.permutations)
    mask = fixed_mask(kind, D)
    return np.broadcast_to(mask[None], (block.points.shape[0],) + mask.shape)


def _run(kind: str, n: int, n_rep: int, rng: np.random.Generator, denominator: str):
    """One accumulator over ``n_rep`` replicates (outputs replicate-major), fresh iid A, B each."""
    design = make_design(kind, [1] * D, n, seed=0, block_size=n)
    n_units = len(GROUPS)
    groups = torch.as_tensor((np.arange(n_rep)[:, None] * (GROUPS.max() + 1) + GROUPS).ravel())
    acc = make_accumulator(design, n_rep * n_units, groups=groups,
                           **({"denominator": denominator} if kind.startswith("sobol") else {}))
    for block in _blocks(design, kind, rng):
        r = block.points.shape[0]
        A, B = rng.random((2, n_rep, r, D))
        X = np.where(_from_b(kind, block)[None], B[:, :, None], A[:, :, None])   # (K, r, G, d)
        y = planted_units(X)                                                    # (K, r, G, U)
        acc.update(block, torch.as_tensor(y.transpose(1, 2, 0, 3).reshape(r, y.shape[2], -1)))
    return acc.compute()


@functools.lru_cache(maxsize=None)
def replicates(kind: str, n: int, n_rep: int, seed: int, denominator: str = "pooled") -> dict[str, np.ndarray]:
    """Estimates and intervals of ``n_rep`` independent iid replicates of :func:`planted_units`.

    Returns per quantity q: q (K, 5, d), q_ci (2, K, 5, d), layer_q (K, d), layer_q_ci (2, K, d)
    for the planted layer; with ``sobol2`` also second_order (K, 5, d, d), second_order_ci.
    Replicates of one accumulator share nothing but the layout; permutation Shapley shares each
    row's player order between outputs, so each of its replicates gets an accumulator of its own.
    """
    rng = np.random.default_rng(seed)
    runs = ([_run(kind, n, 1, rng, denominator) for _ in range(n_rep)] if kind == "shapley-permutation"
            else [_run(kind, n, n_rep, rng, denominator)])
    U, ng = len(GROUPS), GROUPS.max() + 1
    out: dict[str, np.ndarray] = {}
    for q in ("first_order", "total_order", "shapley", "second_order"):
        if getattr(runs[0], q) is None:
            continue
        est = np.concatenate([getattr(r, q) for r in runs])
        ci = np.concatenate([getattr(r, q + "_ci") for r in runs], 1)
        out[q], out[q + "_ci"] = est.reshape(n_rep, U, *est.shape[1:]), ci.reshape(2, n_rep, U, *ci.shape[2:])
        if q != "second_order":
            agg = np.concatenate([getattr(r.aggregated, q) for r in runs]).reshape(n_rep, ng, D)
            agg_ci = np.concatenate([getattr(r.aggregated, q + "_ci") for r in runs], 1).reshape(2, n_rep, ng, D)
            out["layer_" + q], out["layer_" + q + "_ci"] = agg[:, LAYER], agg_ci[:, :, LAYER]
    return out


def coverage_and_se_ratio(est: np.ndarray, ci: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Over replicates (axis 0 of est, axis 1 of ci): coverage of ``truth`` and mean SE / empirical SD.

    The SE is read back from the interval's half width with the normal quantile; a Student-t
    quantile with >= 31 degrees of freedom makes it at most 4 % larger than the estimator's SE.
    """
    covered = ((ci[0] <= truth) & (truth <= ci[1])).mean(0)
    se = (ci[1] - ci[0]) / (2 * Z95)
    return covered, se.mean(0) / est.std(0, ddof=1)


def check_two_sided(name: str, est: np.ndarray, ci: np.ndarray, truth: np.ndarray, *,
                    coverage: tuple[float, float] = (0.90, 0.99), se_ratio: tuple[float, float] = (0.75, 1.25),
                    bias_se: float = 5.0) -> None:
    """Coverage within ``coverage``, SE / SD within ``se_ratio``, mean within ``bias_se`` SEs of the truth;
    cells whose truth is exactly 0 for a degenerate estimator are the caller's to drop."""
    covered, ratio = coverage_and_se_ratio(est, ci, truth)
    spread = est.std(0, ddof=1) / np.sqrt(est.shape[0])
    bias = np.abs(est.mean(0) - truth) / spread
    report = f"{name}: coverage {np.round(covered, 3)}, SE/SD {np.round(ratio, 3)}, |bias|/SE {np.round(bias, 1)}"
    print(report)
    assert np.all((coverage[0] <= covered) & (covered <= coverage[1])), report
    assert np.all((se_ratio[0] <= ratio) & (ratio <= se_ratio[1])), report
    assert np.all(bias <= bias_se), report


def _quantities(kind: str) -> tuple[str, ...]:
    return ("first_order", "total_order") if kind.startswith("sobol") else ("shapley",)


def check_units(kind: str, res: dict[str, np.ndarray], label: str) -> None:
    truth = unit_truth()
    for q in _quantities(kind):
        # a factor a unit does not depend on has an exactly-zero Jansen / Shapley numerator on every
        # row and a degenerate interval [0, 0]; those cells (truth 0) are left out. S_i keeps its
        # zero-truth cells: its Saltelli numerator is noisy, its interval not degenerate.
        live = truth[q] > 0 if q != "first_order" else np.ones_like(truth[q], bool)
        live &= truth["total_order"] > 0
        check_two_sided(f"{label} {q}", res[q][:, live], res[q + "_ci"][:, :, live], truth[q][live])


def check_layer(kind: str, res: dict[str, np.ndarray], label: str) -> None:
    truth = layer_truth()
    for q in _quantities(kind):
        check_two_sided(f"{label} layer {q}", res["layer_" + q], res["layer_" + q + "_ci"], truth[q])


# -- fast (make test) ----------------------------------------------------------------------------
FAST = {"sobol": 256, "shapley-exact": 256, "shapley-permutation": 512}
FAST_REPLICATES = 200


@pytest.mark.parametrize("kind", list(FAST))
def test_unit_intervals_cover_95_percent_two_sided_and_se_matches_spread(kind):
    """Per-output S_i, ST_i (Sobol) or Shapley effects: 0.90 <= coverage <= 0.99, SE within ±25 %."""
    check_units(kind, replicates(kind, FAST[kind], FAST_REPLICATES, seed=11), kind)


@pytest.mark.parametrize("kind", list(FAST))
def test_layer_intervals_of_noisy_units_cover_two_sided_and_se_matches_spread(kind):
    """Layer-level Σ_u V_i / Σ_u V of four units sharing their inputs, x4 a pure noise factor."""
    check_layer(kind, replicates(kind, FAST[kind], FAST_REPLICATES, seed=11), kind)


# -- full (make test-slow) -----------------------------------------------------------------------
SLOW_REPLICATES = 1000


@pytest.mark.slow
@pytest.mark.parametrize("n", [256, 1024])
@pytest.mark.parametrize("kind", list(FAST))
def test_full_intervals_two_sided(kind, n):
    """1000 iid replicates at small and large N: units and the layer, two-sided."""
    res = replicates(kind, n, SLOW_REPLICATES, seed=21)
    check_units(kind, res, f"{kind} N={n}")
    check_layer(kind, res, f"{kind} N={n}")


@pytest.mark.slow
@pytest.mark.parametrize("denominator", ["pooled", "paired"])
def test_full_sobol_intervals_with_second_order_and_both_denominators(denominator):
    """sobol2 designs, 1000 replicates: S_i, ST_i, the layer, and every S_ij (Saltelli 2002), zero and
    non-zero interactions alike (only x1 and x3 interact: S_13 = V13 / V)."""
    res = replicates("sobol2", 1024, SLOW_REPLICATES, seed=23, denominator=denominator)
    check_units("sobol2", res, f"sobol2 {denominator}")
    check_layer("sobol2", res, f"sobol2 {denominator}")
    truth = np.zeros((len(GROUPS), D, D))
    truth[:, 0, 2] = truth[:, 2, 0] = unit_truth()["total_order"][:, 2]
    iu, ju = np.triu_indices(D, 1)
    est, ci = res["second_order"][:, :, iu, ju], res["second_order_ci"][:, :, :, iu, ju]
    check_two_sided(f"sobol2 {denominator} second_order", est.reshape(SLOW_REPLICATES, -1),
                    ci.reshape(2, SLOW_REPLICATES, -1), truth[:, iu, ju].ravel())
