"""Streaming first and second moments of per-block statistic sums, and delta-method intervals.

Every estimator here is a smooth function g of the means mu of a small vector z of per-row
statistics (e.g. z = (f_B (f_AB_i - f_A), (f_A - f_AB_i)^2 / 2, ...)). Summing z over rows, and the
upper triangle of Z_b Z_b^T over design blocks (Z_b = the block's sum of z), is mergeable and O(p^2)
memory per cell. The blocks of a design are independent randomisations (see
:mod:`augsense.design.core`), so the block sums are i.i.d. and Var(mu_hat) is estimated from their
spread, whatever the dependence of the scrambled points inside a block (randomised QMC replicates,
Owen 1997; L'Ecuyer & Lemieux 2002). At the end Var(g(mu_hat)) ~= grad^T Sigma grad / n with
Sigma the per-row equivalent covariance (the delta method, e.g. Janon et al. 2014, ESAIM P&S 18),
and intervals use Student's t with (blocks - 1) degrees of freedom. With one row per block this is
the ordinary i.i.d. delta method.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from scipy.stats import norm
from scipy.stats import t as student_t


@lru_cache(maxsize=None)
def _triu(p: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    i, j = torch.triu_indices(p, p).tolist()
    return tuple(i), tuple(j)


def n_triangle(p: int) -> int:
    """Number of upper-triangle entries of a p x p matrix."""
    return p * (p + 1) // 2


def row_sums_of(terms: list[torch.Tensor]) -> torch.Tensor:
    """Sum over rows of z = terms, each (r, ...) broadcastable to (r, *cells): (*cells, p).

    The first moments only: second moments are kept per block (:func:`block_outer`), not per row.
    """
    shape = torch.broadcast_shapes(*(t.shape for t in terms))[1:]
    return torch.stack([t.sum(0).expand(shape) for t in terms], -1)


#: the highest power of D in a first-moment statistic (D^2 / 2 in Jansen's total-order numerator)
MAX_POWER = 2


def _full(s2: torch.Tensor, p: int, like: torch.Tensor) -> torch.Tensor:
    i, j = _triu(p)
    full = like.new_zeros(like.shape + (p,))
    full[..., list(i), list(j)] = s2
    full[..., list(j), list(i)] = s2
    return full


#: up to this many sums per cell, :func:`block_outer` builds the triangle row by row from slices (the
#: gather of index_select on a last axis of 2-12 entries was 40 % of a sobol2 block update)
ROW_SLICED_OUTER = 16


@lru_cache(maxsize=None)
def _triu_index(p: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    i, j = _triu(p)
    return torch.tensor(i, device=device), torch.tensor(j, device=device)


def block_outer(s1: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
    """Upper triangle (..., p(p+1)/2) of the outer product of one block's sums s1 (..., p).

    With ``shared`` (mc, q), sums common to every cell of s1 (mc, ..., p) (stored once, not per
    cell): [upper triangle of s1 s1^T, then s1 shared^T row by row] (..., p(p+1)/2 + p q), the
    cell's part of the outer product of its full vector [s1, shared] (see :func:`join_shared`).
    """
    p = s1.shape[-1]
    if p <= ROW_SLICED_OUTER:  # row i of the triangle, s1_i s1_{i:}, by slices: no gather on a tiny last axis
        parts = [s1[..., i:i + 1] * s1[..., i:] for i in range(p)]
    else:
        i, j = _triu_index(p, s1.device)
        parts = [s1.index_select(-1, i) * s1.index_select(-1, j)]  # index_select: 3x faster than list indexing
    if shared is not None:
        shared = shared.reshape(shared.shape[:1] + (1,) * (s1.dim() - 2) + shared.shape[1:])
        parts.append((s1[..., :, None] * shared[..., None, :]).flatten(-2))
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


@lru_cache(maxsize=None)
def _join_index(a: int, q: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Where each upper-triangle entry (i <= j) of a full (a + q) cell comes from in [own, cross, shared]
    (lengths T(a), a q, T(q)), and the inverse: each [own, cross, shared] entry's full position."""
    p, own, tri_q = a + q, _triu(a), _triu(q)
    where = []
    for i, j in zip(*_triu(p)):
        if j < a:
            where.append(next(k for k, ij in enumerate(zip(*own)) if ij == (i, j)))
        elif i < a:
            where.append(n_triangle(a) + i * q + (j - a))
        else:
            where.append(n_triangle(a) + a * q + next(k for k, ij in enumerate(zip(*tri_q)) if ij == (i - a, j - a)))
    back = [where.index(k) for k in range(n_triangle(a) + a * q + n_triangle(q))]
    return tuple(where), tuple(back)


def join_shared(s1: torch.Tensor, s2: torch.Tensor, w1: torch.Tensor,
                w2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Full cell sums from their compact form: cell sums s1 (mc, k, a) and s2 (mc, k, T(a) + a q)
    from :func:`block_outer` with ``shared``, shared sums w1 (mc, q) and w2 (mc, T(q)) ->
    (mc, k, a + q) and (mc, k, T(a + q)), as if every cell kept its own copy of the shared sums."""
    mc, k, a = s1.shape
    q = w1.shape[-1]
    full1 = torch.cat([s1, w1[:, None].expand(mc, k, q)], -1)
    where, _ = _join_index(a, q)
    both = torch.cat([s2, w2[:, None].expand(mc, k, n_triangle(q))], -1)
    return full1, both[..., list(where)]


def split_shared(full1: torch.Tensor, full2: torch.Tensor,
                 q: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`join_shared`: (s1, s2, w1, w2), the shared sums from the first cell (None
    without cells)."""
    a = full1.shape[-1] - q
    _, back = _join_index(a, q)
    both = full2[..., list(back)]
    cut = n_triangle(a) + a * q
    if not full1.shape[1]:
        return full1[..., :a], both[..., :cut], None, None
    return full1[..., :a], both[..., :cut], full1[:, 0, a:], both[:, 0, cut:]


def covariance(s1: torch.Tensor, s2: torch.Tensor, n: int, blocks: int | None = None) -> torch.Tensor:
    """Per-row equivalent covariance (..., p, p) of z from its row sums s1 (..., p) and the block
    outer-product sums s2 (..., T) of ``blocks`` equal blocks (default n: one row per block).

    Sigma = r Cov(block means) with r = n / blocks rows per block (ddof 1), so that Sigma / n is
    the variance of the overall mean; with r = 1 it is the sample covariance of the rows.
    """
    blocks = n if blocks is None else blocks
    p = s1.shape[-1]
    mu = s1 / n
    r = n / max(blocks, 1)
    return (_full(s2, p, s1) / r - n * mu[..., :, None] * mu[..., None, :]) / max(blocks - 1, 1)


def reshift(s1: torch.Tensor, s2: torch.Tensor, n: int, M: torch.Tensor, c: torch.Tensor,
            rows_per_block: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums after every row's z becomes M z + c; M (..., p, p), c (..., p) broadcast against s1.

    s2 holds block outer products (blocks of ``rows_per_block`` rows): a block sum Z becomes M Z + r c.
    """
    p = s1.shape[-1]
    i, j = _triu(p)
    full = _full(s2, p, s1)
    r = float(rows_per_block)
    ms1 = (M @ s1[..., None])[..., 0]
    outer = M @ full @ M.transpose(-1, -2) + r * (ms1[..., :, None] * c[..., None, :] + c[..., :, None] * ms1[..., None, :])
    outer = outer + n * r * c[..., :, None] * c[..., None, :]
    return ms1 + n * c, outer[..., list(i), list(j)]


def standard_error(grad: torch.Tensor, cov: torch.Tensor, n: int) -> torch.Tensor:
    """Delta-method standard error sqrt(grad^T cov grad / n); grad (..., p), cov (..., p, p)."""
    var = (grad[..., None, :] @ cov @ grad[..., :, None])[..., 0, 0] / n
    return var.clamp_min(0).sqrt()


def z_value(confidence: float, blocks: int | None = None) -> float:
    """Two-sided quantile for a confidence level in (0, 1): Student's t with blocks - 1 degrees of
    freedom when the variance comes from ``blocks`` block sums, else the normal quantile."""
    from augsense.errors import AugsenseError

    if not 0 < confidence < 1:
        raise AugsenseError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence}")
    if blocks is not None and blocks >= 2:
        return float(student_t.ppf(0.5 + confidence / 2, blocks - 1))
    return float(norm.ppf(0.5 + confidence / 2))


def interval(estimate: torch.Tensor, se: torch.Tensor, z: float) -> torch.Tensor:
    """(2, ...) stacked lower and upper bounds estimate -/+ z se."""
    return torch.stack([estimate - z * se, estimate + z * se])
