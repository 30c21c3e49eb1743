"""Treatment–control contrast: rank statistics vs scipy, moments, merging, persistence, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch

from augsense.errors import AugsenseError
from augsense.estimators.contrast import (
    ContrastAccumulator,
    contrast_fdr,
    signed_rank_test,
)


def _differences_with_zeros_and_ties(seed: int, n: int = 40, m: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    d = np.round(rng.normal(0.3, 1.0, size=(n, m)), 1)  # rounding makes many ties
    d[rng.uniform(size=d.shape) < 0.15] = 0.0  # zeros, tied among themselves
    d[:, 0] = 0.0  # an all-zero column
    d[:, 1] = np.abs(d[:, 1]) + 0.1  # all positive
    d[:5, 2] = 0.0
    d[5:, 2] = -1.0  # zeros plus one big tie
    return d


def _direct_kerby(d: np.ndarray) -> float:
    """Rank-biserial correlation from scipy ranks of |d|, zeros split between both sides."""
    ranks = scipy.stats.rankdata(np.abs(d))
    r_plus = ranks[d > 0].sum() + ranks[d == 0].sum() / 2
    r_minus = ranks[d < 0].sum() + ranks[d == 0].sum() / 2
    return (r_plus - r_minus) / (r_plus + r_minus)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_signed_rank_matches_scipy_and_direct_computation(seed: int) -> None:
    d = _differences_with_zeros_and_ties(seed)
    result = signed_rank_test(d)
    for j in range(d.shape[1]):
        reference = scipy.stats.wilcoxon(d[:, j], zero_method="zsplit", method="asymptotic")
        assert result.statistic[j] == pytest.approx(reference.statistic, abs=1e-9)
        assert result.p_value[j] == pytest.approx(reference.pvalue, rel=1e-10, abs=1e-300)
        assert abs(result.z[j]) == pytest.approx(abs(reference.zstatistic), rel=1e-10)
        assert result.rank_biserial[j] == pytest.approx(_direct_kerby(d[:, j]), abs=1e-12)
    assert result.rank_biserial[0] == 0.0 and result.p_value[0] == 1.0  # all zero: no evidence
    assert result.rank_biserial[1] == 1.0  # all positive
    assert np.all(np.sign(result.z[1:]) == np.sign(result.rank_biserial[1:]))


def test_accumulator_matches_moments_and_scipy() -> None:
    rng = np.random.default_rng(5)
    n_images, draws, m = 30, 4, 9
    clean = rng.normal(size=(n_images, m))
    control = np.repeat(clean, draws, axis=0)
    treated = control + rng.normal(0.0, 1.0, size=control.shape) + np.linspace(-0.5, 0.5, m)
    treated = np.round(treated, 2)  # ties in the differences
    treated[:7, 3] = control[:7, 3]  # some exact zero differences
    accumulator = ContrastAccumulator(m)
    for chunk in np.array_split(np.arange(len(control)), 7):
        accumulator.update(torch.from_numpy(treated[chunk]), torch.from_numpy(control[chunk]))
    result = accumulator.compute()
    d = accumulator.differences().double().numpy()
    np.testing.assert_allclose(d, (treated - control).astype(np.float32))
    exact = treated - control
    np.testing.assert_allclose(result.mean_difference, exact.mean(axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(result.sd, exact.std(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(result.mean_control, control.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(result.mean_treated, treated.mean(axis=0), rtol=1e-12)
    t_ref = scipy.stats.ttest_rel(treated, control, axis=0)
    np.testing.assert_allclose(result.t, t_ref.statistic, rtol=1e-10)
    np.testing.assert_allclose(result.p_t, t_ref.pvalue, rtol=1e-8)
    np.testing.assert_allclose(result.effect_size, result.t / np.sqrt(len(control)), rtol=1e-12)
    assert np.all(result.effect_size_ci_low < result.effect_size)
    assert np.all(result.effect_size < result.effect_size_ci_high)
    w_ref = scipy.stats.wilcoxon(d, zero_method="zsplit", method="asymptotic", axis=0)
    np.testing.assert_allclose(result.wilcoxon_statistic, w_ref.statistic, rtol=1e-12)
    np.testing.assert_allclose(result.p_wilcoxon, w_ref.pvalue, rtol=1e-9)


def test_effect_size_interval_covers_the_truth() -> None:
    """d_z CI at 90 %: coverage over 400 outputs with true d_z = 0.5 must be near 0.9."""
    rng = np.random.default_rng(11)
    m, n = 400, 60
    control = torch.from_numpy(rng.normal(size=(n, m)))
    treated = control + torch.from_numpy(rng.normal(0.5, 1.0, size=(n, m)))
    accumulator = ContrastAccumulator(m, keep_differences=False)
    accumulator.update(treated, control)
    result = accumulator.compute(confidence=0.9)
    coverage = np.mean((result.effect_size_ci_low <= 0.5) & (0.5 <= result.effect_size_ci_high))
    assert 0.85 <= coverage <= 0.95  # binomial sd of the coverage is 0.015
    assert not result.has_rank_statistics and np.isnan(result.p_wilcoxon).all()


def _random_pairs(seed: int, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    control = torch.from_numpy(rng.normal(3.0, 1.0, size=(n, m))).float()
    treated = control + torch.from_numpy(rng.normal(0.2, 0.5, size=(n, m))).float()
    return treated, control


@pytest.mark.parametrize("n_parts", [2, 3])
@pytest.mark.parametrize("keep", [True, False])
def test_merge_equals_single_pass(n_parts: int, keep: bool) -> None:
    treated, control = _random_pairs(3, 50, 6)
    whole = ContrastAccumulator(6, keep_differences=keep)
    whole.update(treated, control)
    parts = []
    for chunk in torch.tensor_split(torch.arange(50), n_parts):
        part = ContrastAccumulator(6, keep_differences=keep)
        part.update(treated[chunk], control[chunk])
        parts.append(part)
    merged = parts[0]
    for part in parts[1:]:
        merged.merge(part)
    merged.merge(ContrastAccumulator(6, keep_differences=keep))  # empty shard is a no-op
    a, b = whole.compute(), merged.compute()
    assert a.n_pairs == b.n_pairs == 50
    for name in ("mean_difference", "sd", "t", "p_t", "mean_control", "p_wilcoxon", "rank_biserial"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-10, equal_nan=True)


def test_state_dict_round_trip(tmp_path) -> None:
    treated, control = _random_pairs(4, 20, 5)
    accumulator = ContrastAccumulator(5)
    accumulator.update(treated[:12], control[:12])
    path = tmp_path / "contrast.pt"
    torch.save(accumulator.state_dict(), path)
    restored = ContrastAccumulator(5)
    restored.load_state_dict(torch.load(path))
    for acc in (accumulator, restored):
        acc.update(treated[12:], control[12:])
    pd_a, pd_b = accumulator.compute().to_dataframe(), restored.compute().to_dataframe()
    assert pd_a.equals(pd_b)
    with pytest.raises(AugsenseError, match="Construct it with the saved settings"):
        ContrastAccumulator(4).load_state_dict(accumulator.state_dict())


def test_zero_variance_outputs_are_nan_and_flagged() -> None:
    control = torch.zeros(10, 3)
    treated = control.clone()
    treated[:, 1] = 2.0  # constant shift: no spread
    treated[:, 2] = torch.arange(10.0)
    accumulator = ContrastAccumulator(3)
    accumulator.update(treated, control)
    result = accumulator.compute()
    assert result.zero_variance.tolist() == [True, True, False]
    assert np.isnan(result.effect_size[:2]).all() and np.isnan(result.p_t[:2]).all()
    assert np.isfinite(result.t[2])
    assert result.rank_biserial[1] == 1.0 and result.p_wilcoxon[1] < 0.01


def test_fdr_table_across_layers_flags_planted_outputs() -> None:
    rng = np.random.default_rng(8)
    results = {}
    for layer, m in (("features.2", 30), ("classifier.1", 50)):
        control = torch.from_numpy(rng.normal(size=(80, m)))
        shift = torch.zeros(m)
        shift[:3] = 1.0  # three planted outputs per layer
        treated = control + shift + torch.from_numpy(rng.normal(size=(80, m)))
        acc = ContrastAccumulator(m, keep_differences=layer == "features.2")
        acc.update(treated, control)
        results[layer] = acc.compute()
    table = contrast_fdr(results, alpha=0.05)
    assert len(table) == 80
    assert set(table.loc[table["layer"] == "features.2", "test"]) == {"wilcoxon"}
    assert set(table.loc[table["layer"] == "classifier.1", "test"]) == {"t"}
    flagged = set(map(tuple, table.loc[table["significant"], ["layer", "unit"]].to_numpy()))
    assert flagged == {(layer, u) for layer in results for u in range(3)}
    with pytest.raises(AugsenseError, match="kept no paired differences"):
        contrast_fdr(results, test="wilcoxon")


def test_bounded_memory_refuses_too_many_pairs() -> None:
    treated, control = _random_pairs(0, 10, 4)
    accumulator = ContrastAccumulator(4, max_pairs=15)
    accumulator.update(treated, control)
    with pytest.raises(AugsenseError, match="keep_differences=False"):
        accumulator.update(treated, control)
    moments_only = ContrastAccumulator(4, keep_differences=False, max_pairs=15)
    moments_only.update(treated, control)
    moments_only.update(treated, control)
    assert moments_only.compute().n_pairs == 20


def test_bad_input() -> None:
    accumulator = ContrastAccumulator(4)
    with pytest.raises(AugsenseError, match=r"shape \(n, 4\)"):
        accumulator.update(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(AugsenseError, match=r"shape \(n, 4\)"):
        accumulator.update(torch.zeros(3, 5), torch.zeros(3, 5))
    bad = torch.zeros(3, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(AugsenseError, match="NaN or inf"):
        accumulator.update(bad, torch.zeros(3, 4))
    with pytest.raises(AugsenseError, match="call update"):
        accumulator.compute()
    with pytest.raises(AugsenseError, match="different settings"):
        accumulator.merge(ContrastAccumulator(4, keep_differences=False))
    with pytest.raises(AugsenseError, match="positive integer"):
        ContrastAccumulator(0)
    with pytest.raises(AugsenseError, match="n_pairs"):
        signed_rank_test(np.zeros((0, 3)))
    with pytest.raises(AugsenseError, match="one name per output"):
        accumulator.update(torch.ones(3, 4), torch.zeros(3, 4))
        accumulator.compute().to_dataframe(["a"])


def _paper_point_biserial(clean: np.ndarray, treated: np.ndarray) -> np.ndarray:
    """The reference code's formula (compute_point_biserial_corrcoef), written out: groups clean / treated."""
    n0, n1 = len(clean), len(treated)
    m0, m1 = clean.mean(0), treated.mean(0)
    p0, p1 = n0 / (n0 + n1), n1 / (n0 + n1)
    pooled_mean = p0 * m0 + p1 * m1
    s = np.sqrt((((clean - pooled_mean) ** 2).sum(0) + ((treated - pooled_mean) ** 2).sum(0)) / (n0 + n1))
    return (m1 - m0) * np.sqrt(p0 * p1) / s


@pytest.mark.parametrize("draws", [1, 3])
def test_point_biserial_matches_scipy_and_the_paper_formula_across_merges(draws: int) -> None:
    rng = np.random.default_rng(11)
    n_images, m = 25, 6
    clean = rng.normal(size=(n_images, m)) * np.linspace(0.5, 2.0, m)
    control = np.repeat(clean, draws, axis=0)
    treated = control + rng.normal(np.linspace(-1.0, 1.0, m), 1.0, size=control.shape)
    accumulator, other = ContrastAccumulator(m, keep_differences=False), ContrastAccumulator(m, keep_differences=False)
    cut = 7  # not a multiple of draws: the merge must not care
    accumulator.update(torch.from_numpy(treated[:cut]), torch.from_numpy(control[:cut]))
    other.update(torch.from_numpy(treated[cut:]), torch.from_numpy(control[cut:]))
    result = accumulator.merge(other).compute(0.9, control_repeats=draws)
    groups = np.r_[np.zeros(n_images), np.ones(n_images * draws)]
    paper = _paper_point_biserial(clean, treated)
    for j in range(m):
        reference = scipy.stats.pointbiserialr(groups, np.r_[clean[:, j], treated[:, j]])
        assert result.point_biserial[j] == pytest.approx(reference.statistic, abs=1e-12)
        assert result.point_biserial[j] == pytest.approx(paper[j], abs=1e-12)
        half = scipy.stats.norm.ppf(0.95) / np.sqrt(len(groups) - 3)
        assert result.point_biserial_ci_low[j] == pytest.approx(np.tanh(np.arctanh(reference.statistic) - half))
        assert result.point_biserial_ci_high[j] == pytest.approx(np.tanh(np.arctanh(reference.statistic) + half))
    assert result.to_dataframe()["point_biserial"].notna().all()


def test_point_biserial_planted_extremes_and_bad_repeats() -> None:
    """Separated groups give r = ±1 exactly; equal groups 0; no spread at all NaN."""
    n = 12
    control = torch.zeros(n, 4, dtype=torch.float64)
    treated = torch.zeros(n, 4, dtype=torch.float64)
    treated[:, 0] = 1.0  # every treated output above every (equal) control output
    treated[:, 1] = -2.0
    control[:, 2] = torch.arange(n, dtype=torch.float64)  # same values in both groups
    treated[:, 2] = torch.arange(n, dtype=torch.float64)
    accumulator = ContrastAccumulator(4, keep_differences=False)
    accumulator.update(treated, control)
    result = accumulator.compute()
    assert result.point_biserial[0] == pytest.approx(1.0) and result.point_biserial[1] == pytest.approx(-1.0)
    assert result.point_biserial[2] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(result.point_biserial[3])
    with pytest.raises(AugsenseError, match="control_repeats"):
        accumulator.compute(control_repeats=5)  # 12 pairs are not 5 draws per image


def test_point_biserial_survives_a_state_round_trip() -> None:
    rng = np.random.default_rng(3)
    treated, control = torch.from_numpy(rng.normal(1, 1, (20, 3))), torch.from_numpy(rng.normal(0, 1, (20, 3)))
    accumulator = ContrastAccumulator(3)
    accumulator.update(treated, control)
    restored = ContrastAccumulator(3)
    restored.load_state_dict(accumulator.state_dict())
    np.testing.assert_allclose(restored.compute().point_biserial, accumulator.compute().point_biserial)
