"""Variance-weighted pooling of unit maps: channels from positions, layers from units.

A pooled index is Σ_u S_u V_u / Σ_u V_u over the pooled units u (non-dead, finite), the same
Σ_c V_i^(c) / Σ_c V^(c) aggregation the run uses for its layer table (Kharyuk et al. 2025, §3).
Layer-level pairwise matrices come from that table when the run wrote them (:func:`stored_pair_matrix`,
with intervals), else from pooling the unit maps (:func:`layer_pair_matrix`, without).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def _weights(variance: np.ndarray | None, dead: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    weight = np.ones(shape) if variance is None else np.asarray(variance, dtype=np.float64).copy()
    weight[~np.isfinite(weight)] = 0.0
    if dead is not None:
        weight[np.asarray(dead, dtype=bool)] = 0.0
    return weight


def pool(index: np.ndarray, variance: np.ndarray | None, dead: np.ndarray | None, unit_ndim: int,
         axes: tuple[int, ...]) -> np.ndarray:
    """Pool ``index`` (*unit_shape, *tail) over unit ``axes``, weighting each unit by its variance.

    ``unit_ndim`` = len(unit_shape); ``variance`` and ``dead``: (*unit_shape,) or None (equal weights,
    nobody dead). Units that are dead or have a NaN index get weight 0; an entry with no weight is NaN.
    """
    weight = _weights(variance, dead, index.shape[:unit_ndim])
    tail = index.ndim - unit_ndim
    w = weight.reshape(weight.shape + (1,) * tail) * np.ones_like(index)
    values = np.where(np.isfinite(index), index, 0.0)
    w = np.where(np.isfinite(index), w, 0.0)
    total = w.sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (values * w).sum(axis=axes) / np.where(total > 0, total, 1.0), np.nan)


def channel_view(index: np.ndarray, variance: np.ndarray | None, dead: np.ndarray | None,
                 unit_ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel indices and dead flags from a map with ``unit_ndim`` unit axes.

    index (C, *positions, *tail) → (C, *tail); a channel is dead when all its positions are.
    With a single unit axis the map is returned as it is.
    """
    if unit_ndim <= 1:
        flags = np.asarray(dead, dtype=bool) if dead is not None else ~np.isfinite(index).reshape(index.shape[0], -1).any(1)
        return index, flags
    axes = tuple(range(1, unit_ndim))
    pooled = pool(index, variance, dead, unit_ndim, axes)
    flags = np.asarray(dead, dtype=bool).all(axis=axes) if dead is not None else np.zeros(index.shape[0], bool)
    flags |= ~np.isfinite(pooled).reshape(pooled.shape[0], -1).any(axis=1)
    return pooled, flags


def layer_pair_matrix(pairs: np.ndarray, variance: np.ndarray | None, dead: np.ndarray | None) -> np.ndarray:
    """Layer-level d × d matrix from per-unit pair indices (*unit_shape, d, d), variance-weighted (no
    interval: the fallback of :func:`stored_pair_matrix` for result folders without layer-level pairs)."""
    unit_ndim = pairs.ndim - 2
    return pool(pairs, variance, dead, unit_ndim, tuple(range(unit_ndim)))


def stored_pair_matrix(layers: pd.DataFrame | None, layer: str, quantity: str,
                       players: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """A layer's d × d estimates and (2, d, d) interval bounds of ``quantity`` from the layer table
    (``layers.parquet``: rows layer, factor, factor2, quantity, estimate, ci_low, ci_high), or None
    when the table holds no such rows (result folders written before the run aggregated pairs).

    Symmetric, NaN on the diagonal and for pairs the table lacks. This is the run's own layer-level
    estimate, Σ_c V_ij^(c) / Σ_c V^(c) from group sums with a delta-method interval; prefer it to
    :func:`layer_pair_matrix`, which pools per-unit estimates and has no interval.
    """
    if layers is None or not {"layer", "factor", "factor2", "quantity", "estimate", "ci_low",
                               "ci_high"} <= set(layers.columns):
        return None
    rows = layers[(layers["layer"] == layer) & (layers["quantity"] == quantity) & layers["factor2"].notna()]
    position = {str(p): k for k, p in enumerate(players)}
    rows = rows[rows["factor"].astype(str).isin(position) & rows["factor2"].astype(str).isin(position)]
    if rows.empty:
        return None
    d = len(players)
    estimate = np.full((d, d), np.nan)
    bounds = np.full((2, d, d), np.nan)
    i = rows["factor"].astype(str).map(position).to_numpy()
    j = rows["factor2"].astype(str).map(position).to_numpy()
    for a, b in ((i, j), (j, i)):
        estimate[a, b] = rows["estimate"].to_numpy(float)
        bounds[0, a, b] = rows["ci_low"].to_numpy(float)
        bounds[1, a, b] = rows["ci_high"].to_numpy(float)
    np.fill_diagonal(estimate, np.nan)
    bounds[:, np.arange(d), np.arange(d)] = np.nan
    return estimate, bounds
