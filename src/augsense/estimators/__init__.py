"""Mergeable streaming accumulators for moments, Sobol indices and Shapley effects.

All design accumulators share ``update(block, outputs)``, ``merge(other)``, ``state_dict()`` /
``load_state_dict()`` and ``compute(confidence)``; :func:`make_accumulator` picks the class
from the design's kind.
"""

from __future__ import annotations

from typing import Literal

import torch

from augsense.design import Design
from augsense.estimators._accumulator import DEAD_TOLERANCE, DesignAccumulator
from augsense.estimators.moments import MomentAccumulator
from augsense.estimators.results import SensitivityResult
from augsense.estimators.shapley import MAX_EXACT_PLAYERS, ShapleyExactAccumulator, ShapleyPermutationAccumulator
from augsense.estimators.sobol import SobolAccumulator


def make_accumulator(design: Design, n_outputs: int, *, denominator: Literal["pooled", "paired"] = "pooled",
                     groups: torch.Tensor | None = None, device: torch.device | str | None = None,
                     dead_tolerance: float = DEAD_TOLERANCE, second_order_intervals: bool = True) -> DesignAccumulator:
    """The accumulator for ``design.kind``; ``denominator`` and ``second_order_intervals`` apply to Sobol
    designs only."""
    if design.kind in ("sobol", "sobol2"):
        return SobolAccumulator(design, n_outputs, denominator=denominator, groups=groups, device=device,
                                dead_tolerance=dead_tolerance, second_order_intervals=second_order_intervals)
    cls = ShapleyExactAccumulator if design.kind == "shapley-exact" else ShapleyPermutationAccumulator
    return cls(design, n_outputs, groups=groups, device=device, dead_tolerance=dead_tolerance)


__all__ = ["DEAD_TOLERANCE", "DesignAccumulator", "MAX_EXACT_PLAYERS", "MomentAccumulator", "SensitivityResult",
           "ShapleyExactAccumulator", "ShapleyPermutationAccumulator", "SobolAccumulator", "make_accumulator"]
