"""The result of a sensitivity computation: numpy float64 arrays on the CPU plus a tidy table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pandas (84 MB resident, 0.2 s) is imported when a table is made, after a run's loop
    import pandas as pd

#: shares further than this outside [0, 1] count as outside (float32 rounding of exact 0 or 1 stays inside)
RANGE_TOLERANCE = 1e-6


def out_of_unit_range(values: np.ndarray) -> np.ndarray:
    """Where estimated shares lie outside [0, 1] beyond :data:`RANGE_TOLERANCE` (bool, same shape; NaN: False)."""
    return (values < -RANGE_TOLERANCE) | (values > 1 + RANGE_TOLERANCE)


# quantity name -> (field with the estimate, field with its interval or None, kind of index)
_PER_FACTOR = ("first_order", "total_order", "shapley")
_PER_PAIR = ("second_order", "interactions")


@dataclass
class SensitivityResult:
    """Sensitivity indices of m outputs to d factors.

    Shapes: mean, variance, cv, dead: (m,); first_order, total_order, shapley, shapley_variance,
    first_order_variance, total_order_variance: (m, d); second_order, interactions: (m, d, d);
    every ``*_ci``: (2, ...) lower/upper bounds; subset_effects: (m, 2**d) Moebius dividends
    (Harsanyi) of every factor subset as shares of the variance, bitmask-indexed.
    Dead outputs (zero variance) hold NaN and ``dead=True``. Raw estimates are never clipped:
    a negative first-order index is a sampling fluctuation around a small true value.
    ``aggregated``: the same quantities for output groups (layers), Sum_c V_i^(c) / Sum_c V^(c)
    (second_order: Sum_c V_ij^(c) / Sum_c V^(c), with intervals), with the groups as outputs.
    """

    n: int
    mean: np.ndarray | None = None
    variance: np.ndarray | None = None
    cv: np.ndarray | None = None
    dead: np.ndarray | None = None
    first_order: np.ndarray | None = None
    first_order_ci: np.ndarray | None = None
    first_order_variance: np.ndarray | None = None
    total_order: np.ndarray | None = None
    total_order_ci: np.ndarray | None = None
    total_order_variance: np.ndarray | None = None
    second_order: np.ndarray | None = None
    second_order_ci: np.ndarray | None = None
    shapley: np.ndarray | None = None
    shapley_ci: np.ndarray | None = None
    shapley_variance: np.ndarray | None = None
    interactions: np.ndarray | None = None
    interactions_ci: np.ndarray | None = None
    subset_effects: np.ndarray | None = None
    aggregated: "SensitivityResult | None" = None
    confidence: float = 0.95

    @property
    def n_outputs(self) -> int:
        return int(self.dead.shape[0]) if self.dead is not None else 0

    def outside_unit_interval(self) -> tuple[int, int]:
        """How many living (output, factor) shares (first, total order, Shapley) are estimated outside [0, 1]
        (beyond 1e-6, float32 rounding), and how many there are."""
        count = total = 0
        for name in _PER_FACTOR:
            values = getattr(self, name)
            if values is not None:
                live = values[~self.dead] if self.dead is not None else values
                count += int(out_of_unit_range(live).sum())
                total += int(np.isfinite(live).sum())
        return count, total

    def to_dataframe(self, output_names: Sequence[str] | None = None, factor_names: Sequence[str] | None = None,
                     group_names: Sequence[str] | None = None) -> pd.DataFrame:
        """Tidy table: output, factor, factor2, quantity, estimate, ci_low, ci_high, dead, level.

        ``level`` is "output" for per-output rows and "group" for aggregated (layer) rows, whose
        ``output`` column holds the group name. factor2 is None except for pair quantities.
        """
        import pandas as pd

        frames = [self._frame(output_names, factor_names, "output")]
        if self.aggregated is not None:
            frames.append(self.aggregated._frame(group_names, factor_names, "group"))
        return pd.concat(frames, ignore_index=True)

    def _frame(self, output_names: Sequence[str] | None, factor_names: Sequence[str] | None, level: str) -> pd.DataFrame:
        import pandas as pd

        m = self.n_outputs
        outs = np.asarray(list(output_names) if output_names is not None else [str(i) for i in range(m)], dtype=object)
        if outs.shape != (m,):
            raise ValueError(f"output_names must have {m} entries, got {outs.shape[0]}")
        d = next((getattr(self, q).shape[1] for q in _PER_FACTOR if getattr(self, q) is not None), 0)
        facs = np.asarray(list(factor_names) if factor_names is not None else [str(i) for i in range(d)], dtype=object)
        if facs.shape != (d,):
            raise ValueError(f"factor_names must have {d} entries, got {facs.shape[0]}")
        parts: list[pd.DataFrame] = []
        nan = np.full(m, np.nan)
        for q, est, ci in (("mean", self.mean, None), ("variance", self.variance, None), ("cv", self.cv, None)):
            if est is not None:
                parts.append(pd.DataFrame({"output": outs, "factor": None, "factor2": None, "quantity": q,
                                           "estimate": est, "ci_low": nan, "ci_high": nan, "dead": self.dead}))
        for q in _PER_FACTOR:
            est, ci = getattr(self, q), getattr(self, q + "_ci")
            if est is None:
                continue
            parts.append(pd.DataFrame({
                "output": np.repeat(outs, d), "factor": np.tile(facs, m), "factor2": None, "quantity": q,
                "estimate": est.ravel(), "ci_low": ci[0].ravel(), "ci_high": ci[1].ravel(),
                "dead": np.repeat(self.dead, d)}))
        iu, ju = np.triu_indices(d, 1)
        for q in _PER_PAIR:
            est, ci = getattr(self, q), getattr(self, q + "_ci")
            if est is None:
                continue
            k = iu.size
            parts.append(pd.DataFrame({
                "output": np.repeat(outs, k), "factor": np.tile(facs[iu], m), "factor2": np.tile(facs[ju], m),
                "quantity": q, "estimate": est[:, iu, ju].ravel(), "ci_low": ci[0][:, iu, ju].ravel(),
                "ci_high": ci[1][:, iu, ju].ravel(), "dead": np.repeat(self.dead, k)}))
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
            columns=["output", "factor", "factor2", "quantity", "estimate", "ci_low", "ci_high", "dead"])
        frame["level"] = level
        return frame

    def field_names(self) -> list[str]:
        """Names of the fields that hold arrays in this result."""
        return [f.name for f in fields(self) if isinstance(getattr(self, f.name), np.ndarray)]
