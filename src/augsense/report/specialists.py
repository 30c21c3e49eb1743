"""The units most specialised in each factor: highest index, narrowest confidence interval."""

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


def top_units(indices: pd.DataFrame, quantity: str, players: Sequence[str], k: int = 5,
              unit_shapes: dict[str, tuple[int, ...] | None] | None = None) -> pd.DataFrame:
    """Per factor, the k living units with the highest lower confidence bound of ``quantity``.

    Ranking on the lower bound rewards a high index and a narrow interval at once; ties fall to the
    narrower interval. ``indices``: the tidy table (layer, unit, factor, quantity, estimate, ci_low,
    ci_high, dead). Returns factor, rank, layer, unit, estimate, ci_low, ci_high, runner_up
    (the unit's next-highest factor) and runner_up_estimate.
    """
    rows = indices[(indices["quantity"] == quantity) & indices["factor"].notna()]
    if "dead" in rows:
        rows = rows[~rows["dead"].fillna(False).astype(bool)]
    rows = rows[np.isfinite(rows["estimate"].to_numpy(dtype=float))]
    columns = ["factor", "rank", "layer", "unit", "estimate", "ci_low", "ci_high", "runner_up", "runner_up_estimate"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows = rows.assign(width=rows["ci_high"] - rows["ci_low"],
                       score=rows["ci_low"].fillna(rows["estimate"]))
    wide = rows.pivot_table(index=["layer", "unit"], columns="factor", values="estimate", aggfunc="first")
    out: list[dict[str, object]] = []
    for factor in players:
        chosen = rows[rows["factor"] == factor].sort_values(["score", "width"], ascending=[False, True]).head(k)
        for rank, row in enumerate(chosen.itertuples(index=False), start=1):
            others = wide.loc[(row.layer, row.unit)].drop(labels=[factor], errors="ignore").dropna()
            runner = str(others.idxmax()) if len(others) else ""
            shape = (unit_shapes or {}).get(str(row.layer))
            out.append({"factor": factor, "rank": rank, "layer": row.layer, "unit": unit_label(int(row.unit), shape),
                        "estimate": row.estimate, "ci_low": row.ci_low, "ci_high": row.ci_high, "runner_up": runner,
                        "runner_up_estimate": float(others.max()) if len(others) else np.nan})
    return pd.DataFrame(out, columns=columns)
