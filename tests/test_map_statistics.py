"""Map statistics: Spearman correlations (vs scipy) and LDA on planted versus pure-noise maps."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from augsense.analyses.map_statistics import factor_discrimination, map_correlations
from augsense.errors import AugsenseError

FACTORS = ["erasing", "rolling", "grayscale", "gaussian_blur"]


def _planted_channel_maps(rng: np.random.Generator, units: int = 200, noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Each unit is dominated by one factor: index ≈ 0.6 for it, ≈ 0.1 for the others."""
    truth = np.arange(units) % len(FACTORS)
    maps = 0.1 + noise * rng.uniform(size=(units, len(FACTORS)))
    maps[np.arange(units), truth] += 0.5
    return maps, truth


def test_correlations_match_scipy_and_drop_dead_units() -> None:
    rng = np.random.default_rng(0)
    maps = rng.uniform(size=(120, 4))
    maps[:, 1] = maps[:, 0] + 0.2 * rng.uniform(size=120)  # correlated pair
    cv = 2.0 * maps[:, 2] + 0.1 * rng.uniform(size=120)
    maps[7] = np.nan  # dead unit
    result = map_correlations(maps, FACTORS, cv=cv)
    alive = np.delete(np.arange(120), 7)
    reference = scipy.stats.spearmanr(maps[alive])
    np.testing.assert_allclose(result.rho, reference.statistic, rtol=1e-12)
    np.testing.assert_allclose(result.p_value, reference.pvalue, rtol=1e-10)
    assert result.n_units == 119 and result.n_dropped_units == 1
    assert result.rho[0, 1] > 0.8 and abs(result.rho[0, 3]) < 0.3
    for j in range(4):
        rho, p = scipy.stats.spearmanr(maps[alive, j], cv[alive])
        assert result.cv_rho[j] == pytest.approx(rho) and result.cv_p_value[j] == pytest.approx(p)
    table = result.to_dataframe()
    assert set(table["scope"]) == {"units", "cv"} and len(table) == 6 + 4


def test_pixelwise_correlation_per_channel_then_averaged() -> None:
    rng = np.random.default_rng(1)
    maps = rng.uniform(size=(6, 5, 5, 2))
    maps[..., 1] = maps[..., 0] ** 3  # monotone within every channel: pixel-wise rho = 1
    maps[3, 0, 0, :] = np.nan  # a channel with a dead position is left out
    result = map_correlations(maps, ["hue", "saturation"])
    assert result.pixelwise_rho[0, 1] == pytest.approx(1.0)
    assert result.pixelwise_n_channels == 5
    expected = np.mean([scipy.stats.spearmanr(maps[c].reshape(-1, 2)).statistic for c in (0, 1, 2, 4, 5)])
    assert result.pixelwise_rho[0, 1] == pytest.approx(expected)
    noisy = rng.uniform(size=(8, 6, 6, 2))
    noisy_result = map_correlations(noisy, ["hue", "saturation"])
    direct = np.mean([scipy.stats.spearmanr(noisy[c].reshape(-1, 2)).statistic for c in range(8)])
    assert noisy_result.pixelwise_rho[0, 1] == pytest.approx(direct, abs=1e-12)
    assert "pixelwise" in set(noisy_result.to_dataframe()["scope"])


def test_lda_separates_planted_channel_maps() -> None:
    rng = np.random.default_rng(2)
    maps, truth = _planted_channel_maps(rng)
    replicate, _ = _planted_channel_maps(rng)  # independent estimate of the same planted layer
    result = factor_discrimination(maps, FACTORS, label_maps=replicate, n_repeats=3)
    assert result.accuracy > 0.95
    assert result.chance == pytest.approx(0.25)
    assert np.trace(result.confusion) / result.confusion.sum() > 0.95
    assert result.confusion.sum() == 200 * 3
    assert result.projection.shape == (200, 2)
    by_truth = factor_discrimination(maps, FACTORS, labels=[FACTORS[t] for t in truth], n_repeats=2)
    assert by_truth.accuracy > 0.95
    frame = by_truth.projection_dataframe()
    assert list(frame.columns) == ["ld1", "ld2", "factor"]
    assert by_truth.confusion_dataframe().to_numpy().sum(axis=1) == pytest.approx(np.ones(4))


def test_lda_on_pure_noise_is_at_chance() -> None:
    """Independent noise for features and labels: accuracy within ±0.08 of chance (0.25).

    300 samples give a binomial SD of 0.025 for one 5-fold pass; 10 repeats average some of it.
    """
    rng = np.random.default_rng(3)
    accuracies = []
    for _ in range(3):
        maps = rng.uniform(size=(300, 4))
        label_maps = rng.uniform(size=(300, 4))
        result = factor_discrimination(maps, FACTORS, label_maps=label_maps)
        assert abs(result.chance - 0.25) < 0.1
        accuracies.append(result.accuracy)
    assert abs(np.mean(accuracies) - 0.25) < 0.08


def test_circular_labels_would_beat_chance_on_noise() -> None:
    """Why labels must be independent: argmax of the same noise map is learnable."""
    rng = np.random.default_rng(4)
    maps = rng.uniform(size=(300, 4))
    circular = factor_discrimination(maps, FACTORS, label_maps=maps, n_repeats=2)
    assert circular.accuracy > 0.5


def test_lda_on_per_unit_maps_uses_channels_as_samples() -> None:
    rng = np.random.default_rng(5)
    channels, size = 60, 6
    truth = np.arange(channels) % 3
    pattern = rng.uniform(size=(3, size, size))  # each factor's spatial footprint
    maps = 0.05 * rng.uniform(size=(channels, size, size, 3))
    for c in range(channels):
        maps[c, :, :, truth[c]] += pattern[truth[c]]
    result = factor_discrimination(maps, FACTORS[:3], labels=truth.tolist(), n_repeats=2)
    assert result.accuracy > 0.95
    assert result.projection.shape == (channels, 2)
    noise = rng.uniform(size=(channels, size, size, 3))
    at_chance = factor_discrimination(noise, FACTORS[:3], labels=truth.tolist(), n_repeats=5)
    assert abs(at_chance.accuracy - 1 / 3) < 0.15


def test_rare_factors_are_dropped_and_listed() -> None:
    rng = np.random.default_rng(6)
    labels = ["erasing"] * 30 + ["rolling"] * 30 + ["grayscale"] * 2
    result = factor_discrimination(rng.uniform(size=(62, 4)), FACTORS, labels=labels, n_repeats=1)
    assert result.classes == ["erasing", "rolling"] and result.dropped_factors == ["grayscale"]
    assert result.to_dataframe().loc[0, "n_samples"] == 60


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: map_correlations(np.ones((5, 3)), FACTORS), "4 factor names"),
        (lambda: map_correlations(np.ones((5, 2, 4)), FACTORS), r"shape \(units, n_factors\)"),
        (lambda: map_correlations(np.ones((0, 4)), FACTORS), "empty"),
        (lambda: map_correlations(np.full((5, 4), np.inf), FACTORS), "inf"),
        (lambda: map_correlations(np.full((5, 4), np.nan), FACTORS), "at least 3"),
        (lambda: map_correlations(np.ones((5, 4)), FACTORS, cv=np.ones(4)), "cv must have"),
        (lambda: map_correlations(np.ones((5, 2)), ["a", "a"]), "distinct"),
        (lambda: factor_discrimination(np.ones((20, 4)), FACTORS), "circular"),
        (lambda: factor_discrimination(np.ones((20, 4)), FACTORS, labels=["erasing"] * 19), "one per unit"),
        (lambda: factor_discrimination(np.ones((20, 4)), FACTORS, labels=["nope"] * 20), "factor names"),
        (lambda: factor_discrimination(np.ones((20, 4)), FACTORS, labels=["erasing"] * 20), "at least two factors"),
        (lambda: factor_discrimination(np.ones((20, 4)), FACTORS, label_maps=np.ones((19, 4))), "label_maps must have"),
    ],
)
def test_bad_input(call, message: str) -> None:
    with pytest.raises(AugsenseError, match=message):
        call()
