"""The units most specialised in each factor: the widest lead over the unit's next factor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def unit_label(unit: int, shape: Sequence[int] | None) -> str:
    """Flat unit number → "c" or "c (y, x)" for per-position units of shape (C, H, W)."""
    if shape is None or len(shape) <= 1:
        return str(unit)
    position = np.unravel_index(int(unit), tuple(shape))
    return f"{position[0]} ({', '.join(str(int(p)) for p in position[1:])})"


COLUMNS = ["factor", "rank", "layer", "unit", "estimate", "ci_low", "ci_high", "runner_up", "runner_up_estimate",
           "margin", "variance"]


def top_units(indices: pd.DataFrame, quantity: str, players: Sequence[str], k: int = 5,
              unit_shapes: dict[str, tuple[int, ...] | None] | None = None) -> pd.DataFrame:
    """Per factor, the k living units where the factor leads the unit's other factors by the most.

    margin = lower confidence bound of the factor's ``quantity`` − the largest estimate of any other
    factor of the same unit: a unit ranks high when the factor dominates it *and* that is measured
    precisely. Only units with a positive margin are listed (a factor that leads no unit gets no row).
    ``indices``: the tidy table (layer, unit, factor, quantity, estimate, ci_low, ci_high, dead; rows of
    quantity "variance" give the unit's activation variance). Returns ``COLUMNS``: factor, rank, layer,
    unit (label), estimate, ci_low, ci_high, runner_up (the unit's next factor), runner_up_estimate,
    margin, variance (NaN when the table has none).
    """
    rows = indices[(indices["quantity"] == quantity) & indices["factor"].notna()]
    if "dead" in rows:
        rows = rows[~rows["dead"].fillna(False).astype(bool)]
    rows = rows[np.isfinite(rows["estimate"].to_numpy(dtype=float))]
    if rows.empty:
        return pd.DataFrame(columns=COLUMNS)
    present = {str(f) for f in rows["factor"].unique()}
    names = [p for p in players if p in present]
    wide = rows.pivot_table(index=["layer", "unit"], columns="factor", values="estimate", aggfunc="first")
    wide = wide.reindex(columns=names)
    lows = rows.pivot_table(index=["layer", "unit"], columns="factor", values="ci_low", aggfunc="first")
    lows = lows.reindex(index=wide.index, columns=names)
    highs = rows.pivot_table(index=["layer", "unit"], columns="factor", values="ci_high", aggfunc="first")
    highs = highs.reindex(index=wide.index, columns=names)
    estimates = wide.to_numpy(dtype=float)
    low = lows.to_numpy(dtype=float)
    low = np.where(np.isfinite(low), low, estimates)
    variance = _variances(indices, wide.index)
    out: list[dict[str, object]] = []
    filled = np.where(np.isfinite(estimates), estimates, -np.inf)
    for j, factor in enumerate(names):
        others = filled.copy()
        others[:, j] = -np.inf
        runner = others.argmax(axis=1) if len(names) > 1 else np.zeros(len(filled), int)
        runner_value = others.max(axis=1) if len(names) > 1 else np.zeros(len(filled))
        runner_value = np.where(np.isfinite(runner_value), runner_value, 0.0)
        margin = low[:, j] - runner_value
        width = highs.to_numpy(dtype=float)[:, j] - low[:, j]
        candidates = np.flatnonzero(np.isfinite(margin) & (margin > 0) & np.isfinite(estimates[:, j]))
        chosen = candidates[np.lexsort((width[candidates], -margin[candidates]))][:k]
        for rank, i in enumerate(chosen, start=1):
            layer, unit = wide.index[i]
            shape = (unit_shapes or {}).get(str(layer))
            out.append({"factor": factor, "rank": rank, "layer": layer, "unit": unit_label(int(unit), shape),
                        "estimate": estimates[i, j], "ci_low": low[i, j], "ci_high": highs.iat[i, j],
                        "runner_up": names[runner[i]] if len(names) > 1 else "",
                        "runner_up_estimate": float(runner_value[i]) if len(names) > 1 else np.nan,
                        "margin": float(margin[i]), "variance": variance[i]})
    return pd.DataFrame(out, columns=COLUMNS)


def _variances(indices: pd.DataFrame, units: pd.Index) -> np.ndarray:
    """The activation variance of each (layer, unit) in ``units`` (NaN where the table has none)."""
    rows = indices[(indices["quantity"] == "variance") & indices["factor"].isna()]
    if rows.empty:
        return np.full(len(units), np.nan)
    series = rows.drop_duplicates(["layer", "unit"]).set_index(["layer", "unit"])["estimate"]
    return series.reindex(units).to_numpy(dtype=float)
