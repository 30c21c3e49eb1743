"""The paper's map statistics: per-pixel correlation across channels (mean ± SD) and LDA on (factor, channel) maps."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import RepeatedStratifiedKFold, cross_val_score

from augsense.analyses.map_statistics import paper_discrimination, paper_samples, pixel_correlations
from augsense.errors import AugsenseError

NAMES = ["brightness", "hue", "rotation"]


def test_pixel_correlations_planted_and_against_scipy_per_pixel() -> None:
    """Factor 1 is a monotone function of factor 0 at every pixel (ρ = 1, SD 0); factor 2 agrees with factor 0
    on the left half of the pixels and is reversed on the right half (mean 0, SD = √(P/(P−1)))."""
    rng = np.random.default_rng(0)
    c, h, w = 30, 4, 6
    base = rng.uniform(size=(c, h, w))
    maps = np.empty((c, h, w, 3))
    maps[..., 0] = base
    maps[..., 1] = np.exp(3 * base)
    maps[..., 2] = np.where(np.arange(w) < w // 2, base, -base)
    maps[5] = np.nan  # a dead channel: index 0 as the paper, lowest in every factor's ranks, so ρ is unchanged
    result = pixel_correlations(maps, NAMES)
    assert result.n_channels == 30 and result.n_dropped_channels == 0 and result.n_dead_channels == 1
    assert (pixel_correlations(maps, NAMES, missing="omit").n_channels, result.n_undefined.max()) == (29, 0)
    assert result.rho_mean[0, 1] == pytest.approx(1.0) and result.rho_sd[0, 1] == pytest.approx(0.0, abs=1e-12)
    p = h * w
    assert result.rho_mean[0, 2] == pytest.approx(0.0, abs=1e-12)
    assert result.rho_sd[0, 2] == pytest.approx(np.sqrt(p / (p - 1)))
    noisy = rng.normal(size=(c, h, w, 3))
    result = pixel_correlations(noisy, NAMES)
    per_pixel = np.array([[scipy.stats.spearmanr(noisy[:, i, j, 0], noisy[:, i, j, 2]).statistic
                           for j in range(w)] for i in range(h)]).ravel()
    assert result.rho_mean[0, 2] == pytest.approx(per_pixel.mean(), abs=1e-12)
    assert result.rho_sd[0, 2] == pytest.approx(per_pixel.std(ddof=1), abs=1e-12)
    table = result.to_dataframe()
    assert len(table) == 3 and set(table.columns) >= {"factor_a", "factor_b", "rho_mean", "rho_sd", "n_pixels"}


def test_pixel_correlations_of_channel_maps_is_one_pixel_without_sd() -> None:
    maps = np.random.default_rng(1).uniform(size=(40, 3))
    result = pixel_correlations(maps, NAMES)
    assert result.rho_mean[0, 1] == pytest.approx(scipy.stats.spearmanr(maps[:, 0], maps[:, 1]).statistic)
    assert np.isnan(result.rho_sd[0, 1]) and result.n_pixels[0, 1] == 1


def test_paper_lda_separable_maps_are_perfectly_classified() -> None:
    """Each factor's maps carry a blob at its own position: linearly separable → held-out accuracy 1."""
    rng = np.random.default_rng(2)
    c, h, w = 25, 5, 5
    maps = 0.05 * rng.uniform(size=(c, h, w, 3))
    for j in range(3):
        maps[:, j, j, j] += 1.0 + 0.1 * rng.uniform(size=c)
    result = paper_discrimination(maps, NAMES, n_splits=5, n_repeats=3)
    assert result.accuracy == 1.0 and result.n_samples == 75 and result.n_features == 25
    np.testing.assert_allclose(result.confusion, np.eye(3))
    assert result.chance == pytest.approx(1 / 3)


def test_paper_lda_shuffled_labels_are_at_chance_and_match_sklearn() -> None:
    """Same maps with the factor axis shuffled per channel: nothing to learn, accuracy ≈ 1/3 (binomial band);
    and the accuracy equals scikit-learn's own cross_val_score on the same samples and folds."""
    rng = np.random.default_rng(3)
    c, h, w = 60, 3, 3
    maps = 0.05 * rng.uniform(size=(c, h, w, 3))
    for j in range(3):
        maps[:, j, j, j] += 1.0
    shuffled = np.stack([maps[i][..., rng.permutation(3)] for i in range(c)])
    result = paper_discrimination(shuffled, NAMES, n_splits=5, n_repeats=4, seed=7)
    n = result.n_samples
    assert abs(result.accuracy - 1 / 3) < 3 * np.sqrt((1 / 3) * (2 / 3) / n)
    features, labels, _ = paper_samples(shuffled, NAMES)
    folds = RepeatedStratifiedKFold(n_splits=5, n_repeats=4, random_state=7)
    reference = cross_val_score(LinearDiscriminantAnalysis(solver="svd"), features, labels, cv=folds)
    np.testing.assert_allclose(result.fold_accuracies, reference, rtol=0, atol=1e-12)


def test_paper_lda_sample_layout_and_refusals() -> None:
    maps = np.arange(2 * 2 * 2 * 3, dtype=float).reshape(2, 2, 2, 3)
    features, labels, dropped = paper_samples(maps, NAMES)
    assert features.shape == (6, 4) and list(labels) == [0, 0, 1, 1, 2, 2] and dropped == 0
    np.testing.assert_array_equal(features[3], maps[1, :, :, 1].ravel())  # sample = (factor 1, channel 1)
    with pytest.raises(AugsenseError, match="channels"):
        paper_discrimination(maps, NAMES)  # 2 channels per factor < 5 folds
    with pytest.raises(AugsenseError, match="two factors"):
        paper_discrimination(maps[..., :1], NAMES[:1])


def test_omit_leaves_out_dead_pixels_only_their_channel_at_that_pixel() -> None:
    """missing="omit": a channel dead (NaN) at one pixel drops out of that pixel's correlation only; the LDA
    reads a dead pixel as 0 and leaves out samples dead everywhere."""
    rng = np.random.default_rng(5)
    maps = rng.uniform(size=(12, 2, 2, 3))
    maps[0, 0, 0, :] = np.nan
    maps[1] = np.nan  # dead everywhere
    result = pixel_correlations(maps, NAMES, missing="omit")
    assert result.n_channels == 11 and result.n_dropped_channels == 1
    at_00 = scipy.stats.spearmanr(maps[2:, 0, 0, 0], maps[2:, 0, 0, 1]).statistic
    others = [scipy.stats.spearmanr(np.delete(maps[:, i, j, 0], 1), np.delete(maps[:, i, j, 1], 1)).statistic
              for i, j in ((0, 1), (1, 0), (1, 1))]
    assert result.rho_mean[0, 1] == pytest.approx(np.mean([at_00, *others]), abs=1e-12)
    features, labels, dropped = paper_samples(maps, NAMES, missing="omit")
    assert dropped == 3 and features.shape == (33, 4) and np.isfinite(features).all()
    assert (features[labels == 0][0] == np.r_[0.0, maps[0].reshape(4, 3)[1:, 0]]).all()


def dead_channel_map() -> np.ndarray:
    """(4 channels, 1 × 2 pixels, 2 factors); channel 3 is dead (NaN everywhere).

    Pixel 0: a = [1, 2, 3, ·], b = [3, 1, 2, ·]. Pixel 1: a = [0, 0, 0, ·] (only b moves the units there),
    b = [1, 2, 3, ·]."""
    maps = np.full((4, 1, 2, 2), np.nan)
    maps[:3, 0, 0, 0], maps[:3, 0, 0, 1] = [1, 2, 3], [3, 1, 2]
    maps[:3, 0, 1, 0], maps[:3, 0, 1, 1] = [0, 0, 0], [1, 2, 3]
    return maps


def test_paper_pixel_correlation_counts_a_dead_channel_as_zero_and_an_undefined_rho_as_zero() -> None:
    """By hand, as the reference code (NaN index → 0 by its safe division; custom_spearmanr: ρ NaN → 0):
    pixel 0: a = [1, 2, 3, 0] → ranks [2, 3, 4, 1], b = [3, 1, 2, 0] → [4, 2, 3, 1]; Σd² = 6, ρ = 1 − 36/60 = 0.4.
    Pixel 1: a = [0, 0, 0, 0] is constant → ρ undefined → 0. Mean 0.2, SD (ddof 1) 0.4/√2, over 2 pixels."""
    result = pixel_correlations(dead_channel_map(), NAMES[:2])
    assert result.rho_mean[0, 1] == pytest.approx(0.2, abs=1e-12)
    assert result.rho_sd[0, 1] == pytest.approx(0.4 / np.sqrt(2), abs=1e-12)
    assert (result.n_pixels[0, 1], result.n_undefined[0, 1], result.n_channels, result.n_dead_channels) == (2, 1, 4, 1)
    row = result.to_dataframe().iloc[0]
    assert (row.n_pixels, row.n_undefined, row.missing) == (2, 1, "paper")
    # "omit": pixel 0 over the 3 live channels, ranks [1, 2, 3] vs [3, 1, 2], ρ = 1 − 36/24 = −0.5; pixel 1 left out
    omitted = pixel_correlations(dead_channel_map(), NAMES[:2], missing="omit")
    assert omitted.rho_mean[0, 1] == pytest.approx(-0.5, abs=1e-12) and np.isnan(omitted.rho_sd[0, 1])
    assert (omitted.n_pixels[0, 1], omitted.n_undefined[0, 1], omitted.n_channels) == (1, 1, 3)
    with pytest.raises(AugsenseError, match="missing"):
        pixel_correlations(dead_channel_map(), NAMES[:2], missing="zero")


def test_paper_lda_keeps_a_dead_channel_as_zero_samples() -> None:
    """The paper's X[var, unit, pixels] has no NaN (a dead unit's index is 0): the dead channel gives one all-zero
    sample per factor, kept; "omit" leaves them out."""
    features, labels, dropped = paper_samples(dead_channel_map(), NAMES[:2])
    assert features.shape == (8, 2) and dropped == 0 and list(labels) == [0, 0, 0, 0, 1, 1, 1, 1]
    np.testing.assert_array_equal(features[[3, 7]], np.zeros((2, 2)))
    np.testing.assert_array_equal(features[[0, 4]], [[1.0, 0.0], [3.0, 1.0]])
    features, labels, dropped = paper_samples(dead_channel_map(), NAMES[:2], missing="omit")
    assert features.shape == (6, 2) and dropped == 2
    rng = np.random.default_rng(6)
    maps = rng.uniform(size=(10, 2, 2, 3))
    maps[4] = np.nan
    result = paper_discrimination(maps, NAMES, n_splits=5, n_repeats=2)
    assert (result.n_samples, result.n_dropped_samples) == (30, 0)
    assert paper_discrimination(maps, NAMES, n_splits=3, n_repeats=2, missing="omit").n_samples == 27


def test_maps_command_paper_missing_option(tmp_path) -> None:
    """`augsense maps --paper-missing omit` writes the omitting variant; the default is the paper's."""
    import json

    import pandas as pd

    from augsense.cli import main

    rng = np.random.default_rng(8)
    maps = rng.uniform(size=(10, 2, 2, 3))
    maps[3] = np.nan
    for name, extra in (("paper", []), ("omit", ["--paper-missing", "omit"])):
        run = tmp_path / name
        run.mkdir()
        info = {"players": NAMES, "layers": {"L": {"unit_shape": [10, 2, 2], "units": 40}}}
        (run / "run.json").write_text(json.dumps(info))
        np.savez(run / "maps.npz", **{"L/total_order": maps})
        assert main(["maps", str(run), "--paper-repeats", "1", "--folds", "3", *extra]) == 0
        pixel = pd.read_parquet(run / "map_pixel_correlations.parquet")
        lda = pd.read_parquet(run / "map_lda_paper.parquet")
        assert set(pixel["missing"]) == {name}
        assert (pixel["n_channels"].iloc[0], lda["n_samples"].iloc[0]) == ((10, 30) if name == "paper" else (9, 27))
