"""What every design-based accumulator shares: validation, block bookkeeping, shift, merge, state.

Sums are float64 tensors on the accumulator's device, shifted by a per-output constant K (the
mean of the first block seen) so that large means do not destroy precision; merging re-expresses
the other accumulator's sums in this one's shift exactly (each subclass gives its affine map).
Per-output sums may be kept stat-major inside (``stat_major_sums``: outputs on the last axis, so
every per-block add runs contiguously along the outputs); ``state_dict`` always gives them
output-major (outputs first), the layout every saved state has. Blocks are processed in chunks of
outputs (``CHUNK_ELEMENTS``, or a class's ``chunk_elements``), and
``compute`` works through the outputs in chunks too (``COMPUTE_CHUNK_ELEMENTS``), writing each
chunk's indices into the whole result arrays, so no temporary ever scales with m: a run's memory
is the state (see :mod:`augsense.estimators.memory`) plus the result arrays.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from augsense.design import Design, DesignBlock
from augsense.errors import AugsenseError
from augsense.estimators import _delta

#: target float64 elements per per-chunk temporary (~0.5 MiB: stays in cache and reuses heap memory;
#: measured best of 2**12..2**17 for d = 8, 64-row blocks)
CHUNK_ELEMENTS = 1 << 18
#: target float64 elements per per-chunk temporary of ``compute`` (32 MiB: long enough that the
#: per-chunk Python overhead is negligible, small beside the state of a per-element run)
COMPUTE_CHUNK_ELEMENTS = 1 << 22
#: default relative tolerance below which an output counts as constant (see :func:`dead_outputs`)
DEAD_TOLERANCE = 1e-6


def check_dead_tolerance(tol: float) -> float:
    """Validate a relative dead-output tolerance (0 <= tol < 1)."""
    try:
        tol = float(tol)
    except (TypeError, ValueError) as err:
        raise AugsenseError(f"dead_tolerance must be a number in [0, 1), e.g. 1e-6; got {tol!r}") from err
    if not 0 <= tol < 1:
        raise AugsenseError(f"dead_tolerance must be in [0, 1), e.g. 1e-6 (0 flags only exactly constant "
                            f"outputs); got {tol}")
    return tol


def dead_outputs(variance: torch.Tensor, mean: torch.Tensor, tol: float) -> torch.Tensor:
    """Outputs that are constant up to rounding: variance <= (tol * max(|mean|, tiny))**2 (or NaN).

    float32 activations carry a relative rounding error of ~6e-8, which leaves a spurious variance
    of order (1e-8 * mean)**2 on a unit that does not move; tol = 1e-6 sits well above that and
    far below any meaningful effect. tol = 0 flags only exactly constant outputs.
    """
    scale = mean.abs().clamp_min(torch.finfo(torch.float64).tiny)
    return ~(variance > (tol * scale) ** 2)


class DesignAccumulator:
    """Base class; subclasses define ``kinds``, ``_new_sums``, ``_update_sums``, ``_reshift_sums``."""

    kinds: tuple[str, ...] = ()
    #: version of the layout of ``sums``; a state saved with another layout is refused by name
    layout: int = 1
    #: first-moment sums -> the sums shared by all of their cells (stored once, crossed in the block outer product)
    shared_sums: dict[str, str] = {}
    #: first-moment sums kept per output group (layer), not per output: added once per block by ``_finish_block``
    group_sums: tuple[str, ...] = ("g1",)
    #: per-chunk temporary target; kernels contiguous along the outputs want long chunks
    chunk_elements: int = CHUNK_ELEMENTS
    #: true: ``_update_chunk`` adds each block's outer products to the per-output "x2" sums itself (from the
    #: increments it computes, no before/after copies of "x1"); the group sums still go through ``_finish_block``
    moments_in_chunk: bool = False
    #: per-output sums kept stat-major: the axes of their state layout reversed, e.g. (m, d, p) in the state,
    #: (p, d, m) inside, so a block's chunk adds to ``sums[k][..., sl]``, contiguous along the outputs; read them
    #: output-major with :meth:`_output_major`. Needs ``moments_in_chunk`` (``_block_moments`` slices dim 0)
    stat_major_sums: frozenset[str] = frozenset()

    def __init__(self, design: Design, n_outputs: int, *, groups: torch.Tensor | None = None,
                 device: torch.device | str | None = None, dead_tolerance: float = DEAD_TOLERANCE) -> None:
        if design.kind not in self.kinds:
            raise AugsenseError(
                f"{type(self).__name__} needs a design of kind {' or '.join(self.kinds)}, got {design.kind!r}; "
                "use augsense.estimators.make_accumulator to pick the right class"
            )
        if int(n_outputs) < 1:
            raise AugsenseError(f"n_outputs must be >= 1, got {n_outputs}")
        self.design = design
        self.dead_tolerance = dead_tolerance
        self.n_outputs = int(n_outputs)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.groups: torch.Tensor | None = None
        self.n_groups = 0
        if groups is not None:
            groups = torch.as_tensor(groups)
            if groups.shape != (self.n_outputs,) or groups.dtype not in (torch.int64, torch.int32):
                raise AugsenseError(f"groups must be an integer tensor of shape ({self.n_outputs},), got "
                                    f"{tuple(groups.shape)} {groups.dtype}")
            if groups.numel() and int(groups.min()) < 0:
                raise AugsenseError("group ids must be >= 0")
            self.groups = groups.to(self.device, torch.int64)
            self.n_groups = int(self.groups.max()) + 1
        self._uniform_groups: dict[tuple[int, int], int] = {}   # chunk -> its one group, or -1 (see _group_sum)
        self.n = 0
        self.blocks_seen = np.zeros(design.n_blocks, dtype=bool)
        self.shift: torch.Tensor | None = None
        self.sums: dict[str, torch.Tensor] = self._new_sums()

    @property
    def dead_tolerance(self) -> float:
        """Relative tolerance of :func:`dead_outputs`; settable any time before ``compute``."""
        return self._dead_tolerance

    @dead_tolerance.setter
    def dead_tolerance(self, tol: float) -> None:
        self._dead_tolerance = check_dead_tolerance(tol)

    # -- subclass hooks -------------------------------------------------------------------------
    def _new_sums(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _per_output(self, r: int) -> int:
        """Float64 elements per output that one chunk's update of a block of r rows holds at once (its
        temporaries), for ``_chunks``: a chunk of ``chunk_elements`` such elements."""
        raise NotImplementedError

    def _update_chunk(self, block: DesignBlock, values: torch.Tensor, sl: slice, carry: Any) -> Any:
        """Add values (r, G, mc) float64, already shifted by K, of the outputs sl, to the first-moment
        sums ("x1"; the base class adds the block's "x2"); returns the group carry."""
        raise NotImplementedError

    def _finish_block(self, carry: Any) -> None:
        """Add the per-row group sums collected over the chunks of one block (``carry``)."""

    def _reshift_sums(self, sums: dict[str, torch.Tensor], n: int, delta: torch.Tensor,
                      rows_per_block: float) -> dict[str, torch.Tensor]:
        """Sums of another accumulator (n rows in blocks of ``rows_per_block``; inside layout, see
        ``stat_major_sums``) after adding delta (m,) to all of its shifted values."""
        raise NotImplementedError

    def _config(self) -> dict[str, Any]:
        return {}

    # -- shared protocol ------------------------------------------------------------------------
    def _zeros(self, *shape: int) -> torch.Tensor:
        return torch.zeros(shape, dtype=torch.float64, device=self.device)

    def _output_major(self, name: str, outputs: slice, sums: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Sum ``name`` (of ``sums``, default this accumulator's) of the outputs ``outputs``, output-major
        (mc, ...) as in the state, contiguous whatever the inside layout."""
        x = (self.sums if sums is None else sums)[name]
        return _reversed_axes(x[..., outputs]).contiguous() if name in self.stat_major_sums else x[outputs]

    def _to_state(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Sum ``name`` in the state's layout (output-major): a view of the inside tensor, no copy."""
        return _reversed_axes(x) if name in self.stat_major_sums else x

    def _from_state(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Sum ``name`` of a state (output-major) as kept inside: a contiguous copy, sharing nothing with x."""
        return (_reversed_axes(x) if name in self.stat_major_sums else x).clone(memory_format=torch.contiguous_format)

    def update(self, block: DesignBlock, outputs: torch.Tensor) -> None:
        """Add one design block's outputs (r, G, m), any float dtype and device."""
        outputs = torch.as_tensor(outputs)
        r = block.points.shape[0]
        expected = (r, self.design.group_size, self.n_outputs)
        if tuple(outputs.shape) != expected:
            raise AugsenseError(f"outputs for block {block.index} must have shape (rows, group size, outputs) = "
                                f"{expected}, got {tuple(outputs.shape)}")
        if block.points.shape[1:] != (self.design.group_size, self.design.n_coordinates):
            raise AugsenseError("this block does not come from the accumulator's design")
        if self.blocks_seen[block.index]:
            raise AugsenseError(f"block {block.index} was already added; each block must be added once")
        # a finite float64 sum proves every value finite without an (r, G, m) mask; check before adding anything
        if not bool(torch.isfinite(outputs.sum(dtype=torch.float64))) and not bool(torch.isfinite(outputs).all()):
            bad = (~torch.isfinite(outputs)).nonzero()[0].tolist()
            raise AugsenseError(f"outputs for block {block.index} contain NaN or inf (first at row, member, "
                                f"output = {bad}); fix the model or drop those outputs")
        if self.shift is None:
            self.shift = outputs[:, :2].to(self.device, torch.float64).mean(dim=(0, 1))
        carry = None
        pairs = [] if self.moments_in_chunk else [(a, b) for a, b in self._moment_pairs() if a not in self.group_sums]
        for sl in self._chunks(self._per_output(r)):
            values = outputs[:, :, sl].to(self.device) - self.shift[sl]   # float64: one pass, no float64 copy first
            with self._block_moments(pairs, sl):
                carry = self._update_chunk(block, values, sl, carry)
        with self._block_moments([(a, b) for a, b in self._moment_pairs() if a in self.group_sums], slice(None)):
            self._finish_block(carry)
        self.n += r
        self.blocks_seen[block.index] = True

    def _moment_pairs(self) -> list[tuple[str, str]]:
        """(first, second) moment sums: "x1" holds per-row statistic sums, "x2" block outer products."""
        return [(k, k[:-1] + "2") for k in self.sums if k.endswith("1") and k[:-1] + "2" in self.sums]

    @contextlib.contextmanager
    def _block_moments(self, pairs: list[tuple[str, str]], sl: slice) -> Iterator[None]:
        """Around one block's update of outputs ``sl``, which adds to the first-moment sums only: add
        the outer product of the block's first-moment increment to the second-moment sums (one term
        per block, as :func:`augsense.estimators._delta.covariance` expects)."""
        before = {a: self.sums[a][sl].clone() for a, _ in pairs}
        yield
        inc = {a: self.sums[a][sl] - before[a] for a, _ in pairs}
        for a, b in pairs:
            shared = self.shared_sums.get(a)
            self.sums[b][sl] += _delta.block_outer(inc[a], None if shared is None else inc[shared])

    @property
    def n_blocks_seen(self) -> int:
        """Design blocks added so far (the independent replicates behind the intervals)."""
        return int(self.blocks_seen.sum())

    def _check_compatible(self, other: "DesignAccumulator") -> None:
        if type(other) is not type(self):
            raise AugsenseError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        if other.design.fingerprint() != self.design.fingerprint():
            raise AugsenseError(f"cannot merge accumulators of different designs ({other.design!r} vs "
                                f"{self.design!r}); every shard must use the same kind, dims, n, seed and block_size")
        if other.n_outputs != self.n_outputs or other._config() != self._config():
            raise AugsenseError("cannot merge accumulators with different numbers of outputs or options")
        if (other.groups is None) != (self.groups is None) or (
                self.groups is not None and not torch.equal(other.groups.to(self.device), self.groups)):
            raise AugsenseError("cannot merge accumulators with different output groups")

    def merge(self, other: "DesignAccumulator") -> None:
        """Add another accumulator's sums (same design, outputs, options; disjoint blocks)."""
        self._check_compatible(other)
        overlap = np.flatnonzero(self.blocks_seen & other.blocks_seen)
        if overlap.size:
            raise AugsenseError(f"both accumulators contain blocks {overlap[:5].tolist()}...; shards must be disjoint")
        if other.n == 0:
            return
        other_sums = {k: v.to(self.device) for k, v in other.sums.items()}
        other_shift = other.shift.to(self.device)
        if self.shift is None:
            self.shift = other_shift.clone()
        elif not torch.equal(other_shift, self.shift):
            other_sums = self._reshift_sums(other_sums, other.n, other_shift - self.shift,
                                            other.n / max(other.n_blocks_seen, 1))
        for k, v in other_sums.items():
            self.sums[k] += v
        self.n += other.n
        self.blocks_seen |= other.blocks_seen

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume or merge later (tensors on CPU; sums output-major, as every
        layout saves them, and on a CPU accumulator views of the live sums, not copies)."""
        return {"class": type(self).__name__, "layout": self.layout, "design": self.design.to_dict(), "n_outputs": self.n_outputs,
                "config": self._config(), "n": self.n, "blocks_seen": self.blocks_seen.copy(),
                "shift": None if self.shift is None else self.shift.cpu(),
                "groups": None if self.groups is None else self.groups.cpu(),
                "sums": {k: self._to_state(k, v).cpu() for k, v in self.sums.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore sums saved by :meth:`state_dict` of an accumulator with the same design and options."""
        if state.get("class") != type(self).__name__ or Design.from_dict(state["design"]) != self.design:
            raise AugsenseError(f"state was saved by {state.get('class')} on design {state.get('design')}, "
                                f"not {type(self).__name__} on {self.design!r}")
        if state.get("layout", 1) != self.layout:
            raise AugsenseError(f"state has sums in layout {state.get('layout', 1)} of an earlier augsense; this version "
                                f"keeps {type(self).__name__} sums in layout {self.layout} and cannot read it: start afresh")
        if state["n_outputs"] != self.n_outputs:
            raise AugsenseError(f"state has {state['n_outputs']} outputs, this accumulator {self.n_outputs}")
        if state["config"] != self._config():
            keys = sorted(set(state["config"]) | set(self._config()))
            differ = [f"{k} = {state['config'].get(k, '(default)')!r} in the state, "
                      f"{self._config().get(k, '(default)')!r} here" for k in keys
                      if state["config"].get(k) != self._config().get(k)]
            raise AugsenseError(f"state has other estimator options: {'; '.join(differ)}")
        g = state["groups"]
        if (g is None) != (self.groups is None) or (g is not None and not torch.equal(g.to(self.device), self.groups)):
            raise AugsenseError("state has different output groups")
        seen, n, shift, sums = self._checked_progress(state)
        self.n, self.blocks_seen, self.shift = n, seen, shift
        self.sums = sums

    def _checked_progress(self, state: dict[str, Any]) -> tuple[np.ndarray, int, torch.Tensor | None,
                                                                  dict[str, torch.Tensor]]:
        """(blocks_seen, n, shift, sums) of a state, refused unless they describe what the sums could
        hold: one flag per design block, n = the rows of the flagged blocks, a finite shift once rows were
        added, and exactly this accumulator's sums, each of its shape and finite. A state that passed its
        file's checksum can still be crafted or written by a faulty program; none of it may turn into numbers.
        """
        seen = np.asarray(state["blocks_seen"])
        if seen.shape != (self.design.n_blocks,) or seen.dtype != bool:
            raise AugsenseError(f"state flags {seen.shape} blocks of dtype {seen.dtype}; the design has "
                                f"{self.design.n_blocks} blocks (bool flags)")
        size, total = self.design.block_size, self.design.n
        rows = int(sum(min(size, total - k * size) for k in np.flatnonzero(seen)))
        n = int(state["n"])
        if n != rows:
            raise AugsenseError(f"state counts {n} base rows, but its {int(seen.sum())} finished blocks hold {rows}")
        shift = state["shift"]
        if shift is not None:
            shift = torch.as_tensor(shift).to(self.device, torch.float64)
            if tuple(shift.shape) != (self.n_outputs,) or not bool(torch.isfinite(shift).all()):
                raise AugsenseError(f"state has a shift of shape {tuple(shift.shape)} or non-finite values; "
                                    f"expected ({self.n_outputs},) finite")
        elif n:
            raise AugsenseError(f"state counts {n} base rows but has no shift")
        given = state["sums"]
        if set(given) != set(self.sums):
            raise AugsenseError(f"state has sums {sorted(given)}, this accumulator keeps {sorted(self.sums)}")
        sums = {}
        for name, value in given.items():
            value = torch.as_tensor(value)
            expected = tuple(self._to_state(name, self.sums[name]).shape)
            if tuple(value.shape) != expected:
                raise AugsenseError(f"state sum {name!r} has shape {tuple(value.shape)}, expected {expected}")
            value = value.to(self.device, torch.float64)
            if not bool(torch.isfinite(value).all()):
                raise AugsenseError(f"state sum {name!r} holds NaN or inf; sums of finite outputs cannot")
            sums[name] = self._from_state(name, value)
        return seen.copy(), n, shift, sums

    def _group_sum(self, x: torch.Tensor, outputs: slice, into: torch.Tensor | None, dim: int = 1) -> torch.Tensor:
        """Add x (..., mc along ``dim``, ...) of the outputs ``outputs`` into group sums (n_groups along dim)."""
        if into is None:
            shape = list(x.shape)
            shape[dim] = self.n_groups
            into = x.new_zeros(shape)
        key = (outputs.start, outputs.stop)
        if key not in self._uniform_groups:   # groups are layers: most chunks lie inside one
            g = self.groups[outputs]
            self._uniform_groups[key] = int(g[0]) if g.numel() and bool((g == g[0]).all()) else -1
        g = self._uniform_groups[key]
        if g < 0:
            return into.index_add_(dim, self.groups[outputs], x)
        into.select(dim, g).add_(x.sum(dim))
        return into

    def _dead(self, variance: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        return dead_outputs(variance, mean, self.dead_tolerance)

    def _group_dead(self, dead: torch.Tensor) -> torch.Tensor:
        """Groups without a live output (n_groups,)."""
        live = torch.zeros(self.n_groups, dtype=torch.float64, device=self.device)
        return ~(live.index_add_(0, self.groups, (~dead).to(torch.float64)) > 0)

    def _chunks(self, per_output: int, target: int | None = None) -> list[slice]:
        """Slices along m keeping per-chunk temporaries near ``target`` (default ``chunk_elements``)."""
        step = max(1, (self.chunk_elements if target is None else target) // max(per_output, 1))
        return [slice(s, min(s + step, self.n_outputs)) for s in range(0, self.n_outputs, step)]

    def _gather(self, per_output: int, part: Callable[[slice], dict[str, torch.Tensor | None]]) -> dict[str, Any]:
        """Per-output result fields computed chunk by chunk: ``part(sl)`` gives the fields of the outputs sl
        (outputs along dim 0, along dim 1 for ``*_ci`` (2, mc, ...)); returns whole CPU numpy arrays.

        ``per_output`` is the largest temporary per output, in float64 elements, of one ``part`` call.
        """
        out: dict[str, Any] = {}
        for sl in self._chunks(per_output, COMPUTE_CHUNK_ELEMENTS):
            for name, value in part(sl).items():
                if value is None:
                    out[name] = None
                    continue
                array = value.detach().cpu().numpy()
                axis = 1 if name.endswith("_ci") else 0
                if name not in out:
                    shape = list(array.shape)
                    shape[axis] = self.n_outputs
                    out[name] = np.empty(shape, dtype=array.dtype)
                out[name][(slice(None),) * axis + (sl,)] = array
        return out


def _reversed_axes(x: torch.Tensor) -> torch.Tensor:
    """x (a, ..., z) viewed as (z, ..., a): between the output-major and the stat-major layout of a sum."""
    return x.permute(*range(x.dim() - 1, -1, -1))
