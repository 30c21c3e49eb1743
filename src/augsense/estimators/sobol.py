"""Streaming pick-freeze Sobol indices for many outputs at once.

First order: Saltelli et al. 2010 (CPC 181), V_i = mean(f_B (f_AB_i - f_A)); total order: Jansen
1999 (CPC 117), VT_i = mean((f_A - f_AB_i)^2) / 2; second order: Saltelli 2002 (CPC 145),
V_ij = mean(f_BA_i f_AB_j - f_A f_B) - V_i - V_j, as in SALib. Outputs are centred at compute time
(``centre="ab"``: the mean of f_A and f_B, as scipy.stats.sobol_indices; ``centre="all"``: the mean
of all rows, as SALib), exactly, from sums kept at a per-output shift K. Intervals: delta method
on the per-row statistic vectors (see :mod:`augsense.estimators._delta`).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from augsense.design import Design, DesignBlock
from augsense.errors import AugsenseError
from augsense.estimators import _delta
from augsense.estimators._accumulator import (COMPUTE_CHUNK_ELEMENTS, DEAD_TOLERANCE, DesignAccumulator,
                                              _reversed_axes)
from augsense.estimators.results import SensitivityResult


class SobolAccumulator(DesignAccumulator):
    """First, total (and with a ``sobol2`` design second) order Sobol indices of m outputs.

    ``update(block, outputs)`` takes outputs (r, G, m) in the design's member order
    [A, B, AB_1..AB_d (, BA_1..BA_d)]. ``denominator="pooled"`` divides by the variance of
    f_A and f_B pooled; ``"paired"`` by mean((f_A - f_B)^2) / 2, the mean within-pair variance
    (use it when the rows of a group share a nuisance such as the image); its first-order
    numerator is then mean((f_B - (f_A + f_AB_i)/2)(f_AB_i - f_A)), also unbiased for V_i and
    blind to anything the group's rows share. Second order keeps the global centre.
    ``second_order_intervals=False`` keeps no second moments for the pairs (their P (3 + 2q)
    values per output, 47 % of the state at d = 7): S2 estimates stay, their intervals are NaN.
    The layer-level S2 of a grouped sobol2 run keeps its interval either way: its sums ("gp1",
    "gp2") are P * 5 values per group, not per output.
    Memory: O(m d) float64 (O(m d^2) with second order), independent of n; the denominator's
    sums, common to every factor and pair, are kept once per output ("w1", "w2"), not per cell
    (bytes per output: :func:`augsense.estimators.memory.state_bytes_per_output`).
    """

    kinds = ("sobol", "sobol2")
    #: 2: denominator sums stored once per output ("w1", "w2") instead of in every cell of "c"/"p";
    #: 3: with groups and second order, the layer-level pair sums "gp1", "gp2" as well
    layout = 3
    shared_sums = {"c1": "w1", "p1": "w1"}
    group_sums = ("g1", "gp1")
    moments_in_chunk = True
    stat_major_sums = frozenset({"role", "w1", "w2", "c1", "c2", "p1", "p2"})
    #: kernels run along the outputs: on the reference workload (bench/bench_accumulator.py) 2**19..2**22 are
    #: within noise of each other, 1.3x faster than 2**18 at 1 thread and 1.7x at 2 (with :meth:`_per_output`)
    chunk_elements = 1 << 20

    def __init__(self, design: Design, n_outputs: int, *, denominator: Literal["pooled", "paired"] = "pooled",
                 groups: torch.Tensor | None = None, device: torch.device | str | None = None,
                 dead_tolerance: float = DEAD_TOLERANCE, second_order_intervals: bool = True) -> None:
        if denominator not in ("pooled", "paired"):
            raise AugsenseError(f"denominator must be 'pooled' or 'paired', got {denominator!r}")
        if not isinstance(second_order_intervals, bool):
            raise AugsenseError(f"second_order_intervals must be true or false, got {second_order_intervals!r}")
        self.denominator = denominator
        self.second_order_intervals = second_order_intervals
        self._n_den = 2 if denominator == "pooled" else 1
        super().__init__(design, n_outputs, groups=groups, device=device, dead_tolerance=dead_tolerance)

    def _config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"denominator": self.denominator}
        if not self.second_order_intervals:   # absent when true: states of earlier versions keep their config
            config["second_order_intervals"] = False
        return config

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """As the base class. Layout 2 differs from 3 only by the layer-level pair sums of a grouped
        sobol2 run: a layout-2 state of any other run holds the same sums and is read; that one is
        refused by layout ("state has sums in layout 2 of an earlier augsense ...")."""
        if state.get("layout") == 2 and set(state.get("sums", {})) == set(self.sums):
            state = state | {"layout": self.layout}
        super().load_state_dict(state)

    @property
    def _second(self) -> bool:
        return self.design.kind == "sobol2"

    def _pairs(self) -> tuple[list[int], list[int]]:
        i, j = torch.triu_indices(self.design.n_players, self.design.n_players, 1).tolist()
        return i, j

    def _new_sums(self) -> dict[str, torch.Tensor]:
        """Per-output sums stat-major (outputs last, see ``stat_major_sums``); the state has them output-major:
        "role" (m, G), "w1" (m, q), "w2" (m, T(q)), "c1" (m, d, 3), "c2" (m, d, T(3) + 3q), "p1" (m, P, 2),
        "p2" (m, P, T(2) + 2q); the group sums (ng, k, p) are kept as in the state."""
        m, d, G, q = self.n_outputs, self.design.n_players, self.design.group_size, self._n_den
        # cells: per factor [f_B D, D, D^2/2] (paired: [e D - D^2/2, D, D^2/2]), per pair [y, t]; all
        # share the denominator terms w = [q, s] (paired: [e^2/2]); x2 = [own triangle, own x w]
        sums = {"role": self._zeros(G, m), "w1": self._zeros(q, m), "w2": self._zeros(_delta.n_triangle(q), m),
                "c1": self._zeros(3, d, m), "c2": self._zeros(_delta.n_triangle(3) + 3 * q, d, m)}
        if self._second:
            n_pairs = d * (d - 1) // 2
            sums["p1"] = self._zeros(2, n_pairs, m)
            if self.second_order_intervals:
                sums["p2"] = self._zeros(_delta.n_triangle(2) + 2 * q, n_pairs, m)
        if self.groups is not None:
            sums |= {"g1": self._zeros(self.n_groups, d, 3), "g2": self._zeros(self.n_groups, d, 6)}
            if self._second:   # per pair [(f_BA_i - f_B)(f_AB_j - f_A), (f_A - f_B)^2 / 2], see _aggregate
                n_pairs = d * (d - 1) // 2
                sums |= {"gp1": self._zeros(self.n_groups, n_pairs, 2),
                         "gp2": self._zeros(self.n_groups, n_pairs, _delta.n_triangle(2))}
        return sums

    def _den_terms(self, a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
        if self.denominator == "pooled":
            return [0.5 * (a * a + b * b), a + b]
        return [0.5 * (a - b) ** 2]

    def _per_output(self, r: int) -> int:
        """Float64 elements per output that one chunk's update holds at once: the shifted values (r, G),
        three row-wise temporaries (r, d) beside them (D, f_B D and one product), the cells' row sums (3, d)
        and, with second order, the pairs' (2, P) and the group pair term (P); the outer products add in
        place (:func:`_add_outer`) and the pair products go slice by slice (:func:`_pair_products`)."""
        d, G = self.design.n_players, self.design.group_size
        n_pairs = d * (d - 1) // 2 if self._second else 0
        return r * (G + 3 * d) + 3 * d + (2 + (self.groups is not None)) * n_pairs

    def _update_chunk(self, block: DesignBlock, values: torch.Tensor, sl: slice, carry: Any) -> Any:
        """Row sums of every cell's statistics, computed along the outputs, then added with their block
        outer products to the stat-major sums (``moments_in_chunk``): every add is contiguous along the outputs."""
        d = self.design.n_players
        self.sums["role"][:, sl] += values.sum(0)
        a, b = values[:, 0], values[:, 1]                                # (r, mc)
        ab = values[:, 2:2 + d]                                          # (r, d, mc)
        D = ab - a[:, None]
        w = torch.stack([x.sum(0) for x in self._den_terms(a, b)])       # (q, mc)
        c = D.new_empty(3, d, D.shape[-1])                               # stat-major cell sums (3, d, mc)
        bD = b[:, None] * D if self.denominator == "pooled" or self._second else None
        if self.denominator == "pooled":
            torch.sum(bD, 0, out=c[0])
        else:   # e D - D^2/2, e = f_B - f_A
            torch.sum(((b - a)[:, None] - 0.5 * D) * D, 0, out=c[0])
        torch.sum(D, 0, out=c[1])
        torch.sum(D * D, 0, out=c[2])
        c[2] *= 0.5
        self._add_cell("c", c, w, sl)
        self.sums["w1"][:, sl] += w
        _add_outer(self.sums["w2"][:, sl], w, None)
        if not (self._second or self.groups is not None):
            return carry
        if self._second:
            ba = values[:, 2 + d:]                                       # (r, d, mc)
            self._add_cell("p", self._pair_sums(a, b, ab, ba, bD.sum(0), c[1]), w, sl)
        if self.groups is not None:
            # shift-invariant companions for the group intervals (same expectations), row sums (k, mc)
            terms = [((b[:, None] - 0.5 * (a[:, None] + ab)) * D).sum(0), c[2], (0.5 * (a - b) ** 2).sum(0)[None]]
            if self._second:   # pure second-order V_ij of the pairs i < j (see _aggregate)
                terms.append(_pair_products(ba - b[:, None], D))        # (P, mc)
            carry = [self._group_sum(x, sl, None if carry is None else carry[k], dim=1)
                     for k, x in enumerate(terms)]
        return carry

    @staticmethod
    def _pair_sums(a: torch.Tensor, b: torch.Tensor, ab: torch.Tensor, ba: torch.Tensor, sbD: torch.Tensor,
                   sD: torch.Tensor) -> torch.Tensor:
        """Row sums (2, P, mc) of the pair statistics y = f_BA_i f_AB_j - f_A f_B - f_B D_i - f_B D_j and
        t = f_BA_i + f_AB_j - f_A - f_B - D_i - D_j (pairs i < j), from the block's a, b (r, mc), ab, ba
        (r, d, mc) and the row sums sbD = sum f_B D, sD = sum D (d, mc); pair by pair of slices, no gathers."""
        d, mc = ab.shape[1:]
        pair = ab.new_empty(2, d * (d - 1) // 2, mc)
        _pair_products(ba, ab, out=pair[0])
        s_a_b, s_ab, s_ba, s_a_plus_b = (a * b).sum(0), ab.sum(0), ba.sum(0), (a + b).sum(0)
        k = 0
        for i in range(d - 1):
            seg, j = slice(k, k + d - 1 - i), slice(i + 1, d)
            pair[0, seg] -= (s_a_b + sbD[i]) + sbD[j]
            torch.sub(s_ba[i] + s_ab[j], s_a_plus_b, out=pair[1, seg])
            pair[1, seg] -= sD[i] + sD[j]
            k = seg.stop
        return pair

    def _add_cell(self, cell: str, s: torch.Tensor, w: torch.Tensor, sl: slice) -> None:
        """Add one block's cell sums s (p, k, mc) to "<cell>1" (p, k, m) and their outer products
        [triangle, s x w] (see :func:`_delta.block_outer`) to "<cell>2" (T(p) + p q, k, m)."""
        self.sums[cell + "1"][..., sl] += s
        if cell + "2" in self.sums:
            _add_outer(self.sums[cell + "2"][..., sl], s, w)

    def _finish_block(self, carry: Any) -> None:
        if carry is not None:                                            # [(d, ng), (d, ng), (1, ng)]
            d = carry[0].shape[0]
            self.sums["g1"] += torch.stack([carry[0], carry[1], carry[2].expand(d, -1)], -1).transpose(0, 1)
            if len(carry) > 3:                                           # + [(P, ng)]: sobol2
                P = carry[3].shape[0]
                self.sums["gp1"] += torch.stack([carry[3], carry[2].expand(P, -1)], -1).transpose(0, 1)

    def _shift_map(self, delta: torch.Tensor, p: int, coupled: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Affine map of a cell vector [stat, partner, ..., den] when every value moves by delta (m,)."""
        m = delta.shape[0]
        M = torch.eye(p, dtype=torch.float64, device=delta.device).repeat(m, 1, 1)
        c = torch.zeros(m, p, dtype=torch.float64, device=delta.device)
        M[:, 0, 1] = delta                      # b D -> b D + delta D ; y -> y + delta t
        if self.denominator == "pooled":
            q, s = p - 2, p - 1
            M[:, q, s] = delta                  # q -> q + delta s + delta^2
            c[:, q] = delta * delta
            c[:, s] = 2 * delta                 # s -> s + 2 delta
        return M[:, None], c[:, None]

    def _reshift_sums(self, sums: dict[str, torch.Tensor], n: int, delta: torch.Tensor,
                      rows_per_block: float) -> dict[str, torch.Tensor]:
        sums = dict(sums)
        sums["role"] = sums["role"] + n * delta
        q = self._n_den
        cells = ("c", "p") if self._second else ("c",)
        new = {k: torch.empty_like(sums[k]) for c in cells for k in (c + "1", c + "2") if k in sums} | {
            "w1": sums["w1"].clone(), "w2": sums["w2"].clone()}

        def put(name: str, sl: slice, x: torch.Tensor) -> None:   # x (mc, ...) output-major into new[name]
            new[name][..., sl] = _reversed_axes(x)

        for sl in self._chunks(4 * self.design.n_players ** 2 * (3 + q) ** 2, COMPUTE_CHUNK_ELEMENTS):
            w1, w2 = self._output_major("w1", sl, sums), self._output_major("w2", sl, sums)
            for c in cells:
                s1 = self._output_major(c + "1", sl, sums)
                if c + "2" not in sums:   # no second moments (second_order_intervals=False): first moments only
                    full1 = torch.cat([s1, w1[:, None].expand(-1, s1.shape[1], q)], -1)
                    M, shift = self._shift_map(delta[sl], full1.shape[-1], 1)
                    put(c + "1", sl, ((M @ full1[..., None])[..., 0] + n * shift)[..., :-q])
                    continue
                full1, full2 = _delta.join_shared(s1, self._output_major(c + "2", sl, sums), w1, w2)
                if c == "p" or self.denominator == "pooled":   # the paired first-order cell is shift-invariant
                    M, shift = self._shift_map(delta[sl], full1.shape[-1], 1)
                    full1, full2 = _delta.reshift(full1, full2, n, M, shift, rows_per_block)
                new_s1, new_s2, new_w1, new_w2 = _delta.split_shared(full1, full2, q)
                put(c + "1", sl, new_s1)
                put(c + "2", sl, new_s2)
                if c == "c":   # the shared sums move with the first cells (every cell holds the same copy)
                    put("w1", sl, new_w1)
                    put("w2", sl, new_w2)
        return sums | new

    def _variance(self, mu_den: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Denominator V (...) and its gradient (..., n_den) from the means of its terms."""
        if self.denominator == "pooled":
            q, s = mu_den[..., 0], mu_den[..., 1]
            return q - 0.25 * s * s, torch.stack([torch.ones_like(q), -0.5 * s], -1)
        return mu_den[..., 0], torch.ones_like(mu_den)

    def compute(self, confidence: float = 0.95, *, centre: Literal["ab", "all"] = "ab") -> SensitivityResult:
        """Indices with delta-method intervals; ``centre`` picks the centring of the Saltelli numerators.

        Works through the outputs in chunks: memory beyond the state is the result arrays.
        """
        z = _delta.z_value(confidence, self.n_blocks_seen)
        n = self.n
        if n < 2:
            raise AugsenseError(f"need at least 2 base rows to compute indices, have {n}; add more blocks")
        if centre not in ("ab", "all"):
            raise AugsenseError(f"centre must be 'ab' or 'all', got {centre!r}")
        d, p = self.design.n_players, 3 + self._n_den
        per_output = 4 * d * p * p + (4 * len(self._pairs()[0]) * (p - 1) ** 2 + 3 * d * d if self._second else 0)
        fields = self._gather(per_output, lambda sl: self._compute_outputs(sl, z, centre))
        res = SensitivityResult(n=n, confidence=confidence, **fields)
        if self.groups is not None:
            res.aggregated = _to_numpy(self._aggregate(torch.from_numpy(res.dead).to(self.device), confidence, z))
        return res

    def _compute_outputs(self, sl: slice, z: float, centre: str) -> dict[str, torch.Tensor | None]:
        """The result fields of the outputs sl (see :meth:`compute`)."""
        n, om = self.n, self._output_major
        role = om("role", sl) / n
        e = role[:, :2].mean(1) if centre == "ab" else role.mean(1)     # centre - K, (mc,)
        w1, w2 = om("w1", sl), om("w2", sl)
        c1, c2 = _delta.join_shared(om("c1", sl), om("c2", sl), w1, w2)
        mu = c1 / n
        cov = _delta.covariance(c1, c2, n, self.n_blocks_seen)
        V, dV = self._variance(mu[:, 0, 3:])                            # (mc,), (mc, n_den)
        mean = self.shift[sl] + role[:, :2].mean(1)
        dead = self._dead(V, mean)
        Vs = torch.where(dead, torch.nan, V)[:, None]
        e1 = e if self.denominator == "pooled" else torch.zeros_like(e)   # paired numerator needs no centre
        V1 = mu[..., 0] - e1[:, None] * mu[..., 1]
        VT = mu[..., 2]
        S1, ST = V1 / Vs, VT / Vs
        zero = torch.zeros_like(S1)
        dden1 = -(S1 / Vs)[..., None] * dV[:, None]
        ddenT = -(ST / Vs)[..., None] * dV[:, None]
        g1 = torch.cat([torch.stack([1 / Vs.expand_as(S1), (-e1[:, None] / Vs).expand_as(S1), zero], -1), dden1], -1)
        gT = torch.cat([torch.stack([zero, zero, 1 / Vs.expand_as(S1)], -1), ddenT], -1)
        fields = {"mean": mean, "variance": V, "cv": torch.where(dead, torch.nan, V.clamp_min(0).sqrt() / mean.abs()),
                  "dead": dead, "first_order": S1, "total_order": ST,
                  "first_order_ci": _delta.interval(S1, _delta.standard_error(g1, cov, n), z),
                  "total_order_ci": _delta.interval(ST, _delta.standard_error(gT, cov, n), z),
                  "first_order_variance": V1, "total_order_variance": VT}
        if self._second:
            fields["second_order"], fields["second_order_ci"] = self._second_order(sl, w1, w2, e, Vs, dV, z)
        return fields

    def _second_order(self, sl: slice, w1: torch.Tensor, w2: torch.Tensor, e: torch.Tensor, Vs: torch.Tensor,
                      dV: torch.Tensor, z: float) -> tuple[torch.Tensor, torch.Tensor]:
        """S2 (mc, d, d) and its interval (2, mc, d, d) of the outputs sl, NaN on the diagonal."""
        n, d = self.n, self.design.n_players
        p1 = self._output_major("p1", sl)
        mu = p1 / n
        S2 = (mu[..., 0] - e[:, None] * mu[..., 1]) / Vs                # (mc, P)
        if self.second_order_intervals:
            p1, p2 = _delta.join_shared(p1, self._output_major("p2", sl), w1, w2)
            cov = _delta.covariance(p1, p2, n, self.n_blocks_seen)
            grad = torch.cat([torch.stack([1 / Vs.expand_as(S2), (-e[:, None] / Vs).expand_as(S2)], -1),
                              -(S2 / Vs)[..., None] * dV[:, None]], -1)
            ci = _delta.interval(S2, _delta.standard_error(grad, cov, n), z)
        else:
            ci = torch.full((2,) + S2.shape, torch.nan, dtype=torch.float64, device=self.device)
        pi, pj = self._pairs()
        mc = S2.shape[0]
        full = torch.full((mc, d, d), torch.nan, dtype=torch.float64, device=self.device)
        full_ci = torch.full((2, mc, d, d), torch.nan, dtype=torch.float64, device=self.device)
        full[:, pi, pj] = full[:, pj, pi] = S2
        full_ci[:, :, pi, pj] = full_ci[:, :, pj, pi] = ci
        return full, full_ci

    def _aggregate(self, dead: torch.Tensor, confidence: float, z: float) -> SensitivityResult:
        """Layer-level indices Sum_c V_i^(c) / Sum_c V^(c) (and S2 Sum_c V_ij^(c) / Sum_c V^(c)) with
        delta-method intervals.

        Estimate and interval come from the same group sums of shift-invariant (paired-form)
        per-row statistics, Sum_c (f_B - (f_A + f_AB_i)/2)(f_AB_i - f_A), Sum_c (f_A - f_AB_i)^2 / 2
        and Sum_c (f_A - f_B)^2 / 2, each unbiased for its sum of variances. (Summing the pooled
        per-output estimates instead gives a different estimator, whose spread those sums do not
        describe: its nominal 95 % intervals covered 70 % in tests/test_interval_strength.py.)
        With the paired denominator this equals the sum of the per-output estimates; dead outputs
        keep their rounding-level terms. A group without a live output is dead.

        Second order (sobol2): Sum_c (f_BA_i - f_B)(f_AB_j - f_A) per pair i < j, whose expectation is
        E[f_BA_i f_AB_j] - E[f_BA_i f_A] - E[f_B f_AB_j] + E[f_B f_A] = V_ij^c - V_i - V_j = V_ij, the
        pure interaction that the per-output S2 (Saltelli 2002) estimates, with the same rows; a
        product of two differences, so it needs no centre and sums over outputs of any shift.
        """
        n = self.n
        mu = self.sums["g1"] / n                                          # (ng, d, 3)
        cov = _delta.covariance(self.sums["g1"], self.sums["g2"], n, self.n_blocks_seen)
        N1, NT, W = mu.unbind(-1)                                         # (ng, d) each; W equal along d
        dead = self._group_dead(dead) | ~(W[:, 0] > 0)
        Ws = torch.where(dead[:, None], torch.nan, W)
        S1, ST = N1 / Ws, NT / Ws
        zero = torch.zeros_like(S1)
        g1 = torch.stack([1 / Ws, zero, -S1 / Ws], -1)
        gT = torch.stack([zero, 1 / Ws, -ST / Ws], -1)
        res = SensitivityResult(
            n=n, variance=W[:, 0], dead=dead, confidence=confidence, first_order=S1, total_order=ST,
            first_order_ci=_delta.interval(S1, _delta.standard_error(g1, cov, n), z),
            total_order_ci=_delta.interval(ST, _delta.standard_error(gT, cov, n), z),
            first_order_variance=N1, total_order_variance=NT)
        if self._second:
            res.second_order, res.second_order_ci = self._aggregate_second(dead, z)
        return res

    def _aggregate_second(self, dead: torch.Tensor, z: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer-level S2 (ng, d, d) and its interval (2, ng, d, d) from "gp1"/"gp2", NaN on the diagonal
        and for dead groups (see :meth:`_aggregate`)."""
        n, d = self.n, self.design.n_players
        cov = _delta.covariance(self.sums["gp1"], self.sums["gp2"], n, self.n_blocks_seen)   # (ng, P, 2, 2)
        N2, W = (self.sums["gp1"] / n).unbind(-1)                          # (ng, P) each; W equal along P
        Ws = torch.where(dead[:, None], torch.nan, W)
        S2 = N2 / Ws
        ci = _delta.interval(S2, _delta.standard_error(torch.stack([1 / Ws, -S2 / Ws], -1), cov, n), z)
        pi, pj = self._pairs()
        full = torch.full((self.n_groups, d, d), torch.nan, dtype=torch.float64, device=self.device)
        full_ci = torch.full((2, self.n_groups, d, d), torch.nan, dtype=torch.float64, device=self.device)
        full[:, pi, pj] = full[:, pj, pi] = S2
        full_ci[:, :, pi, pj] = full_ci[:, :, pj, pi] = ci
        return full, full_ci


def _pair_products(x: torch.Tensor, y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Row sums (P, mc) of x_i y_j for the pairs i < j (:meth:`SobolAccumulator._pairs` order) of x, y
    (r, d, mc): one broadcast product per i over the slice j > i (no gathered copies)."""
    r, d, mc = x.shape
    out = x.new_empty(d * (d - 1) // 2, mc) if out is None else out
    k = 0
    for i in range(d - 1):
        torch.sum(x[:, i:i + 1] * y[:, i + 1:], 0, out=out[k:k + d - 1 - i])
        k += d - 1 - i
    return out


def _add_outer(into: torch.Tensor, s: torch.Tensor, w: torch.Tensor | None) -> None:
    """Add the stat-major :func:`_delta.block_outer` of s (p, ...) to into (T(p) [+ p q], ...): row i of
    the triangle s_i s_{i:}, then s_i w (w (q, mc) shared by every cell of s (p, k, mc)), each by one
    in-place multiply-add along the outputs (addcmul_: no temporary)."""
    p = s.shape[0]
    k = 0
    for i in range(p):
        into[k:k + p - i].addcmul_(s[i:i + 1], s[i:])
        k += p - i
    if w is not None:
        wq = w[:, None] if s.dim() == 3 else w
        for i in range(p):
            into[k:k + w.shape[0]].addcmul_(s[i:i + 1], wq)
            k += w.shape[0]


def _to_numpy(res: SensitivityResult) -> SensitivityResult:
    """Move every tensor field of a result (and its aggregate) to CPU numpy float64 / bool."""
    for name, value in vars(res).items():
        if isinstance(value, torch.Tensor):
            setattr(res, name, value.detach().cpu().numpy())
        elif isinstance(value, SensitivityResult):
            _to_numpy(value)
    return res
