"""Statistics of one layer's sensitivity maps: how factors' maps relate, and whether they separate.

Input is a map of one index (S1, ST or Shapley) for d factors: per-channel maps ``(units, d)`` or
per-unit maps ``(C, H, W, d)``. NaN marks dead units; they are left out and counted.

* :func:`map_correlations` — Spearman (1904) rank correlation between factors' maps across the
  units of the layer, with p-values (``scipy.stats.spearmanr``); for per-unit maps also the
  *pixel-wise* correlation (per channel, across its H·W positions) averaged over channels; and the
  correlation of every factor's map with the units' coefficient of variation.
* :func:`factor_discrimination` — linear discriminant analysis (Fisher 1936; scikit-learn) that
  predicts a unit's factor from the unit's map, with repeated stratified k-fold accuracy, the chance
  level, a confusion matrix and a 2-D projection. **Samples** are units (channels for per-unit
  maps); **features** are the unit's whole map (d values, or H·W·d for per-unit maps); the
  **label** is the unit's factor *from an independent source*: either given (``labels``) or the
  dominant factor of an independent estimate of the map (``label_maps``: another replicate, the
  other half of the images). Labelling a unit by the argmax of the very map LDA sees would be
  circular: LDA would learn the argmax and beat chance even on pure noise. With the independent
  label, accuracy above chance means a unit's factor preference is reproducible and linearly
  readable from its map. Wide per-unit features are first reduced by PCA fitted inside every
  training fold (PCA + LDA, Belhumeur, Hespanha & Kriegman 1997).

The paper's own definitions, kept beside these (they answer other questions):

* :func:`pixel_correlations` — at every pixel, Spearman between factors across the layer's
  channels; mean and SD over pixels (``compute_unitwise_correlation`` of the reference code).
* :func:`paper_discrimination` — LDA whose samples are (factor, channel) maps (features: the
  channel's H·W pixels) labelled by the factor, 5 × 100 repeated stratified folds: are the factors'
  maps of a layer linearly distinguishable? The label is the map's own factor, not a unit's
  preference, so no replicate is needed.

Missing values differ on purpose: augsense's own statistics leave dead units (NaN) out, while the
paper variants, by default (``missing="paper"``), treat them as the reference code does: its safe
division gives a dead unit index 0, and an undefined per-pixel ρ counts as 0 (``missing="omit"``
leaves them out instead).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.stats
from numpy.typing import ArrayLike, NDArray
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.model_selection import RepeatedStratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from augsense.errors import AugsenseError

__all__ = [
    "FactorDiscrimination",
    "MapCorrelations",
    "PaperDiscrimination",
    "PixelCorrelations",
    "factor_discrimination",
    "map_correlations",
    "paper_discrimination",
    "paper_samples",
    "pixel_correlations",
]

FloatArray = NDArray[np.float64]


def _validated_maps(maps: ArrayLike, factor_names: Sequence[str], name: str = "maps") -> FloatArray:
    array = np.asarray(maps, dtype=np.float64)
    if array.ndim not in (2, 4):
        raise AugsenseError(
            f"{name} must have shape (units, n_factors) or (C, H, W, n_factors), got {array.shape}."
        )
    if array.shape[-1] != len(factor_names):
        raise AugsenseError(
            f"{name} has {array.shape[-1]} factors on its last axis but {len(factor_names)} factor "
            f"names were given ({list(factor_names)})."
        )
    if len(set(factor_names)) != len(factor_names):
        raise AugsenseError(f"factor names must be distinct, got {list(factor_names)}.")
    if array.size == 0:
        raise AugsenseError(f"{name} is empty; it needs at least one unit and one factor.")
    if np.isinf(array).any():
        raise AugsenseError(f"{name} contains ±inf; mark dead units with NaN instead.")
    return array


@dataclass(frozen=True)
class MapCorrelations:
    """Spearman correlations between factors' maps of one layer.

    ``rho`` and ``p_value`` are (d, d) across units; ``pixelwise_rho`` is (d, d), the mean over
    channels of the correlation across each channel's positions (per-unit maps only, else None);
    ``cv_rho`` / ``cv_p_value`` are (d,) correlations of each map with the coefficient of variation
    (None without ``cv``).
    """

    factor_names: list[str]
    n_units: int
    n_dropped_units: int
    rho: FloatArray
    p_value: FloatArray
    pixelwise_rho: FloatArray | None = None
    pixelwise_n_channels: int = 0
    cv_rho: FloatArray | None = None
    cv_p_value: FloatArray | None = None

    def to_dataframe(self) -> pd.DataFrame:
        """Long table: ``scope`` (units / pixelwise / cv), ``factor_a``, ``factor_b``, ``rho``, ``p_value``."""
        rows = []
        d = len(self.factor_names)
        for a in range(d):
            for b in range(a + 1, d):
                names = (self.factor_names[a], self.factor_names[b])
                rows.append(("units", *names, self.rho[a, b], self.p_value[a, b], self.n_units))
                if self.pixelwise_rho is not None:
                    rows.append(("pixelwise", *names, self.pixelwise_rho[a, b], np.nan, self.pixelwise_n_channels))
        if self.cv_rho is not None and self.cv_p_value is not None:
            for a in range(d):
                rows.append(("cv", self.factor_names[a], "cv", self.cv_rho[a], self.cv_p_value[a], self.n_units))
        return pd.DataFrame(rows, columns=["scope", "factor_a", "factor_b", "rho", "p_value", "n"])


def _spearman_matrix(columns: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(n, q) → (q, q) Spearman rho and two-sided p-values; constant columns give NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant columns: NaN is the honest answer
        result = scipy.stats.spearmanr(columns, axis=0)
    rho = np.atleast_2d(np.asarray(result.statistic, dtype=np.float64))
    p = np.atleast_2d(np.asarray(result.pvalue, dtype=np.float64))
    if rho.shape == (1, 1):  # scipy returns a scalar for two columns
        rho = np.array([[1.0, rho[0, 0]], [rho[0, 0], 1.0]])
        p = np.array([[0.0, p[0, 0]], [p[0, 0], 0.0]])
    return rho, p


def _pixelwise_rho(maps: FloatArray) -> tuple[FloatArray, int]:
    """Per channel, Spearman between factors across positions; mean over channels. (C,H,W,d) → (d,d)."""
    channels = maps.reshape(maps.shape[0], -1, maps.shape[-1])  # (C, P, d)
    finite = np.isfinite(channels).all(axis=(1, 2))
    channels = channels[finite]
    if channels.shape[0] == 0 or channels.shape[1] < 3:
        return np.full((maps.shape[-1],) * 2, np.nan), 0
    ranks = scipy.stats.rankdata(channels, axis=1)
    centred = ranks - ranks.mean(axis=1, keepdims=True)
    norms = np.sqrt((centred**2).sum(axis=1))  # (C, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = centred / norms[:, None, :]
        per_channel = np.einsum("cpa,cpb->cab", unit, unit)  # (C, d, d); NaN for constant maps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_channel, axis=0), int(channels.shape[0])


def map_correlations(
    maps: ArrayLike, factor_names: Sequence[str], *, cv: ArrayLike | None = None
) -> MapCorrelations:
    """Spearman correlations between factors' maps of one layer, and with the CV.

    Args:
        maps: (units, d) per-channel maps or (C, H, W, d) per-unit maps; NaN for dead units.
        factor_names: the d factor names.
        cv: optional coefficient of variation per unit, shape (units,) or (C, H, W).

    Returns:
        :class:`MapCorrelations`. Units with any NaN (in maps or cv) are left out of the across-unit
        correlations; channels with any NaN are left out of the pixel-wise average.
    """
    names = list(factor_names)
    array = _validated_maps(maps, names)
    if len(names) < 2 and cv is None:
        raise AugsenseError("correlations need at least two factors (or a cv to correlate with).")
    units = array.reshape(-1, array.shape[-1])
    columns = units
    if cv is not None:
        cv_array = np.asarray(cv, dtype=np.float64)
        if cv_array.shape != array.shape[:-1]:
            raise AugsenseError(
                f"cv must have the map's unit shape {array.shape[:-1]}, got {cv_array.shape}."
            )
        columns = np.column_stack([units, cv_array.reshape(-1)])
    keep = np.isfinite(columns).all(axis=1)
    if keep.sum() < 3:
        raise AugsenseError(
            f"only {int(keep.sum())} units have finite values everywhere; correlations need at least 3."
        )
    rho, p = _spearman_matrix(columns[keep])
    d = len(names)
    pixelwise, n_channels = (None, 0) if array.ndim == 2 else _pixelwise_rho(array)
    return MapCorrelations(
        factor_names=names,
        n_units=int(keep.sum()),
        n_dropped_units=int((~keep).sum()),
        rho=rho[:d, :d],
        p_value=p[:d, :d],
        pixelwise_rho=pixelwise,
        pixelwise_n_channels=n_channels,
        cv_rho=rho[:d, d] if cv is not None else None,
        cv_p_value=p[:d, d] if cv is not None else None,
    )


class FoldAccuracies:
    """Mean and SD of a cross-validation's held-out accuracies (``fold_accuracies``, one per fold)."""

    fold_accuracies: FloatArray

    @property
    def accuracy(self) -> float:
        return float(self.fold_accuracies.mean())

    @property
    def accuracy_sd(self) -> float:
        return float(self.fold_accuracies.std(ddof=1)) if self.fold_accuracies.size > 1 else float("nan")


@dataclass(frozen=True)
class FactorDiscrimination(FoldAccuracies):
    """Cross-validated LDA predicting a unit's factor from its map.

    ``fold_accuracies`` has n_repeats·n_splits entries; ``confusion`` (n_classes, n_classes) counts
    test predictions summed over repeats (rows: true factor, columns: predicted); ``projection``
    (n_samples, ≤ 2) is the LDA transform of all samples fitted on all of them, for plotting;
    ``chance`` is the accuracy of always guessing the most frequent factor.
    """

    classes: list[str]
    labels: list[str]
    fold_accuracies: FloatArray
    chance: float
    confusion: NDArray[np.int64]
    projection: FloatArray
    n_splits: int
    n_repeats: int
    dropped_factors: list[str] = field(default_factory=list)

    def to_dataframe(self) -> pd.DataFrame:
        """One summary row: accuracy mean and SD, chance, samples, classes, folds."""
        return pd.DataFrame(
            [
                {
                    "accuracy": self.accuracy,
                    "accuracy_sd": self.accuracy_sd,
                    "chance": self.chance,
                    "n_samples": len(self.labels),
                    "n_classes": len(self.classes),
                    "n_splits": self.n_splits,
                    "n_repeats": self.n_repeats,
                    "dropped_factors": ",".join(self.dropped_factors),
                }
            ]
        )

    def confusion_dataframe(self, normalize: bool = True) -> pd.DataFrame:
        """Confusion matrix with factor names; rows sum to 1 when ``normalize``."""
        matrix = self.confusion.astype(np.float64)
        if normalize:
            matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1.0)
        return pd.DataFrame(matrix, index=pd.Index(self.classes, name="true"), columns=pd.Index(self.classes, name="predicted"))

    def projection_dataframe(self) -> pd.DataFrame:
        """Columns ``ld1``, ``ld2`` (if two discriminants exist) and ``factor``."""
        table = pd.DataFrame(self.projection, columns=[f"ld{i + 1}" for i in range(self.projection.shape[1])])
        table["factor"] = self.labels
        return table


def _unit_features(maps: FloatArray) -> FloatArray:
    """(units, d) → itself; (C, H, W, d) → (C, H·W·d): one sample per channel."""
    return maps if maps.ndim == 2 else maps.reshape(maps.shape[0], -1)


def _dominant_factor(label_maps: FloatArray) -> NDArray[np.int64]:
    per_unit = label_maps if label_maps.ndim == 2 else np.nanmean(label_maps.reshape(label_maps.shape[0], -1, label_maps.shape[-1]), axis=1)
    return np.argmax(np.where(np.isnan(per_unit), -np.inf, per_unit), axis=1)


def _model(n_features: int, n_train: int, n_classes: int, max_features: int) -> Pipeline:
    steps: list[object] = [StandardScaler()]
    if n_features > max_features:
        steps.append(PCA(n_components=max(1, min(max_features, n_train - n_classes))))
    steps.append(LinearDiscriminantAnalysis(solver="svd"))
    return make_pipeline(*steps)


def factor_discrimination(
    maps: ArrayLike,
    factor_names: Sequence[str],
    *,
    labels: Sequence[str] | Sequence[int] | None = None,
    label_maps: ArrayLike | None = None,
    n_splits: int = 5,
    n_repeats: int = 10,
    max_features: int = 50,
    seed: int = 0,
) -> FactorDiscrimination:
    """LDA predicting each unit's factor from its map, with repeated stratified k-fold accuracy.

    Args:
        maps: (units, d) or (C, H, W, d) sensitivity maps (features).
        factor_names: the d factor names.
        labels: each unit's factor (names or indices), from a source independent of ``maps``.
        label_maps: an independent estimate of ``maps`` (same shape); label = its dominant factor
            (per-unit maps: averaged over positions first). Give exactly one of the two.
        n_splits, n_repeats: repeated stratified k-fold (factors with fewer than n_splits units
            are dropped and listed in ``dropped_factors``).
        max_features: above this many features, PCA to this many components inside each fold.
        seed: fold shuffling seed.

    Returns:
        :class:`FactorDiscrimination`.
    """
    names = list(factor_names)
    array = _validated_maps(maps, names)
    if (labels is None) == (label_maps is None):
        raise AugsenseError(
            "give exactly one of labels= (each unit's factor from an independent source) or "
            "label_maps= (an independent estimate of the maps, e.g. the other half of the images). "
            "Labels taken from the same map would make the test circular."
        )
    if label_maps is not None:
        independent = _validated_maps(label_maps, names, "label_maps")
        if independent.shape != array.shape:
            raise AugsenseError(f"label_maps must have the maps' shape {array.shape}, got {independent.shape}.")
        codes = _dominant_factor(independent)
    else:
        given = list(labels)  # type: ignore[arg-type]
        if len(given) != array.shape[0]:
            raise AugsenseError(f"got {len(given)} labels for {array.shape[0]} units; give one per unit.")
        try:
            codes = np.array([names.index(x) if isinstance(x, str) else int(x) for x in given])
        except ValueError as error:
            raise AugsenseError(f"labels must be factor names from {names} or their indices: {error}") from None
        if codes.min() < 0 or codes.max() >= len(names):
            raise AugsenseError(f"label indices must lie in [0, {len(names) - 1}].")
    if n_splits < 2 or n_repeats < 1:
        raise AugsenseError(f"need n_splits ≥ 2 and n_repeats ≥ 1, got {n_splits}, {n_repeats}.")
    features = _unit_features(array)
    keep = np.isfinite(features).all(axis=1)
    features, codes = features[keep], codes[keep]
    counts = np.bincount(codes, minlength=len(names))
    present = [i for i in range(len(names)) if counts[i] >= n_splits]
    dropped = [names[i] for i in range(len(names)) if 0 < counts[i] < n_splits]
    if len(present) < 2:
        raise AugsenseError(
            f"LDA needs at least two factors with ≥ {n_splits} units each; unit counts per factor: "
            f"{dict(zip(names, counts.tolist()))}. Use more units or fewer folds (--folds)."
        )
    in_use = np.isin(codes, present)
    features, codes = features[in_use], codes[in_use]
    classes = [names[i] for i in present]
    target = np.searchsorted(present, codes)
    folds = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    confusion = np.zeros((len(present), len(present)), dtype=np.int64)
    accuracies = []
    for train, test in folds.split(features, target):
        model = _model(features.shape[1], len(train), len(present), max_features)
        model.fit(features[train], target[train])
        predicted = model.predict(features[test])
        accuracies.append(float(np.mean(predicted == target[test])))
        np.add.at(confusion, (target[test], predicted), 1)
    full = _model(features.shape[1], len(target), len(present), max_features).fit(features, target)
    projection = full.transform(features)[:, :2]
    return FactorDiscrimination(
        classes=classes,
        labels=[classes[t] for t in target],
        fold_accuracies=np.asarray(accuracies),
        chance=float(np.bincount(target).max() / len(target)),
        confusion=confusion,
        projection=np.asarray(projection, dtype=np.float64),
        n_splits=n_splits,
        n_repeats=n_repeats,
        dropped_factors=dropped,
    )


# -- the paper's definitions (Kharyuk, Matveev & Oseledets 2025; reference code
#    correlation/compute.py::compute_unitwise_correlation, discriminant_analysis/compute.py) ------


#: How the paper variants treat a NaN index (a dead unit: no variance). ``"paper"``: as the reference
#: code, whose safe division returns 0 where the numerator is ≈ 0, so a dead unit's index is 0 and
#: an undefined per-pixel ρ is 0; ``"omit"``: leave the dead unit (and undefined ρ) out instead.
MISSING = ("paper", "omit")


def _missing(missing: str) -> str:
    if missing not in MISSING:
        raise AugsenseError(f"missing must be one of {', '.join(MISSING)}, got {missing!r}")
    return missing


@dataclass(frozen=True)
class PixelCorrelations:
    """The paper's map correlation: per pixel, Spearman between factors across channels.

    ``rho_mean`` / ``rho_sd`` are (d, d): mean and SD (ddof = 1, as the paper) over ``n_pixels``
    (d, d) pixels. ``missing = "paper"``: every pixel counts, and a pixel where a factor's map is
    constant across channels (no rank correlation) counts as ρ = 0, as the paper; ``n_undefined``
    (d, d) counts those pixels. ``"omit"``: they are left out of ``n_pixels``. ``n_dead_channels``
    counts channels whose map is NaN at every pixel (index 0 under ``"paper"``, left out under
    ``"omit"``, where they are also ``n_dropped_channels``).
    """

    factor_names: list[str]
    rho_mean: FloatArray
    rho_sd: FloatArray
    n_pixels: NDArray[np.int64]
    n_channels: int
    n_dropped_channels: int
    n_undefined: NDArray[np.int64] | None = None
    n_dead_channels: int = 0
    missing: str = "paper"

    def to_dataframe(self) -> pd.DataFrame:
        """Long table: ``factor_a``, ``factor_b``, ``rho_mean``, ``rho_sd``, ``n_pixels``, ``n_undefined``,
        ``n_channels``, ``n_dead_channels``, ``missing``."""
        d = len(self.factor_names)
        undefined = self.n_undefined if self.n_undefined is not None else np.zeros((d, d), dtype=np.int64)
        rows = [(self.factor_names[a], self.factor_names[b], self.rho_mean[a, b], self.rho_sd[a, b],
                 int(self.n_pixels[a, b]), int(undefined[a, b]), self.n_channels, self.n_dead_channels, self.missing)
                for a in range(d) for b in range(a + 1, d)]
        return pd.DataFrame(rows, columns=["factor_a", "factor_b", "rho_mean", "rho_sd", "n_pixels", "n_undefined",
                                           "n_channels", "n_dead_channels", "missing"])


def _rank_correlations(channels: FloatArray, valid: NDArray[np.bool_]) -> FloatArray:
    """(C, P, d) maps, (C, P) live mask → (P, d, d) Spearman ρ across each pixel's live channels; NaN where a
    factor's ranks are constant there (``custom_spearmanr``'s corrcoef of ranks, before its NaN → 0)."""
    channels = np.where(valid[..., None], channels, np.nan)
    ranks = scipy.stats.rankdata(channels, axis=0, nan_policy="omit")  # ranks among the pixel's live channels
    centred = ranks - np.nanmean(np.where(valid[..., None], ranks, np.nan), axis=0, keepdims=True)
    centred = np.where(valid[..., None], centred, 0.0)
    norms = np.sqrt((centred**2).sum(axis=0))  # (P, d)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = centred / np.where(norms > 0, norms, np.nan)[None]
        return np.clip(np.einsum("cpa,cpb->pab", unit, unit), -1.0, 1.0)


def pixel_correlations(maps: ArrayLike, factor_names: Sequence[str], *, missing: str = "paper") -> PixelCorrelations:
    """Spearman ρ between factors' maps across channels, at every pixel; mean and SD over pixels.

    The reference code (``correlation/compute.py``: ``compute_unitwise_correlation`` and
    ``custom_spearmanr``) ranks each factor's values over all channels at a pixel, takes the Pearson
    correlation of the ranks, sets an undefined one (a constant map) to 0 and averages over all
    pixels; its indices have no NaN (a dead unit's index is 0).

    Args:
        maps: (C, H, W, d) per-unit maps, or (C, d) per-channel maps (one "pixel": SD is NaN).
        factor_names: the d factor names.
        missing: ``"paper"`` (default): a NaN index (dead unit) is 0 and ranks among the channels, and
            an undefined ρ counts as 0 in the mean and SD over all pixels, as the paper.
            ``"omit"``: at each pixel, channels whose value is NaN for some factor are left out, and
            pixels with fewer than 3 live channels or a constant map are left out of the mean and SD.

    Returns:
        :class:`PixelCorrelations`.
    """
    names = list(factor_names)
    missing = _missing(missing)
    array = _validated_maps(maps, names)
    if len(names) < 2:
        raise AugsenseError("pixel-wise correlations need at least two factors.")
    channels = array.reshape(array.shape[0], -1, array.shape[-1]).copy()  # (C, P, d)
    finite = np.isfinite(channels).all(axis=2)  # (C, P): the channel is alive at the pixel
    dead = int((~finite.any(axis=1)).sum())
    if missing == "paper":
        if channels.shape[0] < 3:
            raise AugsenseError(f"only {channels.shape[0]} channels; pixel-wise correlations across channels "
                                "need at least 3.")
        channels = np.nan_to_num(channels, nan=0.0)
        per_pixel = _rank_correlations(channels, np.ones(finite.shape, dtype=bool))
        undefined = np.isnan(per_pixel)
        per_pixel[undefined] = 0.0  # custom_spearmanr: rs[is_nan] = 0
        count = np.full(per_pixel.shape[1:], per_pixel.shape[0], dtype=np.int64)
        mean = per_pixel.mean(axis=0)
        sd = per_pixel.std(axis=0, ddof=1) if per_pixel.shape[0] > 1 else np.full(mean.shape, np.nan)
        return PixelCorrelations(names, mean, sd, count, int(channels.shape[0]), 0,
                                 undefined.sum(axis=0).astype(np.int64), dead, missing)
    alive = finite.any(axis=1)
    if int(alive.sum()) < 3 or int(finite.sum(axis=0).max()) < 3:
        raise AugsenseError(f"only {int(finite.sum(axis=0).max())} channels have finite maps at any pixel; "
                            "pixel-wise correlations across channels need at least 3.")
    per_pixel = _rank_correlations(channels, finite)
    per_pixel[finite.sum(axis=0) < 3] = np.nan
    defined = np.isfinite(per_pixel)
    count = defined.sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(per_pixel, axis=0)
        sd = np.nanstd(per_pixel, axis=0, ddof=1)
    sd = np.where(count > 1, sd, np.nan)
    return PixelCorrelations(names, mean, sd, count.astype(np.int64), int(alive.sum()), dead,
                             (~defined).sum(axis=0).astype(np.int64), dead, missing)


@dataclass(frozen=True)
class PaperDiscrimination(FoldAccuracies):
    """The paper's LDA: which factor's map is this (factor, channel) map?

    ``fold_accuracies`` / ``train_accuracies``: n_repeats·n_splits held-out and training accuracies;
    ``confusion`` (d, d): held-out predictions summed over folds, rows normalised (true factor →
    predicted); ``chance``: the share of the most frequent factor among the samples.
    """

    classes: list[str]
    fold_accuracies: FloatArray
    train_accuracies: FloatArray
    confusion: FloatArray
    chance: float
    n_samples: int
    n_features: int
    n_splits: int
    n_repeats: int
    n_dropped_samples: int

    def to_dataframe(self) -> pd.DataFrame:
        """One row: accuracy (held-out mean), accuracy_sd, train_accuracy, chance, sizes and folds."""
        return pd.DataFrame([{"accuracy": self.accuracy, "accuracy_sd": self.accuracy_sd,
                              "train_accuracy": float(self.train_accuracies.mean()), "chance": self.chance,
                              "n_samples": self.n_samples, "n_features": self.n_features,
                              "n_classes": len(self.classes), "n_splits": self.n_splits,
                              "n_repeats": self.n_repeats, "n_dropped_samples": self.n_dropped_samples}])

    def confusion_dataframe(self) -> pd.DataFrame:
        return pd.DataFrame(self.confusion, index=pd.Index(self.classes, name="true"),
                            columns=pd.Index(self.classes, name="predicted"))


def paper_samples(maps: ArrayLike, factor_names: Sequence[str], *,
                  missing: str = "paper") -> tuple[FloatArray, NDArray[np.int64], int]:
    """(C, H, W, d) or (C, d) maps → samples X (d·C', H·W), labels y (d·C',) = factor index, dropped count.

    One sample per (factor, channel): that channel's spatial map of that factor's index, as the
    paper's ``X[var, unit, pixels]``. A NaN pixel (a unit with no variance there: no factor moves it)
    counts as index 0, as the reference code's safe division gives it. ``missing = "paper"`` keeps a
    sample that is NaN everywhere (a dead channel) as all zeros, as the paper; ``"omit"`` leaves it
    out (and counts it).
    """
    missing = _missing(missing)
    array = _validated_maps(maps, list(factor_names))
    d = array.shape[-1]
    per_factor = np.moveaxis(array.reshape(array.shape[0], -1, d), -1, 0)  # (d, C, P)
    features = per_factor.reshape(d * array.shape[0], -1)
    labels = np.repeat(np.arange(d), array.shape[0])
    keep = np.isfinite(features).any(axis=1) if missing == "omit" else np.ones(len(labels), dtype=bool)
    return np.nan_to_num(features[keep], nan=0.0), labels[keep], int((~keep).sum())


def paper_discrimination(maps: ArrayLike, factor_names: Sequence[str], *, n_splits: int = 5, n_repeats: int = 100,
                         seed: int = 0, missing: str = "paper") -> PaperDiscrimination:
    """LDA (SVD solver, no scaling, as the paper) predicting the factor of each (factor, channel) map.

    Args:
        maps: (C, H, W, d) per-unit maps (features: the H·W pixels) or (C, d) per-channel maps
            (one feature).
        factor_names: the d factor names (the classes).
        n_splits, n_repeats: repeated stratified k-fold; the paper's 5 × 100 by default.
        seed: fold shuffling seed.
        missing: NaN indices (dead units) are 0, as the paper; ``"omit"`` leaves out the samples of
            channels dead everywhere (see :func:`paper_samples`).

    Returns:
        :class:`PaperDiscrimination`; held-out accuracy well above ``chance`` means the factors'
        maps of one layer differ in a linearly readable way.
    """
    names = list(factor_names)
    if len(names) < 2:
        raise AugsenseError("LDA needs at least two factors (classes).")
    if n_splits < 2 or n_repeats < 1:
        raise AugsenseError(f"need n_splits ≥ 2 and n_repeats ≥ 1, got {n_splits}, {n_repeats}.")
    features, labels, dropped = paper_samples(maps, names, missing=missing)
    counts = np.bincount(labels, minlength=len(names))
    if (counts < n_splits).any():
        raise AugsenseError(f"every factor needs ≥ {n_splits} channels with finite maps for {n_splits}-fold LDA; "
                            f"got {dict(zip(names, counts.tolist()))}; use fewer folds (--folds)")
    folds = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=n_repeats, random_state=seed)
    confusion = np.zeros((len(names), len(names)))
    held_out, train_accuracy = [], []
    # one BLAS thread: the folds' SVDs are small, and threads contending for busy cores made them 6× slower
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # collinear pixels: the SVD solver copes, sklearn warns
        for train, test in folds.split(features, labels):
            model = LinearDiscriminantAnalysis(solver="svd").fit(features[train], labels[train])
            predicted = model.predict(features[test])
            held_out.append(float(np.mean(predicted == labels[test])))
            train_accuracy.append(float(np.mean(model.predict(features[train]) == labels[train])))
            np.add.at(confusion, (labels[test], predicted), 1.0)
    confusion /= np.maximum(confusion.sum(axis=1, keepdims=True), 1.0)
    return PaperDiscrimination(names, np.asarray(held_out), np.asarray(train_accuracy), confusion,
                               float(counts.max() / counts.sum()), int(len(labels)), int(features.shape[1]),
                               n_splits, n_repeats, dropped)
