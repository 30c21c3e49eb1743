"""Sets of design-block indices kept as ranges, so that a run's bookkeeping does not grow with N.

A run at N = 2**26 has millions of design blocks. Holding their indices as Python lists and sets
cost about 120 bytes per block (1.6 GB and more at N = 2**26, measured: see bench/bench_memory.py).
The blocks a run has finished are, by construction of the lockstep schedule, one range ``[0, c)``
(also after a resume on another number of ranks), so a :class:`BlockSet` stores sorted, disjoint,
half-open ranges ``[start, stop)`` and its memory is proportional to the number of ranges, not of
blocks. Its plain form, :attr:`BlockSet.ranges`, is a ``(k, 2)`` int64 array: what a checkpoint stores.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import numpy as np


class BlockSet:
    """A set of non-negative block indices, stored as sorted disjoint ranges ``[start, stop)``.

    Build it from ranges (``BlockSet([[0, 10], [12, 13]])``), from indices
    (:meth:`from_blocks`) or from a boolean mask (:meth:`from_mask`). Supports ``len`` (number of
    blocks), ``in``, iteration in increasing order (lazy), ``|`` (union) and ``==``. Immutable.
    """

    __slots__ = ("_starts", "_stops")

    def __init__(self, ranges: Any = ()) -> None:
        """``ranges``: pairs ``(start, stop)`` or a (k, 2) integer array; overlapping and adjacent ranges merge.

        Raises ValueError for anything that is not a list of integer pairs with 0 <= start <= stop.
        """
        if isinstance(ranges, np.ndarray) and ranges.dtype.kind in "iu" and ranges.ndim == 2 and ranges.shape[1] == 2:
            values = ranges.astype(np.int64)
        else:
            if isinstance(ranges, np.ndarray):
                ranges = ranges.tolist()
            pairs = list(ranges)
            if any(not isinstance(p, (list, tuple, np.ndarray)) or len(p) != 2 for p in pairs):
                raise ValueError("block ranges must be (start, stop) pairs")
            try:
                values = np.array([[_index(a), _index(b)] for a, b in pairs], dtype=np.int64).reshape(-1, 2)
            except (TypeError, ValueError, OverflowError) as error:
                raise ValueError(f"block ranges must hold integers: {error}") from None
        if (values[:, 0] < 0).any() or (values[:, 0] > values[:, 1]).any():
            raise ValueError("block ranges must satisfy 0 <= start <= stop")
        self._starts, self._stops = _normalise(values[:, 0], values[:, 1])

    @classmethod
    def _from_arrays(cls, starts: np.ndarray, stops: np.ndarray) -> "BlockSet":
        new = cls.__new__(cls)
        new._starts, new._stops = _normalise(starts, stops)
        return new

    @classmethod
    def from_blocks(cls, blocks: Iterable[int]) -> "BlockSet":
        """The set of the given block indices (any order, duplicates allowed)."""
        if isinstance(blocks, BlockSet):
            return blocks
        values = np.unique(np.fromiter((_index(k) for k in blocks), dtype=np.int64))
        if values.size and values[0] < 0:
            raise ValueError(f"block indices must be >= 0, got {int(values[0])}")
        return cls._from_arrays(values, values + 1)

    @classmethod
    def from_mask(cls, mask: Any) -> "BlockSet":
        """The indices where a 1-d boolean mask is true (e.g. an accumulator's ``blocks_seen``)."""
        flags = np.ascontiguousarray(mask, dtype=bool).reshape(-1)
        if flags.size == 0:
            return cls()
        # runs of equal flags, found with one int8 temporary of the mask's size (no int64 copies)
        bounds = np.concatenate(([0], np.flatnonzero(np.diff(flags.view(np.int8))) + 1, [flags.size]))
        starts, stops = bounds[:-1], bounds[1:]
        true = flags[starts]
        return cls._from_arrays(starts[true], stops[true])

    @property
    def ranges(self) -> np.ndarray:
        """(k, 2) int64: the sorted disjoint ranges ``[start, stop)`` (a copy; what checkpoints store)."""
        return np.stack([self._starts, self._stops], axis=1).reshape(-1, 2)

    def __len__(self) -> int:
        return int((self._stops - self._starts).sum())

    def __bool__(self) -> bool:
        return self._starts.size > 0

    def __contains__(self, k: object) -> bool:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            return False
        i = int(np.searchsorted(self._stops, k, side="right"))
        return i < self._starts.size and int(self._starts[i]) <= k

    def __iter__(self) -> Iterator[int]:
        for start, stop in zip(self._starts.tolist(), self._stops.tolist()):
            yield from range(start, stop)

    def __or__(self, other: "BlockSet") -> "BlockSet":
        other = other if isinstance(other, BlockSet) else BlockSet.from_blocks(other)
        return BlockSet._from_arrays(np.concatenate([self._starts, other._starts]),
                                     np.concatenate([self._stops, other._stops]))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockSet):
            return NotImplemented
        return np.array_equal(self._starts, other._starts) and np.array_equal(self._stops, other._stops)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(f"[{a}, {b})" for a, b in self.ranges[:4].tolist())
        more = f", … ({self._starts.size} ranges)" if self._starts.size > 4 else ""
        return f"BlockSet({shown}{more})"

    def count_in(self, blocks: range) -> int:
        """How many members of ``blocks`` (a range with positive step) are in this set, without listing them."""
        if blocks.step <= 0:
            raise ValueError("count_in needs a range with a positive step")

        def below(x: np.ndarray) -> np.ndarray:  # members of ``blocks`` that are < x
            return np.clip(-(-(np.minimum(x, blocks.stop) - blocks.start) // blocks.step), 0, len(blocks))

        return int((below(self._stops) - below(self._starts)).sum())

    def pending(self, blocks: range) -> "PendingBlocks":
        """The members of ``blocks`` not in this set: a lazy, sized view (nothing is listed)."""
        return PendingBlocks(blocks, self)


class PendingBlocks:
    """The members of a block range that are not in a :class:`BlockSet`, in increasing order.

    ``len`` is computed from the ranges and iteration is lazy, so the view takes the same memory for
    ten blocks or for a hundred million.
    """

    __slots__ = ("blocks", "finished")

    def __init__(self, blocks: range, finished: BlockSet) -> None:
        if blocks.step <= 0:
            raise ValueError("pending blocks need a range with a positive step")
        self.blocks, self.finished = blocks, finished

    def __len__(self) -> int:
        return len(self.blocks) - self.finished.count_in(self.blocks)

    def __iter__(self) -> Iterator[int]:
        starts, stops = self.finished._starts, self.finished._stops
        step, stop, k = self.blocks.step, self.blocks.stop, self.blocks.start
        i = int(np.searchsorted(stops, k, side="right"))  # the first range that ends after k
        while k < stop:
            if i < starts.size and int(starts[i]) <= k:  # k is finished: jump past this range, on the same stride
                k += -(-(int(stops[i]) - k) // step) * step
                i = int(np.searchsorted(stops, k, side="right"))
                continue
            yield k
            k += step
            while i < starts.size and int(stops[i]) <= k:
                i += 1

    def __repr__(self) -> str:
        return f"PendingBlocks({self.blocks!r} less {self.finished!r})"


def _index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{value!r} is not an integer block index")
    return int(value)


def _normalise(starts: np.ndarray, stops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint, non-adjacent, non-empty ranges covering the same blocks."""
    starts, stops = np.asarray(starts, dtype=np.int64), np.asarray(stops, dtype=np.int64)
    keep = stops > starts
    starts, stops = starts[keep], stops[keep]
    if starts.size == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    starts, stops = starts[order], stops[order]
    reach = np.maximum.accumulate(stops)
    begins = np.concatenate(([True], starts[1:] > reach[:-1]))  # a gap before this range: a new one starts
    first = np.flatnonzero(begins)
    return starts[first].copy(), np.maximum.reduceat(stops, first)
