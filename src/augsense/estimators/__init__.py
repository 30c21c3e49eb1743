"""Mergeable streaming accumulators for moments, Sobol indices and Shapley effects."""

from augsense.estimators.results import SensitivityResult
from augsense.estimators.sobol import SobolAccumulator

__all__ = ["SensitivityResult", "SobolAccumulator"]
