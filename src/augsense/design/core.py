"""Block-addressable pick-freeze designs on scrambled Sobol' points, one randomisation per block.

Rows are never stored: block k (base rows k*block_size ... ) is regenerated from (seed, k) alone,
so shards of a distributed run and resumed runs only exchange block numbers. The base rows of a
block are the first ``block_size`` (a power of two) points of a scrambled Sobol' sequence of
dimension 2D of its own (Owen/LMS scrambling + digital shift seeded by (seed, k),
``scipy.stats.qmc.Sobol``): the first D coordinates are the A matrix, the last D the B matrix
(Saltelli 2010). Blocks are thus independent replicates of a randomised QMC rule (Owen 1997;
L'Ecuyer & Lemieux 2002): their means are i.i.d., which is what makes the intervals honest. A
single long scrambled sequence would be more precise, but its points are dependent and an
interval from the per-row spread overstates its error up to tenfold (measured on planted
networks); blocks trade a little precision for intervals that mean what they say (at least 32
blocks, rows permitting; 8 longer ones for permutation designs, :data:`MIN_BLOCKS_OF_KIND`).
Permutation designs draw the rows' player orders from a scrambled Sobol' net of their own seeded by (seed, k, 1)
(:func:`augsense.design.layouts.permutation_orders`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import qmc

from augsense.design import layouts
from augsense.errors import AugsenseError

_GENERATOR = "scipy-qmc-sobol-scrambled-per-block/v2"
#: How base rows are given images in within-image mode (see :func:`image_assignment`).
_IMAGE_ASSIGNMENT = "kensler-permute/v1"
#: Blocks are the independent replicates behind the intervals: a design has at least this many
#: (rows permitting), so Student's t has >= 31 degrees of freedom.
MIN_BLOCKS = 32
#: Kinds that trade replicates for longer blocks (Student's t then has >= 7 degrees of freedom).
#: Permutation walks gain most from long scrambled nets: on Ishigami at n = 64 ... 512 base rows,
#: 8 blocks instead of 32 cut the mean squared error by 20-30 % (a smooth integrand of the 2D
#: coordinates, which blocks of a few rows hardly stratify), and t_7 keeps the coverage nominal.
MIN_BLOCKS_OF_KIND = {"shapley-permutation": 8}
#: The longest design: 2**30 base rows (Kensler's permutation works on 32-bit words).
MAX_BASE_ROWS = 2**30


def _kensler_permute(i: np.ndarray, n: int, key: int) -> np.ndarray:
    """A keyed pseudo-random bijection of [0, n) for n a power of two, evaluated pointwise.

    Kensler 2013, "Correlated Multi-Jittered Sampling" (Pixar tech. memo 13-01), ``permute``: every
    step (xor with the key, multiplication by an odd constant, xor-shift of the masked bits) is a
    bijection of the low log2(n) bits, and the right shifts fold high bits into low ones, so the
    image of ``i mod k`` is not tied to the low bits of ``i``. i: (r,) integers in [0, n) → (r,).
    """
    w = np.uint32(n - 1)
    p = np.uint32(key)
    x = np.asarray(i).astype(np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ p
        x = x * np.uint32(0xE170893D)
        x = x ^ (p >> np.uint32(16))
        x = x ^ ((x & w) >> np.uint32(4))
        x = x ^ (p >> np.uint32(8))
        x = x * np.uint32(0x0929EB3F)
        x = x ^ (p >> np.uint32(23))
        x = x ^ ((x & w) >> np.uint32(1))
        x = x * (np.uint32(1) | (p >> np.uint32(27)))
        x = x * np.uint32(0x6935FA69)
        x = x ^ ((x & w) >> np.uint32(11))
        x = x * np.uint32(0x74DCB303)
        x = x ^ ((x & w) >> np.uint32(2))
        x = x * np.uint32(0x9E501CC3)
        x = x ^ ((x & w) >> np.uint32(2))
        x = x * np.uint32(0xC860A3DF)
        x = x & w
        x = x ^ (x >> np.uint32(5))
        return ((x.astype(np.uint64) + np.uint64(p)) & np.uint64(w)).astype(np.int64)


def image_assignment(base_rows: np.ndarray, n_images: int, *, n: int, seed: int) -> np.ndarray:
    """The image of each base row in within-image mode: ``sigma(pi(row) mod n_images)``.

    ``pi`` is a seeded pseudo-random permutation of the n base rows (:func:`_kensler_permute`) and
    ``sigma`` a seeded permutation of the images (so with n < n_images a random subset is used), so
    every image gets floor(n / n_images) or one more rows (exactly balanced when n_images divides n)
    and which rows an image gets is unrelated to the digit structure of the Sobol' points (a plain
    ``row mod n_images`` ties each image to one half of some coordinates). base_rows: (r,) → (r,) int64.
    """
    if n_images < 1:
        raise AugsenseError("within-image mode needs at least one image")
    rng = np.random.default_rng([int(seed), 2])
    key = int(rng.integers(0, 2**32))
    images = rng.permutation(int(n_images))  # with n < n_images, a random subset of the images is used
    return images[_kensler_permute(base_rows, int(n), key) % int(n_images)]


@dataclass(frozen=True)
class DesignBlock:
    """One block of base rows of a design.

    index: block number k; base_rows: (r,) int64 global base-row indices; points: (r, G, D)
    float64 unit-cube coordinates, G evaluations per base row; permutations: (r, d) int64 player
    orders (permutation designs only, else None).
    """

    index: int
    base_rows: np.ndarray
    points: np.ndarray
    permutations: np.ndarray | None


class Design:
    """A pick-freeze design: ``kind`` in {"sobol", "sobol2", "shapley-exact", "shapley-permutation"}.

    ``dims`` gives the number of unit-cube coordinates owned by each of the d players (factors);
    pick-freeze swaps all coordinates of a player together (group indices). See
    :mod:`augsense.design.layouts` for the order of the G members of each group. ``block_size`` is
    rounded down to a power of two and to at most n / MIN_BLOCKS (at least 1), so every block has the
    same number of rows, is a balanced scrambled net, and there are enough blocks (independent
    replicates) for the intervals; permutation designs need only n / 8 blocks
    (:data:`MIN_BLOCKS_OF_KIND`).
    """

    def __init__(self, kind: str, dims: Sequence[int], n: int, *, seed: int = 0, block_size: int = 64) -> None:
        if kind not in layouts.KINDS:
            raise AugsenseError(f"unknown design kind {kind!r}; choose one of {', '.join(layouts.KINDS)}")
        dims = tuple(int(x) for x in dims)
        if not dims or any(x < 1 for x in dims):
            raise AugsenseError(f"dims must list at least one player, each with >= 1 coordinate; got {dims}")
        n = int(n)
        if n > MAX_BASE_ROWS:
            raise AugsenseError(f"n = {n} base rows is beyond 2**30, the longest design this version supports")
        if n < 2 or n & (n - 1):
            lower = 1 << max(1, n.bit_length() - 1)
            raise AugsenseError(
                f"n = {n} base rows: n must be a power of two >= 2 to keep the balance of Sobol' points; "
                f"use n = {lower} or {lower * 2}"
            )
        if block_size < 1:
            raise AugsenseError(f"block_size must be >= 1, got {block_size}")
        # a power of two (equal, balanced blocks), and at least min_blocks blocks (replicates) when n allows
        min_blocks = min_blocks_of(kind)
        block_size = 1 << (int(min(block_size, max(1, n // min_blocks))).bit_length() - 1)
        if kind == "shapley-exact" and len(dims) > 12:
            raise AugsenseError(
                f"exact Shapley needs 2**d = 2**{len(dims)} evaluations per row; use kind='shapley-permutation'"
            )
        if int(seed) < 0:
            raise AugsenseError(f"seed must be a non-negative integer, got {seed}")
        self.kind = kind
        self.dims = dims
        self.n = n
        self.seed = int(seed)
        self.block_size = block_size
        self.min_blocks = min_blocks
        self.n_players = len(dims)
        self.n_coordinates = sum(dims)
        self.group_size = layouts.group_size(kind, self.n_players)
        self.roles = layouts.roles(kind, self.n_players)
        self.n_blocks = -(-n // self.block_size)
        self.n_evaluations = n * self.group_size
        self._owner = np.repeat(np.arange(self.n_players), dims)  # (D,) player of each coordinate

    def __repr__(self) -> str:
        return (f"Design(kind={self.kind!r}, dims={self.dims}, n={self.n}, seed={self.seed}, "
                f"block_size={self.block_size})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Design) and self.fingerprint() == other.fingerprint()

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def _base_points(self, k: int, count: int) -> np.ndarray:
        """The ``count`` base points of block k: the start of a scrambled Sobol' sequence of its own.

        Every block is an independent randomisation (Owen/LMS scrambling + digital shift seeded by
        (seed, k)), so block means are independent and identically distributed: their spread gives
        honest intervals (:mod:`augsense.estimators._delta`), while the points inside a block keep the
        balance of a scrambled net (count is a power of two). O(count) per block, no fast-forward.
        """
        engine = qmc.Sobol(2 * self.n_coordinates, scramble=True, seed=np.random.default_rng([self.seed, k, 0]))
        return engine.random(count)

    def block(self, k: int) -> DesignBlock:
        """Block k, regenerated from (seed, k) alone; points (r, G, D) float64 in [0, 1)."""
        if not 0 <= k < self.n_blocks:
            raise AugsenseError(f"block {k} does not exist; this design has blocks 0..{self.n_blocks - 1}")
        start = k * self.block_size
        r = min(self.block_size, self.n - start)
        base = self._base_points(k, r)
        D = self.n_coordinates
        a, b = base[:, :D], base[:, D:]
        permutations = None
        if self.kind == "shapley-permutation":
            permutations = layouts.permutation_orders(r, self.n_players, seed=[self.seed, k, 1])
            from_b = layouts.permutation_walk_mask(permutations)[:, :, self._owner]  # (r, G, D)
        else:
            from_b = layouts.fixed_mask(self.kind, self.n_players)[None][:, :, self._owner]
        points = np.where(from_b, b[:, None, :], a[:, None, :])
        rows = np.arange(start, start + r, dtype=np.int64)
        return DesignBlock(index=k, base_rows=rows, points=points, permutations=permutations)

    def blocks(self, start: int = 0, stop: int | None = None, step: int = 1) -> Iterator[DesignBlock]:
        """Blocks start, start+step, ... < stop; rank r of W workers takes ``blocks(r, None, W)``."""
        for k in range(start, self.n_blocks if stop is None else min(stop, self.n_blocks), step):
            yield self.block(k)

    def image_of(self, base_rows: np.ndarray, n_images: int) -> np.ndarray:
        """Within-image mode: the image index of each base row (see :func:`image_assignment`)."""
        return image_assignment(base_rows, n_images, n=self.n, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        """Everything that defines the rows and their images (JSON-serialisable)."""
        return {"kind": self.kind, "dims": list(self.dims), "n": self.n, "seed": self.seed,
                "block_size": self.block_size, "generator": _GENERATOR, "image_assignment": _IMAGE_ASSIGNMENT,
                **({"permutation_orders": layouts.PERMUTATION_ORDERS, "min_blocks": self.min_blocks}
                   if self.kind == "shapley-permutation" else {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Design":
        if d.get("generator", _GENERATOR) != _GENERATOR:
            raise AugsenseError(f"design was made by generator {d['generator']!r}, this version has {_GENERATOR!r}")
        assignment = d.get("image_assignment", "row-modulo/v0")  # before v1: image = row mod n_images
        if assignment != _IMAGE_ASSIGNMENT:
            raise AugsenseError(f"design assigns images by {assignment!r} (biased for within-image mode), this "
                                f"version by {_IMAGE_ASSIGNMENT!r}: export the stimuli again")
        orders = d.get("permutation_orders", "iid-argsort/v1")  # before v2: i.i.d. orders per row
        if d["kind"] == "shapley-permutation" and orders != layouts.PERMUTATION_ORDERS:
            raise AugsenseError(f"permutation design draws player orders by {orders!r}, this version by "
                                f"{layouts.PERMUTATION_ORDERS!r} (other rows): start the run again")
        blocks = d.get("min_blocks", MIN_BLOCKS)  # before min_blocks was recorded: 32 for every kind
        if blocks != min_blocks_of(d["kind"]):
            raise AugsenseError(f"design has at least {blocks} blocks of rows, this version at least "
                                f"{min_blocks_of(d['kind'])} (longer blocks, other rows): start the run again")
        return cls(d["kind"], d["dims"], d["n"], seed=d["seed"], block_size=d["block_size"])

    def fingerprint(self) -> str:
        """Stable hash of everything that defines the rows."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def min_blocks_of(kind: str) -> int:
    """The fewest blocks (independent replicates) a design of this kind is cut into, rows permitting."""
    return MIN_BLOCKS_OF_KIND.get(kind, MIN_BLOCKS)


def make_design(kind: str, dims: Sequence[int], n: int, *, seed: int = 0, block_size: int = 64) -> Design:
    """Build a block-addressable design; n (base rows) must be a power of two."""
    return Design(kind, dims, n, seed=seed, block_size=block_size)
