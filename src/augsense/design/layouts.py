"""Which rows of a pick-freeze group take which player's coordinates from A or from B.

Every layout is a boolean mask ``from_b`` of shape (G, d): entry (g, i) is True when group
member g takes player i's coordinates from the B matrix (otherwise from A).

- ``sobol`` (Saltelli 2010): ``[A, B, AB_1, ..., AB_d]``; AB_i is A with player i from B.
- ``sobol2`` (Saltelli 2002): ``sobol`` followed by ``[BA_1, ..., BA_d]``; BA_i is B with player
  i from A.
- ``shapley-exact`` (Plischke, Rabitti & Borgonovo 2021): all 2**d hybrids, member g is the
  bitmask of the players taken from A (bit i set -> player i from A), so member 0 is B and
  member 2**d - 1 is A.
- ``shapley-permutation`` (Goda 2021): a walk z_0 = A, z_k = z_{k-1} with player pi_k switched to
  B, z_d = B. Its mask depends on the row's permutation, see :func:`permutation_walk_mask`; the
  permutations are quasi-random (:func:`permutation_orders`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import qmc

KINDS = ("sobol", "sobol2", "shapley-exact", "shapley-permutation")
#: How the player orders of permutation walks are drawn (part of the design's version): before v2,
#: i.i.d. uniform orders per row (``argsort`` of uniforms).
PERMUTATION_ORDERS = "lehmer-scrambled-sobol/v2"


def group_size(kind: str, d: int) -> int:
    """Number G of evaluations per base row for a design kind with d players."""
    return {"sobol": d + 2, "sobol2": 2 * d + 2, "shapley-exact": 2**d, "shapley-permutation": d + 1}[kind]


def roles(kind: str, d: int) -> list[str]:
    """Names of the G group members, in order."""
    if kind in ("sobol", "sobol2"):
        names = ["A", "B"] + [f"AB_{i}" for i in range(d)]
        return names + ([f"BA_{i}" for i in range(d)] if kind == "sobol2" else [])
    if kind == "shapley-exact":
        return [f"H_{g}" for g in range(2**d)]
    return [f"Z_{k}" for k in range(d + 1)]


def fixed_mask(kind: str, d: int) -> np.ndarray:
    """(G, d) bool: True where the member takes that player from B (not for permutation walks)."""
    if kind in ("sobol", "sobol2"):
        a_b = np.array([[False] * d, [True] * d])
        ab = np.eye(d, dtype=bool)
        mask = np.concatenate([a_b, ab] + ([~ab] if kind == "sobol2" else []))
        return mask
    if kind == "shapley-exact":
        g = np.arange(2**d)[:, None]
        return ((g >> np.arange(d)[None, :]) & 1) == 0
    raise ValueError(f"no fixed mask for design kind {kind!r}")


def permutation_walk_mask(permutations: np.ndarray) -> np.ndarray:
    """(r, d+1, d) bool for walks z_0 = A ... z_d = B given (r, d) player orders.

    Member k takes player p from B when p is among the first k players of the order.
    """
    r, d = permutations.shape
    rank = np.empty_like(permutations)
    np.put_along_axis(rank, permutations, np.arange(d)[None, :].repeat(r, 0), axis=1)
    k = np.arange(d + 1)[None, :, None]
    return rank[:, None, :] < k


def lehmer_orders(u: np.ndarray) -> np.ndarray:
    """Player orders (r, d) int64 from points u (r, d-1) in [0, 1)^(d-1), digit by digit.

    Factorial number system (Lehmer code): position j takes the floor(u_j (d - j))-th player not yet
    placed, the last position the one left. A uniform u gives a uniform order; a stratified u
    stratifies which players come first.
    """
    r, d = u.shape[0], u.shape[1] + 1
    left = np.tile(np.arange(d, dtype=np.int64), (r, 1))            # players not yet placed, ascending
    out = np.empty((r, d), dtype=np.int64)
    rows = np.arange(r)
    for j in range(d - 1):
        pick = np.minimum((u[:, j] * (d - j)).astype(np.int64), d - j - 1)
        out[:, j] = left[rows, pick]
        keep = np.ones(left.shape, dtype=bool)
        keep[rows, pick] = False
        left = left[keep].reshape(r, d - j - 1)
    out[:, d - 1] = left[:, 0]
    return out


def permutation_orders(r: int, d: int, seed: Sequence[int]) -> np.ndarray:
    """Quasi-random player orders (r, d) int64 for the r rows of one block.

    The first r points of a scrambled Sobol' sequence of dimension d - 1 of its own (seeded by
    ``seed``, independent of the block's A/B points) mapped by :func:`lehmer_orders`: each row's
    order is uniform, and with r a power of two every player comes first r/d ± 2 times (each
    1/r-stratum of the first coordinate holds one point), where i.i.d. orders spread by ±sqrt(r/d).
    Blocks with independent seeds stay independent replicates. Quasi-random orders in the spirit
    of Mitchell et al. 2022 (JMLR 23).
    """
    if d == 1:
        return np.zeros((r, 1), dtype=np.int64)
    u = qmc.Sobol(d - 1, scramble=True, seed=np.random.default_rng(list(seed))).random(r)
    return lehmer_orders(u)
