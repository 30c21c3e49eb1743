"""False discovery rate control across many tests (all units of all layers at once).

Benjamini & Hochberg (1995), *J. R. Stat. Soc. B* 57:289–300 (independent or positively dependent
tests) and Benjamini & Yekutieli (2001), *Ann. Stat.* 29:1165–1188 (any dependence: the BH
thresholds divided by c(m) = Σ_{i=1}^m 1/i). Units of one layer are strongly and arbitrarily
correlated, so augsense uses Benjamini–Yekutieli by default.

Both functions take p-values of any shape, treat NaN entries (dead units, untestable outputs) as
absent — they do not count towards m — and return arrays of the input's shape: ``reject`` (False
where NaN) and adjusted p-values ``q`` (NaN where NaN). ``reject == (q <= alpha)``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from augsense.errors import AugsenseError

__all__ = ["benjamini_hochberg", "benjamini_yekutieli"]


def benjamini_hochberg(
    p_values: ArrayLike, alpha: float = 0.05
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Benjamini–Hochberg step-up procedure (1995) over all finite entries of ``p_values``.

    Args:
        p_values: array of any shape with values in [0, 1]; NaN marks a test that was not done.
        alpha: the false discovery rate to control, in (0, 1).

    Returns:
        ``(reject, q_values)``, both of the input's shape.
    """
    return _step_up(p_values, alpha, dependence_factor=False)


def benjamini_yekutieli(
    p_values: ArrayLike, alpha: float = 0.05
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    """Benjamini–Yekutieli step-up procedure (2001), valid under arbitrary dependence.

    Same as :func:`benjamini_hochberg` with every p-value multiplied by c(m) = Σ_{i≤m} 1/i, m the
    number of finite p-values.

    Args:
        p_values: array of any shape with values in [0, 1]; NaN marks a test that was not done.
        alpha: the false discovery rate to control, in (0, 1).

    Returns:
        ``(reject, q_values)``, both of the input's shape.
    """
    return _step_up(p_values, alpha, dependence_factor=True)


def _step_up(
    p_values: ArrayLike, alpha: float, *, dependence_factor: bool
) -> tuple[NDArray[np.bool_], NDArray[np.float64]]:
    p = np.asarray(p_values, dtype=np.float64)
    if not 0.0 < alpha < 1.0:
        raise AugsenseError(f"alpha must lie in (0, 1), got {alpha}; the usual choice is 0.05.")
    if np.isinf(p).any():
        raise AugsenseError("p-values must be finite or NaN (for 'not tested'); got ±inf.")
    finite = ~np.isnan(p)
    values = p[finite]
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise AugsenseError(
            f"p-values must lie in [0, 1]; got values in [{values.min():g}, {values.max():g}]. "
            "Pass p-values, not test statistics or log p-values."
        )
    q = np.full(p.shape, np.nan)
    m = values.size
    if m:
        order = np.argsort(values, kind="stable")
        ranks = np.arange(1, m + 1, dtype=np.float64)
        scale = m / ranks
        if dependence_factor:
            scale *= np.sum(1.0 / ranks)
        # q_(i) = min_{j ≥ i} scale_j · p_(j), capped at 1 (step-up: running minimum from the top)
        adjusted = np.minimum.accumulate((scale * values[order])[::-1])[::-1]
        q_sorted = np.minimum(adjusted, 1.0)
        q_finite = np.empty(m)
        q_finite[order] = q_sorted
        q[finite] = q_finite
    reject = np.zeros(p.shape, dtype=bool)
    reject[finite] = q[finite] <= alpha
    return reject, q
