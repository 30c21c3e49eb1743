"""Streaming mean, variance and coefficient of variation of m outputs (shifted float64 sums)."""

from __future__ import annotations

from typing import Any

import torch

from augsense.errors import AugsenseError
from augsense.estimators._accumulator import DEAD_TOLERANCE, check_dead_tolerance, dead_outputs
from augsense.estimators.results import SensitivityResult


class MomentAccumulator:
    """Mean, variance (ddof 1) and cv = std / |mean| of m outputs over any number of rows.

    Sums of (y - K) and (y - K)^2 with K the first batch's mean (exact shift correction on merge),
    kept in float64 on ``device``. Memory O(m). Outputs whose variance is <= (dead_tolerance *
    |mean|)**2 are dead (constant up to float32 rounding), as in the design accumulators.
    """

    def __init__(self, n_outputs: int, *, device: torch.device | str | None = None,
                 dead_tolerance: float = DEAD_TOLERANCE) -> None:
        if int(n_outputs) < 1:
            raise AugsenseError(f"n_outputs must be >= 1, got {n_outputs}")
        self.dead_tolerance = dead_tolerance
        self.n_outputs = int(n_outputs)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.s1 = torch.zeros(self.n_outputs, dtype=torch.float64, device=self.device)
        self.s2 = torch.zeros_like(self.s1)

    @property
    def dead_tolerance(self) -> float:
        """Relative tolerance of :func:`~augsense.estimators._accumulator.dead_outputs`; settable."""
        return self._dead_tolerance

    @dead_tolerance.setter
    def dead_tolerance(self, tol: float) -> None:
        self._dead_tolerance = check_dead_tolerance(tol)

    def update(self, values: torch.Tensor) -> None:
        """Add rows values (n, m), any float dtype and device."""
        values = torch.as_tensor(values).to(self.device, torch.float64)
        if values.ndim != 2 or values.shape[1] != self.n_outputs:
            raise AugsenseError(f"values must have shape (rows, {self.n_outputs}), got {tuple(values.shape)}")
        if not bool(torch.isfinite(values).all()):
            raise AugsenseError("values contain NaN or inf; fix the model or drop those outputs")
        if values.shape[0] == 0:
            return
        if self.shift is None:
            self.shift = values.mean(0)
        x = values - self.shift
        self.s1 += x.sum(0)
        self.s2 += (x * x).sum(0)
        self.n += values.shape[0]

    def merge(self, other: "MomentAccumulator") -> None:
        """Add another accumulator's rows (same number of outputs)."""
        if not isinstance(other, MomentAccumulator) or other.n_outputs != self.n_outputs:
            raise AugsenseError("can only merge a MomentAccumulator with the same number of outputs")
        if other.n == 0:
            return
        s1, s2 = other.s1.to(self.device), other.s2.to(self.device)
        if self.shift is None:
            self.shift = other.shift.to(self.device).clone()
        else:
            delta = other.shift.to(self.device) - self.shift      # other's values in our shift: x + delta
            s2 = s2 + 2 * delta * s1 + other.n * delta * delta
            s1 = s1 + other.n * delta
        self.s1 += s1
        self.s2 += s2
        self.n += other.n

    def state_dict(self) -> dict[str, Any]:
        return {"class": "MomentAccumulator", "n_outputs": self.n_outputs, "n": self.n,
                "shift": None if self.shift is None else self.shift.cpu(), "s1": self.s1.cpu(), "s2": self.s2.cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("class") != "MomentAccumulator" or state["n_outputs"] != self.n_outputs:
            raise AugsenseError("state does not come from a MomentAccumulator with the same number of outputs")
        self.n = int(state["n"])
        self.shift = None if state["shift"] is None else state["shift"].to(self.device, torch.float64)
        self.s1 = state["s1"].to(self.device, torch.float64).clone()
        self.s2 = state["s2"].to(self.device, torch.float64).clone()

    def compute(self) -> SensitivityResult:
        """mean, variance, cv and dead (variance within tolerance of 0) of every output, as numpy arrays."""
        if self.n < 2:
            raise AugsenseError(f"need at least 2 rows for a variance, have {self.n}")
        mu = self.s1 / self.n
        var = ((self.s2 - self.n * mu * mu) / (self.n - 1)).clamp_min(0)
        mean = self.shift + mu
        dead = dead_outputs(var, mean, self.dead_tolerance)
        cv = torch.where(dead, torch.nan, var.sqrt() / mean.abs())
        return SensitivityResult(n=self.n, mean=mean.cpu().numpy(), variance=var.cpu().numpy(),
                                 cv=cv.cpu().numpy(), dead=dead.cpu().numpy())
