"""Streaming first and second moments of per-row statistic vectors, and delta-method intervals.

Every estimator here is a smooth function g of the means mu of a small vector z of per-row
statistics (e.g. z = (f_B (f_AB_i - f_A), (f_A - f_AB_i)^2 / 2, ...)). Summing z and the upper
triangle of z z^T over rows is mergeable and O(p^2) memory per cell; at the end
Var(g(mu_hat)) ~= grad^T Cov(z) grad / n (the delta method, e.g. Janon et al. 2014, "Asymptotic
normality and efficiency of two Sobol index estimators", ESAIM P&S 18). With scrambled Sobol'
points the iid covariance is conservative.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from scipy.stats import norm


@lru_cache(maxsize=None)
def _triu(p: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    i, j = torch.triu_indices(p, p).tolist()
    return tuple(i), tuple(j)


def n_triangle(p: int) -> int:
    """Number of upper-triangle entries of a p x p matrix."""
    return p * (p + 1) // 2


def row_moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over rows of z (r, ..., p) and of its outer products: ((..., p), (..., p(p+1)/2))."""
    p = z.shape[-1]
    i, j = _triu(p)
    cells = z.reshape(z.shape[0], -1, p).permute(1, 2, 0)            # (cells, p, r)
    outer = torch.bmm(cells, cells.transpose(1, 2))                   # (cells, p, p), one small GEMM each
    return z.sum(0), outer[:, list(i), list(j)].reshape(z.shape[1:-1] + (len(i),))


def covariance(s1: torch.Tensor, s2: torch.Tensor, n: int) -> torch.Tensor:
    """Sample covariance (ddof 1) (..., p, p) of z from its sums s1 (..., p) and s2 (..., T)."""
    p = s1.shape[-1]
    i, j = _triu(p)
    full = s1.new_zeros(s1.shape + (p,))
    full[..., list(i), list(j)] = s2
    full[..., list(j), list(i)] = s2
    mu = s1 / n
    return (full - n * mu[..., :, None] * mu[..., None, :]) / max(n - 1, 1)


def reshift(s1: torch.Tensor, s2: torch.Tensor, n: int, M: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of z' = M z + c from sums of z; M (..., p, p), c (..., p) broadcast against s1."""
    p = s1.shape[-1]
    i, j = _triu(p)
    full = s1.new_zeros(s1.shape + (p,))
    full[..., list(i), list(j)] = s2
    full[..., list(j), list(i)] = s2
    ms1 = (M @ s1[..., None])[..., 0]
    outer = M @ full @ M.transpose(-1, -2) + ms1[..., :, None] * c[..., None, :] + c[..., :, None] * ms1[..., None, :]
    outer = outer + n * c[..., :, None] * c[..., None, :]
    return ms1 + n * c, outer[..., list(i), list(j)]


def standard_error(grad: torch.Tensor, cov: torch.Tensor, n: int) -> torch.Tensor:
    """Delta-method standard error sqrt(grad^T cov grad / n); grad (..., p), cov (..., p, p)."""
    var = (grad[..., None, :] @ cov @ grad[..., :, None])[..., 0, 0] / n
    return var.clamp_min(0).sqrt()


def z_value(confidence: float) -> float:
    """Two-sided normal quantile for a confidence level in (0, 1)."""
    from augsense.errors import AugsenseError

    if not 0 < confidence < 1:
        raise AugsenseError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")
    return float(norm.ppf(0.5 + confidence / 2))


def interval(estimate: torch.Tensor, se: torch.Tensor, z: float) -> torch.Tensor:
    """(2, ...) stacked lower and upper bounds estimate -/+ z se."""
    return torch.stack([estimate - z * se, estimate + z * se])
