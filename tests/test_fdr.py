"""FDR procedures against statsmodels and scipy on identical p-values."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.multitest import multipletests

from augsense.errors import AugsenseError
from augsense.estimators.fdr import benjamini_hochberg, benjamini_yekutieli


def _mixed_p_values(rng: np.random.Generator, m: int) -> np.ndarray:
    """Nulls (uniform) plus signals (tiny p), with exact ties and 0/1 edges."""
    p = rng.uniform(size=m)
    p[: m // 5] = rng.uniform(0, 1e-4, size=m // 5)
    p[5:9] = p[4]  # ties
    p[10] = 0.0
    p[11] = 1.0
    return rng.permutation(p)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_by_matches_statsmodels_and_scipy(seed: int, alpha: float) -> None:
    p = _mixed_p_values(np.random.default_rng(seed), 2000)
    reject, q = benjamini_yekutieli(p, alpha)
    sm_reject, sm_q, _, _ = multipletests(p, alpha=alpha, method="fdr_by")
    np.testing.assert_array_equal(reject, sm_reject)
    np.testing.assert_allclose(q, sm_q, rtol=1e-12, atol=0)
    np.testing.assert_allclose(q, scipy.stats.false_discovery_control(p, method="by"), rtol=1e-12)
    assert 0 < reject.sum() < p.size  # the case is not trivial


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
def test_bh_matches_statsmodels_and_scipy(alpha: float) -> None:
    p = _mixed_p_values(np.random.default_rng(7), 1500)
    reject, q = benjamini_hochberg(p, alpha)
    sm_reject, sm_q, _, _ = multipletests(p, alpha=alpha, method="fdr_bh")
    np.testing.assert_array_equal(reject, sm_reject)
    np.testing.assert_allclose(q, sm_q, rtol=1e-12)
    np.testing.assert_allclose(q, scipy.stats.false_discovery_control(p, method="bh"), rtol=1e-12)


def test_by_is_stricter_than_bh() -> None:
    p = _mixed_p_values(np.random.default_rng(3), 1000)
    by_reject, by_q = benjamini_yekutieli(p)
    bh_reject, bh_q = benjamini_hochberg(p)
    assert np.all(by_q >= bh_q)
    assert by_reject.sum() < bh_reject.sum()


def test_any_shape_and_nan_are_excluded() -> None:
    rng = np.random.default_rng(4)
    p = _mixed_p_values(rng, 600).reshape(3, 10, 20)
    with_nan = p.copy()
    holes = rng.uniform(size=p.shape) < 0.1
    with_nan[holes] = np.nan
    reject, q = benjamini_yekutieli(with_nan)
    assert reject.shape == q.shape == p.shape
    assert np.all(np.isnan(q[holes])) and not reject[holes].any()
    # the NaNs do not count towards m: same answer as the finite entries alone
    sm_reject, sm_q, _, _ = multipletests(with_nan[~holes], method="fdr_by")
    np.testing.assert_allclose(q[~holes], sm_q, rtol=1e-12)
    np.testing.assert_array_equal(reject[~holes], sm_reject)


def test_all_nan_and_empty() -> None:
    reject, q = benjamini_yekutieli(np.full(4, np.nan))
    assert not reject.any() and np.isnan(q).all()
    reject, q = benjamini_yekutieli(np.array([]))
    assert reject.shape == q.shape == (0,)


@pytest.mark.parametrize(
    ("p", "alpha", "message"),
    [
        ([0.1, 1.5], 0.05, r"must lie in \[0, 1\]"),
        ([0.1, -0.1], 0.05, r"must lie in \[0, 1\]"),
        ([0.1, np.inf], 0.05, "finite or NaN"),
        ([0.1, 0.2], 0.0, "alpha must lie in"),
        ([0.1, 0.2], 1.0, "alpha must lie in"),
    ],
)
def test_bad_input(p: list[float], alpha: float, message: str) -> None:
    with pytest.raises(AugsenseError, match=message):
        benjamini_yekutieli(p, alpha)


def _contrast_results(seed: int) -> dict:
    """Three layers of paired outputs with graded planted shifts; one layer keeps no differences (t-test
    p-values) and has two units whose differences are all zero (zero variance: NaN p)."""
    import torch

    from augsense.estimators.contrast import ContrastAccumulator

    rng = np.random.default_rng(seed)
    results = {}
    for layer, m, keep in (("conv1", 40, True), ("block2", 60, False), ("fc", 25, True)):
        control = torch.from_numpy(rng.normal(size=(60, m)))
        shift = torch.from_numpy(np.where(np.arange(m) < m // 3, rng.uniform(0.1, 0.8, size=m), 0.0))
        treated = control + shift + torch.from_numpy(rng.normal(size=(60, m)))
        if layer == "block2":
            treated[:, :2] = control[:, :2] = 1.5
        acc = ContrastAccumulator(m, keep_differences=keep)
        acc.update(treated, control)
        results[layer] = acc.compute()
    return results


@pytest.mark.parametrize("test, alpha", [("auto", 0.05), ("auto", 0.2), ("t", 0.1)])
def test_contrast_fdr_is_benjamini_yekutieli_over_all_layers(test: str, alpha: float) -> None:
    """The Python-API path (contrast_fdr) against statsmodels on the pooled p-values of every layer."""
    from augsense.estimators.contrast import contrast_fdr

    results = _contrast_results(5)
    table = contrast_fdr(results, alpha=alpha, test=test)
    p = np.concatenate([r.p_wilcoxon if (test == "auto" and r.has_rank_statistics) else r.p_t
                        for r in results.values()])
    np.testing.assert_array_equal(table["p_value"].to_numpy(), p)
    finite = ~np.isnan(p)
    assert finite.sum() == p.size - 2  # the zero-variance units are not tested and not counted in m
    sm_reject, sm_q, _, _ = multipletests(p[finite], alpha=alpha, method="fdr_by")
    q = table["q_value"].to_numpy()
    np.testing.assert_allclose(q[finite], sm_q, rtol=1e-12)
    assert np.isnan(q[~finite]).all() and not table["significant"].to_numpy()[~finite].any()
    np.testing.assert_array_equal(table["significant"].to_numpy()[finite], sm_reject)
    # the case tells BY from BH: BH's q-values and its rejections differ here
    bh_reject, bh_q, _, _ = multipletests(p[finite], alpha=alpha, method="fdr_bh")
    assert not np.allclose(bh_q, sm_q) and bh_reject.sum() > sm_reject.sum() > 0
