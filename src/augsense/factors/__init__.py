"""Augmentation factors: batched, per-sample-parameter augmentations and the space a design row maps through."""

from augsense.factors.base import Factor, Parameter, make_factor
from augsense.factors.registry import factor_names, get_factor, preset, register_factor, unregister_factor
from augsense.factors.space import FactorSpace

__all__ = [
    "Factor",
    "FactorSpace",
    "Parameter",
    "factor_names",
    "get_factor",
    "make_factor",
    "preset",
    "register_factor",
    "unregister_factor",
]
