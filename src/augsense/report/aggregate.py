"""Variance-weighted pooling of unit maps: channels from positions, layers from units.

A pooled index is Σ_u S_u V_u / Σ_u V_u over the pooled units u (non-dead, finite), the same
Σ_c V_i^(c) / Σ_c V^(c) aggregation the run uses for its layer table (Kharyuk et al. 2025, §3).
"""

from __future__ import annotations

import numpy as np


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
    """Layer-level d × d matrix from per-unit pair indices (*unit_shape, d, d), variance-weighted."""
    unit_ndim = pairs.ndim - 2
    return pool(pairs, variance, dead, unit_ndim, tuple(range(unit_ndim)))
