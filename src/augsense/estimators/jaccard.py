"""Single-class sensitivity statistics: candidate classes, Jaccard agreement and its null.

Paper series 2 (Kharyuk, Matveev & Oseledets 2025, arXiv 2503.03283, single-class analysis): for each
factor take the k classes whose output is most sensitive to it, damage/amplify the units most
sensitive to that factor, and measure the mean Jaccard index (Jaccard 1912) between those candidates
and each image's top-k predictions. The network is *biased* towards the candidates when the mean
exceeds the Tukey fence Q3 + 1.5·IQR (Tukey 1977) of the null distribution: candidates and
predictions independent uniform k-subsets of C classes, averaged over the same number of images.

Null distribution. The overlap j of two independent uniform k-subsets is hypergeometric
(C, k, k), and J = j / (2k − j). The mean over N images is (1/N)·Σ J_i with iid J_i. Because the
k + 1 values of J are rationals, L·J is an integer for L = lcm of their denominators (L = 252 for
k = 5), so N·L·mean lives on the integer lattice and its exact distribution is the N-fold
convolution of J's pmf, computed by FFT (φ^N) on a window of ±40 SD around the mean, wide enough
that wrap-around mass is below double precision. When that lattice is too fine (large k),
``method="simulate"`` draws the counts of each overlap value from a multinomial (exact in
distribution; Monte-Carlo only in the quartiles).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
import pandas as pd
import scipy.stats
from numpy.typing import ArrayLike, NDArray

from augsense.errors import AugsenseError

__all__ = [
    "NullThreshold",
    "confirmed_biases",
    "jaccard_null_threshold",
    "jaccard_per_image",
    "mean_jaccard",
    "top_k_sensitive_classes",
]

_MAX_LATTICE = 2**24
"""Largest FFT length the exact null may use (128 MiB of float64)."""


def top_k_sensitive_classes(index_map: ArrayLike, k: int = 5) -> NDArray[np.int64]:
    """The k output classes most sensitive to each factor.

    Args:
        index_map: (C, d) sensitivity index of each class output (rows) for each factor (columns),
            e.g. total-order Sobol indices of the softmax probabilities. NaN (a class whose
            output never varied) counts as least sensitive.
        k: candidates per factor.

    Returns:
        (d, k) class indices, most sensitive first; ties keep the lower class index first.
    """
    values = np.asarray(index_map, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] == 0:
        raise AugsenseError(
            f"index_map must have shape (n_classes, n_factors), got {values.shape}."
        )
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= values.shape[0]:
        raise AugsenseError(f"k must be an integer in [1, {values.shape[0]}] (the number of classes), got {k}.")
    keyed = np.where(np.isnan(values), -np.inf, values)
    order = np.argsort(-keyed, axis=0, kind="stable")
    return np.ascontiguousarray(order[:k].T).astype(np.int64)


def _class_sets(values: ArrayLike, name: str) -> NDArray[np.int64]:
    array = np.asarray(values)
    if array.size == 0:
        raise AugsenseError(f"{name} is empty; pass class indices of shape (n_images, k).")
    if not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
            array = array.astype(np.int64)
        else:
            raise AugsenseError(f"{name} must hold integer class indices, got dtype {array.dtype}.")
    if array.min() < 0:
        raise AugsenseError(f"{name} holds negative class indices; classes are numbered from 0.")
    ordered = np.sort(array, axis=-1)
    if np.any(ordered[..., 1:] == ordered[..., :-1]):
        raise AugsenseError(f"{name} repeats a class within one set; each row must list distinct classes.")
    return array.astype(np.int64)


def jaccard_per_image(candidates: ArrayLike, predictions_topk: ArrayLike) -> NDArray[np.float64]:
    """Jaccard index |A ∩ B| / |A ∪ B| between candidate and predicted class sets, per image.

    Args:
        candidates: (k,) one candidate set for all images, or (n, k) one per image.
        predictions_topk: (n, k') top-k' predicted classes of each image.

    Returns:
        (n,) Jaccard indices in [0, 1].
    """
    predicted = _class_sets(predictions_topk, "predictions_topk")
    chosen = _class_sets(candidates, "candidates")
    if predicted.ndim != 2:
        raise AugsenseError(f"predictions_topk must have shape (n_images, k), got {predicted.shape}.")
    if chosen.ndim == 1:
        chosen = np.broadcast_to(chosen, (predicted.shape[0], chosen.shape[0]))
    if chosen.ndim != 2 or chosen.shape[0] != predicted.shape[0]:
        raise AugsenseError(
            f"candidates must have shape (k,) or (n_images, k) with n_images = "
            f"{predicted.shape[0]} like predictions_topk; got {np.shape(candidates)}."
        )
    overlap = (chosen[:, :, None] == predicted[:, None, :]).any(axis=2).sum(axis=1)
    union = chosen.shape[1] + predicted.shape[1] - overlap
    return overlap / union


def mean_jaccard(candidates: ArrayLike, predictions_topk: ArrayLike) -> float:
    """Mean over images of :func:`jaccard_per_image` (shapes as there)."""
    return float(jaccard_per_image(candidates, predictions_topk).mean())


@dataclass(frozen=True)
class NullThreshold:
    """Null distribution of the mean Jaccard index over ``n_images`` images, and its fence."""

    n_classes: int
    k: int
    n_images: int
    method: str
    mean: float
    q1: float
    q3: float
    iqr: float
    threshold: float

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _overlap_law(n_classes: int, k: int) -> tuple[list[Fraction], NDArray[np.float64]]:
    """Values J = j/(2k − j) (exact fractions) and hypergeometric probabilities of j = 0..k."""
    j = np.arange(k + 1)
    pmf = scipy.stats.hypergeom(n_classes, k, k).pmf(j)
    return [Fraction(int(i), 2 * k - int(i)) for i in j], pmf / pmf.sum()


def _exact_quartiles(values: list[Fraction], pmf: NDArray[np.float64], n_images: int) -> tuple[float, float, float] | None:
    """Q1, Q3 and mean of the mean-Jaccard null by FFT on the integer lattice; None if too fine."""
    scale = math.lcm(*(v.denominator for v in values))
    lattice = np.array([int(v * scale) for v in values], dtype=np.int64)
    mean_sum = n_images * float(pmf @ lattice)
    sd_sum = math.sqrt(n_images * float(pmf @ (lattice - pmf @ lattice) ** 2))
    full_span = n_images * int(lattice.max()) + 1
    window = int(2 * math.ceil(40.0 * sd_sum + 40.0 * lattice.max())) + 1
    size = 1 << max(int(math.ceil(math.log2(min(full_span, window)))), 4)
    if size > _MAX_LATTICE:
        return None
    single = np.zeros(size)
    np.add.at(single, lattice % size, pmf)
    law = np.fft.irfft(np.fft.rfft(single) ** n_images, n=size)
    low = 0 if size >= full_span else int(round(mean_sum)) - size // 2
    support = low + np.arange(size)
    probabilities = np.clip(law[support % size], 0.0, None)
    probabilities /= probabilities.sum()
    cdf = np.cumsum(probabilities)

    def quantile(q: float) -> float:
        return float(support[np.searchsorted(cdf, q - 1e-12)]) / (n_images * scale)

    return quantile(0.25), quantile(0.75), mean_sum / (n_images * scale)


def jaccard_null_threshold(
    n_classes: int,
    k: int,
    n_images: int,
    *,
    method: Literal["auto", "exact", "simulate"] = "auto",
    n_sim: int = 200_000,
    seed: int = 0,
) -> NullThreshold:
    """Q3 + 1.5·IQR of the mean Jaccard index between independent random k-subsets of C classes.

    Args:
        n_classes: C, the number of output classes.
        k: size of both the candidate set and the top-k prediction set.
        n_images: images the observed mean Jaccard was averaged over.
        method: ``"exact"`` (lattice FFT; error when the lattice is too fine), ``"simulate"``
            (``n_sim`` multinomial draws of the overlap counts), ``"auto"`` (exact when possible).
        n_sim: simulated means for ``"simulate"``.
        seed: random seed for ``"simulate"``.

    Returns:
        :class:`NullThreshold`; the paper's values are 0.0030 for (1000, 5, 50 000) and 0.00806
        for (365, 5, 36 500).
    """
    for name, value, low in (("n_classes", n_classes, 2), ("k", k, 1), ("n_images", n_images, 1), ("n_sim", n_sim, 2)):
        if not isinstance(value, (int, np.integer)) or value < low:
            raise AugsenseError(f"{name} must be an integer ≥ {low}, got {value!r}.")
    if k > n_classes:
        raise AugsenseError(f"k={k} exceeds n_classes={n_classes}; the top-k must be a subset of the classes.")
    if method not in ("auto", "exact", "simulate"):
        raise AugsenseError(f"method must be 'auto', 'exact' or 'simulate', got {method!r}.")
    values, pmf = _overlap_law(int(n_classes), int(k))
    exact = None if method == "simulate" else _exact_quartiles(values, pmf, int(n_images))
    if exact is None and method == "exact":
        raise AugsenseError(
            f"the exact null for k={k}, n_images={n_images} needs an FFT longer than {_MAX_LATTICE}; "
            "use method='simulate' (or 'auto')."
        )
    if exact is not None:
        q1, q3, mean = exact
        used = "exact"
    else:
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(int(n_images), pmf, size=int(n_sim))
        means = counts @ np.array([float(v) for v in values]) / n_images
        q1, q3 = (float(x) for x in np.percentile(means, [25, 75]))
        mean = float(means.mean())
        used = f"simulate(n_sim={n_sim}, seed={seed})"
    iqr = q3 - q1
    return NullThreshold(int(n_classes), int(k), int(n_images), used, mean, q1, q3, iqr, q3 + 1.5 * iqr)


def confirmed_biases(
    candidates: Mapping[Hashable, ArrayLike],
    observed: Mapping[Hashable, float],
    threshold: NullThreshold | float,
    *,
    class_names: Sequence[str] | None = None,
    only_confirmed: bool = False,
) -> pd.DataFrame:
    """Table of (factor → candidate classes) with their mean Jaccard and whether it beats the null.

    Args:
        candidates: key (a factor, or a (factor, mask configuration) tuple) → its (k,) classes.
        observed: same keys → observed mean Jaccard under the targeted masking.
        threshold: the null fence, as :class:`NullThreshold` or a number.
        class_names: optional names of all C classes, for a readable ``class_names`` column.
        only_confirmed: keep only rows above the threshold.

    Returns:
        DataFrame with ``factor``, ``classes``, ``class_names``, ``mean_jaccard``, ``threshold``,
        ``ratio`` (Jaccard / threshold) and ``confirmed``, sorted by decreasing mean Jaccard.
    """
    if set(candidates) != set(observed):
        raise AugsenseError(
            "candidates and observed must have the same keys; missing in observed: "
            f"{sorted(map(str, set(candidates) - set(observed)))}, missing in candidates: "
            f"{sorted(map(str, set(observed) - set(candidates)))}."
        )
    fence = threshold.threshold if isinstance(threshold, NullThreshold) else float(threshold)
    if not math.isfinite(fence) or fence <= 0:
        raise AugsenseError(f"threshold must be a positive finite number, got {fence}.")
    rows = []
    for key, classes in candidates.items():
        chosen = _class_sets(np.atleast_1d(np.asarray(classes)), f"candidates[{key!r}]")
        value = float(observed[key])
        if not 0.0 <= value <= 1.0:
            raise AugsenseError(f"observed[{key!r}] = {value} is not a Jaccard index in [0, 1].")
        if class_names is not None and chosen.max() >= len(class_names):
            raise AugsenseError(
                f"candidates[{key!r}] has class {chosen.max()} but only {len(class_names)} class names."
            )
        rows.append(
            {
                "factor": key,
                "classes": chosen.tolist(),
                "class_names": [class_names[c] for c in chosen] if class_names is not None else None,
                "mean_jaccard": value,
                "threshold": fence,
                "ratio": value / fence,
                "confirmed": value > fence,
            }
        )
    table = pd.DataFrame(rows, columns=["factor", "classes", "class_names", "mean_jaccard", "threshold", "ratio", "confirmed"])
    table = table.sort_values("mean_jaccard", ascending=False, kind="stable").reset_index(drop=True)
    return table[table["confirmed"]].reset_index(drop=True) if only_confirmed else table
