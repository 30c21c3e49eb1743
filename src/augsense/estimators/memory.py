"""Bytes of estimator state and of results per output (unit), from the layout of the sums.

A per-element run keeps, for each of its m outputs, the accumulator's sums (float64, independent
of N) and, after ``compute``, the result arrays; everything else (one batch of outputs, compute's
32 MiB chunks) does not scale with m. The formulas here mirror ``_new_sums`` of each accumulator
and are checked against the real tensors in tests/test_state_bytes.py.

Notation: d factors, P = d (d - 1) / 2 pairs, q denominator terms (pooled 2, paired 1),
G members per group, T(k) = k (k + 1) / 2 (an upper triangle).
"""

from __future__ import annotations

from augsense.errors import AugsenseError

FLOAT64 = 8
#: estimators of :func:`state_floats` (the contrast accumulator is not design-based)
KINDS = ("sobol", "sobol2", "shapley-exact", "shapley-permutation", "contrast")


def _triangle(k: int) -> int:
    return k * (k + 1) // 2


def state_floats(kind: str, d: int, *, denominator: str = "pooled",
                 second_order_intervals: bool = True) -> dict[str, int]:
    """float64 values per output of each per-output state tensor (name -> count), shift included.

    ``second_order_intervals=False`` (sobol2): no second moments of the pairs ("p2").

    Per-group sums ("g1", "g2", sobol2 also "gp1", "gp2": one set per layer, not per output) and the
    int64 output-to-group index (8 bytes per output in a run) are not included.
    """
    if kind not in KINDS:
        raise AugsenseError(f"unknown estimator {kind!r}; choose from {', '.join(KINDS)}")
    if d < 1:
        raise AugsenseError(f"need at least one factor, got d = {d}")
    if kind == "contrast":  # mean, M2 of differences; sums and M2 of treated and control
        return {"mean": 1, "m2": 1, "sum_treated": 1, "sum_control": 1, "m2_treated": 1, "m2_control": 1}
    pairs = d * (d - 1) // 2
    if kind.startswith("sobol"):
        if denominator not in ("pooled", "paired"):
            raise AugsenseError(f"denominator must be 'pooled' or 'paired', got {denominator!r}")
        q = 2 if denominator == "pooled" else 1
        second = kind == "sobol2"
        floats = {"shift": 1, "role": 2 * d + 2 if second else d + 2, "w1": q, "w2": _triangle(q),
                  "c1": 3 * d, "c2": d * (_triangle(3) + 3 * q)}
        if second:
            floats["p1"] = 2 * pairs
            if second_order_intervals:
                floats["p2"] = pairs * (_triangle(2) + 2 * q)
        return floats
    floats = {"shift": 1, "level": 1, "c1": 2 * d, "c2": 3 * d}
    if kind == "shapley-exact":
        floats |= {"t": 1 << d, "i1": 2 * pairs, "i2": 3 * pairs}
    return floats


def state_bytes_per_output(kind: str, d: int, *, denominator: str = "pooled",
                           second_order_intervals: bool = True) -> int:
    """Bytes of accumulator state per output (see :func:`state_floats`)."""
    return FLOAT64 * sum(state_floats(kind, d, denominator=denominator,
                                      second_order_intervals=second_order_intervals).values())


def result_bytes_per_output(kind: str, d: int) -> int:
    """Bytes per output of the result arrays ``compute`` returns (float64; ``dead`` 1 byte)."""
    if kind not in KINDS:
        raise AugsenseError(f"unknown estimator {kind!r}; choose from {', '.join(KINDS)}")
    if kind == "contrast":   # 9 moment statistics, 4 rank, 3 point-biserial (float64) + zero_variance
        return FLOAT64 * 16 + 1
    floats = 3                                        # mean, variance, cv
    if kind.startswith("sobol"):
        floats += 8 * d                               # S1, ST, V1, VT (d each), two (2, d) intervals
        if kind == "sobol2":
            floats += 3 * d * d                       # S2 (d, d) and its (2, d, d) interval
    else:
        floats += 4 * d                               # Shapley, its variance, its (2, d) interval
        if kind == "shapley-exact":
            floats += (1 << d) + 3 * d * d            # subset effects, interactions and their intervals
    return FLOAT64 * floats + 1                       # + dead (bool)


def bytes_table(d: int) -> list[dict[str, object]]:
    """One row per estimator (pooled; paired Sobol too; sobol2 also without S2 intervals): state and
    result bytes per output at d factors."""
    rows = []
    for kind in KINDS:
        for denominator in (("pooled", "paired") if kind.startswith("sobol") else ("pooled",)):
            for intervals in ((True, False) if kind == "sobol2" else (True,)):
                name = kind if not kind.startswith("sobol") else f"{kind} ({denominator})"
                name += "" if intervals else ", no S2 CI"
                rows.append({"estimator": name, "d": d,
                             "state_bytes": state_bytes_per_output(kind, d, denominator=denominator,
                                                                   second_order_intervals=intervals),
                             "result_bytes": result_bytes_per_output(kind, d)})
    return rows
