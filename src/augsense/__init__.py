"""augsense: which input augmentations move which units of an image classifier.

Streaming Sobol indices and Shapley effects of simultaneous, parametrised augmentations on the
activations of chosen layers, with confidence intervals; guided masking and single-class analysis.
Re-implements the framework of Kharyuk, Matveev & Oseledets (arXiv 2503.03283).

Public names are imported lazily so that ``import augsense`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # function-level API (any vectorised model)
    "sobol_indices": "augsense.estimators.api",
    "shapley_effects": "augsense.estimators.api",
    # augmentation factors
    "Factor": "augsense.factors.base",
    "Parameter": "augsense.factors.base",
    "FactorSpace": "augsense.factors.space",
    "make_factor": "augsense.factors.base",
    "get_factor": "augsense.factors.registry",
    "factor_names": "augsense.factors.registry",
    "register_factor": "augsense.factors.registry",
    "preset": "augsense.factors.registry",
    # designs and accumulators
    "make_design": "augsense.design",
    "make_accumulator": "augsense.estimators",
    # further analyses
    "run_masking": "augsense.analyses.masking",
    "MaskingOptions": "augsense.analyses.masking",
    "run_single_class": "augsense.analyses.single_class",
    "SingleClassOptions": "augsense.analyses.single_class",
    "run_contrast": "augsense.analyses.contrast",
    "run_segments": "augsense.analyses.segments",
    "StimulusDesign": "augsense.analyses.stimuli",
    "analyse_responses": "augsense.analyses.responses",
    "sensitivity_from_outputs": "augsense.analyses.responses",
    # the run
    "SensitivityConfig": "augsense.config",
    "run_sensitivity": "augsense.analyses.sensitivity",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'augsense' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
