"""Streaming Shapley effects (factor = player) for many outputs at once.

Both estimators work with total variances of factor subsets, T(u) = E[(f(x) - f(x'_u))^2] / 2
where x'_u redraws the factors in u; Shapley effects for the cost T equal those for closed
variances (Song, Nelson & Staum 2016, SIAM/ASA JUQ 4).

- Exact (Plischke, Rabitti & Borgonovo 2021, EJOR 288): per base row all 2**d A/B hybrids f_g.
  f_g and f_{g xor u} differ exactly in the players of u, so T_hat(u) = 2**-d Sum_g (f_g -
  f_{g^u})^2 / 2 uses every hybrid pair; the XOR autocorrelation Sum_g f_g f_{g^u} is two fast
  Walsh-Hadamard transforms (O(d 2**d) per row and output). Closed variances V_v = V - T(~v), their
  Moebius inverse (Harsanyi dividends) and Shapley_i = Sum_{w containing i} dividend(w) / |w| are
  linear in T_hat, so every per-row Shapley numerator is accumulated with its square for CIs.
  ``interactions[i, j]`` is the Shapley interaction index Sum_{w containing i, j} dividend(w) /
  (|w| - 1) (Grabisch & Roubens 1999), its diagonal the Shapley effect.
- Permutation (Goda 2021, RESS 213, read from both ends): per base row an order pi and the walk
  z_0 = A ... z_d = B switching one player to B at a time. Goda's estimator anchored at A gives pi_k
  ((f_A - f_{z_k})^2 - (f_A - f_{z_{k-1}})^2) / 2; the same points read from B are the walk of the
  reversed order anchored at B, giving pi_k ((f_B - f_{z_{k-1}})^2 - (f_B - f_{z_k})^2) / 2. Their
  mean is D_k (f_B - f_A) / 2 with D_k = f_{z_k} - f_{z_{k-1}}: an antithetic pair of orders (pi and
  its reverse) at no extra evaluation, unbiased, summing per row to (f_B - f_A)^2 / 2. It is the
  minimum-norm unbiased quadratic form of the walk's values, and for functions with at most
  pairwise interactions its expectation given the row does not depend on pi (the order adds no
  variance there). On Ishigami it halves the per-evaluation variance of the A-anchored form
  (11.5 -> 5.8, the exact estimator's level). Orders are quasi-random
  (:func:`augsense.design.layouts.permutation_orders`). Cost n (d + 1).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import torch

from augsense.design import Design, DesignBlock
from augsense.errors import AugsenseError
from augsense.estimators import _delta
from augsense.estimators._accumulator import DEAD_TOLERANCE, DesignAccumulator
from augsense.estimators.results import SensitivityResult
from augsense.estimators.sobol import _to_numpy

MAX_EXACT_PLAYERS = 12


#: up to this d the Walsh-Hadamard transform is one matmul with the 2**d x 2**d Sylvester matrix
#: (BLAS beats the log2 butterfly steps: measured 6x at d = 8, 30x at d = 3)
MATMUL_WHT_PLAYERS = 8


@lru_cache(maxsize=None)
def _hadamard(d: int) -> torch.Tensor:
    H = torch.ones(1, 1, dtype=torch.float64)
    for _ in range(d):
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return H


def walsh_hadamard(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh-Hadamard transform along dim 1 of x (r, 2**d, m)."""
    r, n2, m = x.shape
    d = n2.bit_length() - 1
    if d <= MATMUL_WHT_PLAYERS:
        return torch.matmul(_hadamard(d).to(x.device, x.dtype), x)
    h = 1
    while h < n2:
        x = x.reshape(r, n2 // (2 * h), 2, h, m)
        x = torch.cat([x[:, :, :1] + x[:, :, 1:], x[:, :, :1] - x[:, :, 1:]], 2)
        h *= 2
    return x.reshape(r, n2, m)


def subset_moebius(v: torch.Tensor, d: int) -> torch.Tensor:
    """Moebius inverse over subsets along the last dim (2**d): out[w] = Sum_{u in w} (-1)^{|w|-|u|} v[u]."""
    shape = v.shape
    out = v.clone()
    for i in range(d):
        x = out.reshape(*shape[:-1], -1, 2, 1 << i)
        x[..., 1, :] -= x[..., 0, :]
        out = x.reshape(shape)
    return out


@lru_cache(maxsize=None)
def _linear_maps(d: int) -> tuple[np.ndarray, np.ndarray]:
    """Matrices mapping per-row T_hat (2**d,) to Shapley numerators (d, 2**d) and pair interactions (P, 2**d)."""
    n2, full = 1 << d, (1 << d) - 1
    size = np.array([bin(w).count("1") for w in range(n2)])
    members = (np.arange(n2)[:, None] >> np.arange(d)[None, :]) & 1    # (2**d, d)

    def on_t(x: np.ndarray) -> np.ndarray:
        # coefficients on dividends -> on closed variances (superset Moebius) -> on T_hat
        y = x.astype(np.float64).copy()
        for i in range(d):
            y = y.reshape(-1, 2, 1 << i)
            y[:, 0, :] -= y[:, 1, :]
            y = y.reshape(n2)
        coef = np.zeros(n2)
        coef[full] += y.sum()
        np.subtract.at(coef, full - np.arange(n2), y)
        return coef

    shap = np.stack([on_t(np.where(members[:, i] == 1, 1.0 / np.maximum(size, 1), 0.0)) for i in range(d)])
    pi, pj = np.triu_indices(d, 1)
    inter = np.stack([on_t(np.where((members[:, i] & members[:, j]) == 1, 1.0 / np.maximum(size - 1, 1), 0.0))
                      for i, j in zip(pi, pj)]) if d > 1 else np.zeros((0, n2))
    return shap, inter


class _ShapleyAccumulator(DesignAccumulator):
    """Shared sums: per-row Shapley numerators phi (r, d, m) and per-row variance terms (r, m)."""

    chunk_elements = 1 << 20      # (r, G, mc) kernels run along mc: measured 2.5x faster than 2**16

    def _new_sums(self) -> dict[str, torch.Tensor]:
        m, d = self.n_outputs, self.design.n_players
        sums = {"level": self._zeros(m), "c1": self._zeros(m, d, 2), "c2": self._zeros(m, d, 3)}
        if self.groups is not None:
            sums |= {"g1": self._zeros(self.n_groups, d, 2), "g2": self._zeros(self.n_groups, d, 3)}
        return sums

    def _row_terms(self, block: DesignBlock, f: torch.Tensor, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """(phi (r, d, mc), variance term (r, mc)) for the outputs sl, shifted values f (r, G, mc)."""
        raise NotImplementedError

    def _per_output(self, r: int) -> int:
        return r * self.design.group_size * 4

    def _update_chunk(self, block: DesignBlock, values: torch.Tensor, sl: slice, carry: Any) -> Any:
        self.sums["level"][sl] += values.mean(1).sum(0)
        phi, v = self._row_terms(block, values, sl)                    # (r, d, mc), (r, mc)
        self.sums["c1"][sl] += _delta.row_sums_of([phi, v[:, None]]).transpose(0, 1)   # (mc, d, 2)
        if self.groups is None:
            return carry
        return [self._group_sum(x, sl, None if carry is None else carry[k], dim=2)
                for k, x in enumerate((phi, v[:, None]))]

    def _finish_block(self, carry: Any) -> None:
        if carry is not None:                                          # [(r, d, ng), (r, 1, ng)]
            self.sums["g1"] += _delta.row_sums_of(carry).transpose(0, 1)

    def _reshift_sums(self, sums: dict[str, torch.Tensor], n: int, delta: torch.Tensor,
                      rows_per_block: float) -> dict[str, torch.Tensor]:
        return dict(sums) | {"level": sums["level"] + n * delta}   # differences do not move

    def _ratio(self, s1: torch.Tensor, s2: torch.Tensor, n: int, z: float,
               dead: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """mu_phi / mu_V with CI from cells (..., 2) = [phi, V], NaN where dead (broadcast over
        the cells); returns (ratio, ci, mu_phi, mu_V)."""
        mu = s1 / n
        V = mu[..., 1]
        Vs = torch.where(dead | ~(V > 0), torch.nan, V)
        ratio = mu[..., 0] / Vs
        grad = torch.stack([1 / Vs, -ratio / Vs], -1)
        se = _delta.standard_error(grad, _delta.covariance(s1, s2, n, self.n_blocks_seen), n)
        return ratio, _delta.interval(ratio, se, z), mu[..., 0], V

    def compute(self, confidence: float = 0.95) -> SensitivityResult:
        """Shapley effects (shares of variance, summing to 1) with delta-method intervals.

        Works through the outputs in chunks: memory beyond the state is the result arrays.
        """
        z = _delta.z_value(confidence, self.n_blocks_seen)
        n = self.n
        if n < 2:
            raise AugsenseError(f"need at least 2 base rows to compute Shapley effects, have {n}; add more blocks")
        fields = self._gather(self._compute_per_output(), lambda sl: self._compute_outputs(sl, z))
        res = SensitivityResult(n=n, confidence=confidence, **fields)
        if self.groups is not None:
            # live groups keep their dead outputs' rounding-level terms (below tolerance, negligible)
            dead = torch.from_numpy(res.dead).to(self.device)
            gdead = self._group_dead(dead) | ~(self.sums["g1"][:, 0, 1] > 0)
            gsh, gci, gphi, gV = self._ratio(self.sums["g1"], self.sums["g2"], n, z, gdead[:, None])
            res.aggregated = _to_numpy(SensitivityResult(n=n, variance=gV[:, 0], dead=gdead, shapley=gsh,
                                                         shapley_ci=gci, shapley_variance=gphi, confidence=confidence))
        return res

    def _compute_per_output(self) -> int:
        """Largest temporary per output of :meth:`_compute_outputs`, in float64 elements."""
        return 4 * self.design.n_players * 4

    def _compute_outputs(self, sl: slice, z: float) -> dict[str, torch.Tensor | None]:
        """The result fields of the outputs sl (see :meth:`compute`)."""
        n = self.n
        mean = self.shift[sl] + self.sums["level"][sl] / n
        c1 = self.sums["c1"][sl]
        V = c1[:, 0, 1] / n
        dead = self._dead(V, mean)
        sh, ci, phi, _ = self._ratio(c1, self.sums["c2"][sl], n, z, dead[:, None])
        fields = {"mean": mean, "variance": V, "dead": dead, "shapley": sh, "shapley_ci": ci, "shapley_variance": phi,
                  "cv": torch.where(dead, torch.nan, V.clamp_min(0).sqrt() / mean.abs())}
        return fields | self._extra(sl, z, dead, sh, ci)

    def _extra(self, sl: slice, z: float, dead: torch.Tensor, shapley: torch.Tensor,
               shapley_ci: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Further result fields of the outputs sl (none here)."""
        return {}


class ShapleyExactAccumulator(_ShapleyAccumulator):
    """Exact-subset Shapley effects, pairwise interactions and all subset effects of m outputs.

    ``update(block, outputs)`` takes outputs (r, 2**d, m), member g = bitmask of players from A.
    Memory: O(m 2**d + m d^2) float64, independent of n. d <= 12.
    """

    kinds = ("shapley-exact",)
    #: 2: with groups and d >= 2, the layer-level pair sums "gi1", "gi2" as well
    layout = 2
    group_sums = ("g1", "gi1")

    def __init__(self, design: Design, n_outputs: int, *, groups: torch.Tensor | None = None,
                 device: torch.device | str | None = None, dead_tolerance: float = DEAD_TOLERANCE) -> None:
        if design.n_players > MAX_EXACT_PLAYERS:
            raise AugsenseError(f"exact Shapley with d = {design.n_players} factors needs 2**{design.n_players} "
                                f"evaluations per row; use the permutation method for d > {MAX_EXACT_PLAYERS}")
        super().__init__(design, n_outputs, groups=groups, device=device, dead_tolerance=dead_tolerance)
        shap, inter = _linear_maps(design.n_players)
        self._shap_map = torch.as_tensor(shap, device=self.device)
        self._inter_map = torch.as_tensor(inter, device=self.device)

    def _new_sums(self) -> dict[str, torch.Tensor]:
        d = self.design.n_players
        n_pairs = d * (d - 1) // 2
        sums = super()._new_sums() | {"t": self._zeros(self.n_outputs, 1 << d),
                                      "i1": self._zeros(self.n_outputs, n_pairs, 2),
                                      "i2": self._zeros(self.n_outputs, n_pairs, 3)}
        if self.groups is not None and n_pairs:   # layer-level interactions: [interaction, V] per (group, pair)
            sums |= {"gi1": self._zeros(self.n_groups, n_pairs, 2), "gi2": self._zeros(self.n_groups, n_pairs, 3)}
        return sums

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """As the base class. Layout 1 differs from 2 only by the layer-level pair sums of a grouped run
        with d >= 2: a layout-1 state of any other run holds the same sums and is read; that one is
        refused by layout ("state has sums in layout 1 of an earlier augsense ...")."""
        if state.get("layout", 1) == 1 and set(state.get("sums", {})) == set(self.sums):
            state = state | {"layout": self.layout}
        super().load_state_dict(state)

    @property
    def _layer_pairs(self) -> bool:
        return "gi1" in self.sums

    def _update_chunk(self, block: DesignBlock, values: torch.Tensor, sl: slice, carry: Any) -> Any:
        """As the base class; with layer-level pairs the carry is [base carry, group interactions (r, P, ng)]."""
        if not self._layer_pairs:
            return super()._update_chunk(block, values, sl, carry)
        base = super()._update_chunk(block, values, sl, None if carry is None else carry[0])
        return [base, self._group_sum(self._inter_rows, sl, None if carry is None else carry[1], dim=2)]

    def _finish_block(self, carry: Any) -> None:
        if carry is None or not self._layer_pairs:
            return super()._finish_block(carry)
        base, inter = carry                                            # [(r, d, ng), (r, 1, ng)], (r, P, ng)
        super()._finish_block(base)
        self.sums["gi1"] += _delta.row_sums_of([inter, base[1]]).transpose(0, 1)   # (ng, P, 2)

    def _per_output(self, r: int) -> int:
        return r * (self.design.group_size * 4 + self._inter_map.shape[0] * 3)

    def _subset_totals(self, f: torch.Tensor) -> torch.Tensor:
        """Per-row T_hat (r, 2**d, mc) from hybrids f (r, 2**d, mc)."""
        n2 = f.shape[1]
        F = walsh_hadamard(f)
        return (f * f).mean(1, keepdim=True) - walsh_hadamard(F * F) / (n2 * n2)

    def _row_terms(self, block: DesignBlock, f: torch.Tensor, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        T = self._subset_totals(f)
        v = T[:, -1]
        self.sums["t"][sl] += T.sum(0).T
        if self._inter_map.shape[0]:
            inter = torch.einsum("kg,rgm->rkm", self._inter_map, T)
            self.sums["i1"][sl] += _delta.row_sums_of([inter, v[:, None]]).transpose(0, 1)   # (mc, P, 2)
            self._inter_rows = inter                                   # (r, P, mc), for the layer-level sums
        return torch.einsum("kg,rgm->rkm", self._shap_map, T), v

    def _compute_per_output(self) -> int:
        d = self.design.n_players
        return 4 * (1 << d) + 4 * d * d + 4 * (d * (d - 1) // 2) * 4

    def compute(self, confidence: float = 0.95) -> SensitivityResult:
        """As the base class; a grouped run's aggregate also carries layer-level pairwise interactions
        Sum_c I_ij^(c) / Sum_c V^(c) (diagonal: the layer's Shapley effects) with delta-method intervals
        from the same per-row statistics as the per-output ones, summed over each layer's outputs."""
        res = super().compute(confidence)
        if not self._layer_pairs or res.aggregated is None:
            return res
        agg, d = res.aggregated, self.design.n_players
        z = _delta.z_value(confidence, self.n_blocks_seen)
        gdead = torch.as_tensor(agg.dead, device=self.device)
        val, ci, _, _ = self._ratio(self.sums["gi1"], self.sums["gi2"], self.n, z, gdead[:, None])
        ng = val.shape[0]
        inter = np.full((ng, d, d), np.nan)
        inter_ci = np.full((2, ng, d, d), np.nan)
        idx = np.arange(d)
        inter[:, idx, idx], inter_ci[:, :, idx, idx] = agg.shapley, agg.shapley_ci
        pi, pj = np.triu_indices(d, 1)
        val, ci = val.cpu().numpy(), ci.cpu().numpy()
        inter[:, pi, pj] = inter[:, pj, pi] = val
        inter_ci[:, :, pi, pj] = inter_ci[:, :, pj, pi] = ci
        agg.interactions, agg.interactions_ci = inter, inter_ci
        return res

    def _extra(self, sl: slice, z: float, dead: torch.Tensor, shapley: torch.Tensor,
               shapley_ci: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Subset effects (mc, 2**d) and interactions (mc, d, d) with intervals of the outputs sl."""
        d, n = self.design.n_players, self.n
        mc = dead.shape[0]
        T = self.sums["t"][sl] / n
        full = (1 << d) - 1
        closed = T[:, full:full + 1] - T.flip(1)            # V_v = V - T(~v); ~v = full - v
        Vs = torch.where(dead, torch.nan, T[:, full])[:, None]
        inter = torch.full((mc, d, d), torch.nan, dtype=torch.float64, device=self.device)
        inter_ci = torch.full((2, mc, d, d), torch.nan, dtype=torch.float64, device=self.device)
        idx = torch.arange(d)
        inter[:, idx, idx] = shapley
        inter_ci[:, :, idx, idx] = shapley_ci
        if d > 1:
            val, ci, _, _ = self._ratio(self.sums["i1"][sl], self.sums["i2"][sl], n, z, dead[:, None])
            pi, pj = torch.triu_indices(d, d, 1).tolist()
            inter[:, pi, pj] = inter[:, pj, pi] = val
            inter_ci[:, :, pi, pj] = inter_ci[:, :, pj, pi] = ci
        return {"subset_effects": subset_moebius(closed, d) / Vs, "interactions": inter, "interactions_ci": inter_ci}


class ShapleyPermutationAccumulator(_ShapleyAccumulator):
    """Permutation Shapley effects of m outputs, each walk read from both ends (Goda 2021 with the
    reversed order as antithetic partner); outputs (r, d+1, m) along the walk z_0 = A ... z_d = B."""

    kinds = ("shapley-permutation",)

    def _row_terms(self, block: DesignBlock, f: torch.Tensor, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        if block.permutations is None:
            raise AugsenseError("permutation Shapley needs blocks from a 'shapley-permutation' design")
        half = 0.5 * (f[:, -1:] - f[:, :1])                   # (r, 1, mc): (f_B - f_A) / 2
        steps = (f[:, 1:] - f[:, :-1]) * half                 # (r, d, mc): contribution of pi_k
        order = torch.as_tensor(block.permutations, device=f.device)[:, :, None].expand_as(steps)
        phi = torch.zeros_like(steps).scatter_(1, order, steps)
        return phi, 2 * half[:, 0] ** 2
