"""Function-level API: Sobol indices and Shapley effects of any vectorised model.

``func`` takes an (n, d) float64 array of factor values, uniform and independent on ``bounds``,
and returns (n,) or (n, m) values (numpy or torch). Evaluations stream block by block through
the same accumulators the CNN runs use, so memory does not grow with n.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from augsense.design import Design, make_design
from augsense.errors import AugsenseError
from augsense.estimators import MAX_EXACT_PLAYERS, make_accumulator
from augsense.estimators._accumulator import DEAD_TOLERANCE
from augsense.estimators.results import SensitivityResult

Model = Callable[[np.ndarray], Any]


def _bounds(bounds: Sequence[Sequence[float]]) -> np.ndarray:
    try:
        b = np.asarray(bounds, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise AugsenseError(f"bounds must be a list of (low, high) pairs, got {bounds!r}") from err
    if b.ndim != 2 or b.shape[1] != 2 or b.shape[0] < 1:
        raise AugsenseError(f"bounds must be a list of (low, high) pairs, one per factor; got shape {b.shape}")
    bad = np.flatnonzero(~(b[:, 0] < b[:, 1]) | ~np.isfinite(b).all(1))
    if bad.size:
        i = int(bad[0])
        raise AugsenseError(f"bounds of factor {i} are ({b[i, 0]}, {b[i, 1]}): need finite low < high")
    return b


def _evaluate(func: Model, x: np.ndarray, m: int | None) -> torch.Tensor:
    """func on x (k, d) -> (k, m) float64 tensor, validated."""
    y = func(x)
    y = y.detach().cpu() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y, dtype=np.float64))
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise AugsenseError(f"func must return shape ({x.shape[0]},) or ({x.shape[0]}, m) for an input of shape "
                            f"{x.shape}, got {tuple(y.shape)}")
    if m is not None and y.shape[1] != m:
        raise AugsenseError(f"func returned {y.shape[1]} outputs per row, earlier {m}; the number must not change")
    if not bool(torch.isfinite(y).all()):
        raise AugsenseError("func returned NaN or inf; sensitivity indices need finite outputs everywhere in bounds")
    return y.to(torch.float64)


def _run(func: Model, b: np.ndarray, design: Design, confidence: float, dead_tolerance: float,
         options: dict[str, Any] | None = None, **compute: Any) -> SensitivityResult:
    low, width = b[:, 0], b[:, 1] - b[:, 0]
    acc = None
    for block in design.blocks():
        r, G, d = block.points.shape
        y = _evaluate(func, low + width * block.points.reshape(r * G, d), None if acc is None else acc.n_outputs)
        if acc is None:
            acc = make_accumulator(design, y.shape[1], **(options or {}))
            acc.dead_tolerance = dead_tolerance
        acc.update(block, y.reshape(r, G, -1))
    return acc.compute(confidence, **compute)


def _block_size(batch_size: int, group_size: int) -> int:
    if batch_size < 1:
        raise AugsenseError(f"batch_size must be >= 1, got {batch_size}")
    rows = max(1, batch_size // group_size)
    return 1 << (rows.bit_length() - 1)


def sobol_indices(func: Model, bounds: Sequence[Sequence[float]], n: int, *, seed: int = 0,
                  second_order: bool = False, confidence: float = 0.95, batch_size: int = 65536,
                  centre: Literal["ab", "all"] = "ab", dead_tolerance: float = DEAD_TOLERANCE,
                  second_order_intervals: bool = True) -> SensitivityResult:
    """First/total (and second) order Sobol indices of every output of ``func``.

    Cost n (d + 2) evaluations, or n (2d + 2) with ``second_order``; n must be a power of two.
    First order: Saltelli et al. 2010; total: Jansen 1999; second: Saltelli 2002. Result fields
    ``first_order``, ``total_order`` (m, d), ``second_order`` (m, d, d) or None, ``*_ci`` (2, ...).
    ``batch_size`` caps the rows per call of func. Outputs with variance <= (dead_tolerance *
    |mean|)**2 are flagged ``dead`` with NaN indices. ``second_order_intervals=False`` keeps no second
    moments for the pairs (less memory for many outputs): ``second_order_ci`` is then NaN.
    """
    b = _bounds(bounds)
    kind = "sobol2" if second_order else "sobol"
    d = b.shape[0]
    G = 2 * d + 2 if second_order else d + 2
    design = make_design(kind, [1] * d, n, seed=seed, block_size=_block_size(batch_size, G))
    return _run(func, b, design, confidence, dead_tolerance, {"second_order_intervals": second_order_intervals},
                centre=centre)


def shapley_effects(func: Model, bounds: Sequence[Sequence[float]], n: int, *,
                    method: Literal["exact", "permutation"] = "exact", seed: int = 0, confidence: float = 0.95,
                    batch_size: int = 65536, dead_tolerance: float = DEAD_TOLERANCE) -> SensitivityResult:
    """Shapley effects (shares of variance summing to 1) of every output of ``func``.

    ``method="exact"``: all 2**d subsets and the Moebius inverse (Plischke, Rabitti & Borgonovo
    2021), cost n 2**d, d <= 12, also gives ``interactions`` (m, d, d) and ``subset_effects``;
    ``"permutation"``: random orders (Goda 2021), cost n (d + 1). Fields ``shapley`` (m, d),
    ``shapley_ci`` (2, m, d), ``shapley_variance`` (m, d) summing to ``variance``; outputs with
    variance <= (dead_tolerance * |mean|)**2 are flagged ``dead``.
    """
    b = _bounds(bounds)
    d = b.shape[0]
    if method not in ("exact", "permutation"):
        raise AugsenseError(f"method must be 'exact' or 'permutation', got {method!r}")
    if method == "exact" and d > MAX_EXACT_PLAYERS:
        raise AugsenseError(f"exact Shapley with d = {d} factors needs 2**{d} evaluations per row; "
                            f"use method='permutation' for d > {MAX_EXACT_PLAYERS}")
    G = 2**d if method == "exact" else d + 1
    design = make_design(f"shapley-{method}", [1] * d, n, seed=seed, block_size=_block_size(batch_size, G))
    return _run(func, b, design, confidence, dead_tolerance)
