"""Exact Sobol indices and Shapley effects of a function given on a full grid of factor values.

The truth for the coverage studies comes from here, not from any estimator: a function's values on
the tensor product of every player's grid (discrete values, or Gauss–Legendre nodes, which integrate
polynomials of degree <= 2k - 1 exactly) with their probabilities give every closed variance
V_S = Var(E[Y | X_S]) by summation, and from those the indices:

- first order S_i = V_{i} / V, total order ST_i = (V - V_{-i}) / V (Sobol 1993; Homma & Saltelli 1996);
- Shapley effect Sh_i = sum_{S not containing i} |S|! (d - |S| - 1)! / d! (V_{S+i} - V_S) / V (Owen 2014).

Within-image mode averages numerators and denominators over the images separately (the ratio of
means that the paired estimators target): S = sum_k w_k V_i(k) / sum_k w_k V(k).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np


def gauss_legendre(low: float, high: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nodes in [low, high] and their probability weights (uniform distribution)."""
    x, w = np.polynomial.legendre.leggauss(k)
    return low + (x + 1) * (high - low) / 2, w / 2


def closed_variances(values: np.ndarray, weights: list[np.ndarray]) -> dict[frozenset[int], float]:
    """V_S for every subset S of the axes of ``values`` (one axis a player), weights per axis summing to 1."""
    d = values.ndim
    if d != len(weights) or any(len(w) != n for w, n in zip(weights, values.shape)):
        raise ValueError("one weight vector per axis, as long as the axis")
    joint = np.ones(values.shape)
    for axis, w in enumerate(weights):
        joint = joint * w.reshape([-1 if a == axis else 1 for a in range(d)])
    mean = float((joint * values).sum())
    out: dict[frozenset[int], float] = {}
    for size in range(d + 1):
        for subset in itertools.combinations(range(d), size):
            others = tuple(a for a in range(d) if a not in subset)
            marginal = joint.sum(axis=others, keepdims=True)                         # p(x_S)
            conditional = (joint * values).sum(axis=others, keepdims=True) / marginal  # E[Y | x_S]
            out[frozenset(subset)] = float((marginal * conditional ** 2).sum()) - mean ** 2
    return out


@dataclass
class ExactIndices:
    """Exact indices of one output: first_order, total_order, shapley (d,) and the variance."""

    first_order: np.ndarray
    total_order: np.ndarray
    shapley: np.ndarray
    variance: float


def unnormalised(v: dict[frozenset[int], float], d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(V_i, V - V_{-i}, Shapley values) (d,) each, and V, from closed variances."""
    full = frozenset(range(d))
    V = v[full]
    first = np.array([v[frozenset([i])] for i in range(d)])
    total = np.array([V - v[full - {i}] for i in range(d)])
    shapley = np.zeros(d)
    for i in range(d):
        rest = [j for j in range(d) if j != i]
        for size in range(d):
            weight = math.factorial(size) * math.factorial(d - size - 1) / math.factorial(d)
            for subset in itertools.combinations(rest, size):
                s = frozenset(subset)
                shapley[i] += weight * (v[s | {i}] - v[s])
    return first, total, shapley, V


def exact_indices(values: np.ndarray, weights: list[np.ndarray]) -> ExactIndices:
    """Indices of a function on a grid: values (n_1, ..., n_d), weights[i] (n_i,) summing to 1."""
    first, total, shapley, V = unnormalised(closed_variances(values, weights), values.ndim)
    return ExactIndices(first / V, total / V, shapley / V, V)


def exact_within(values: np.ndarray, image_weights: np.ndarray, weights: list[np.ndarray]) -> ExactIndices:
    """Within-image indices: values (n_images, n_1, ..., n_d); image_weights (n_images,) summing to 1.

    Numerators and the variance are averaged over images with ``image_weights`` before the ratio.
    """
    parts = [unnormalised(closed_variances(values[k], weights), values.ndim - 1) for k in range(len(values))]
    w = np.asarray(image_weights, dtype=float)
    first, total, shapley = (sum(wk * p[j] for wk, p in zip(w, parts)) for j in range(3))
    V = float(sum(wk * p[3] for wk, p in zip(w, parts)))
    return ExactIndices(first / V, total / V, shapley / V, V)
