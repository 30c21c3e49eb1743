"""The built-in factors (the twelve of Kharyuk, Matveev & Oseledets, arXiv 2503.03283), presets, and lookup.

Bounds are the paper's, for 224×224 images; pixel quantities scale with the image (see ``Parameter``).
``erasing_reference``, ``rolling_reference`` and ``rotation_reference`` reproduce the paper's code where
the default factors deliberately differ from it (``REFERENCE_VARIANTS``; docs/factors.md has the table).
User-defined factors registered with ``register_factor`` are found by name too (e.g. by
``FactorSpace.from_dict``).
"""

from __future__ import annotations

import math

import torch

from augsense.errors import AugsenseError
from augsense.factors import blur, colour, geometry, occlusion, reference
from augsense.factors.base import Factor, Parameter

SHARPNESS_FACTOR = 1.5
"""The paper's fixed sharpening factor (torchvision ``adjust_sharpness``)."""
GAUSSIAN_BLUR_KERNEL = 7
"""Kernel side of ``gaussian_blur`` at 224×224 (scaled with the image)."""
LOCAL_BLUR_SIGMA = 3.0
"""σ (px@224) of ``elliptic_local_blur``."""


def _brightness(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return colour.adjust_brightness(images, params[:, 0])


def _contrast(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return colour.adjust_contrast(images, params[:, 0])


def _saturation(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return colour.adjust_saturation(images, params[:, 0])


def _hue(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return colour.adjust_hue(images, params[:, 0])


def _grayscale(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return colour.to_grayscale(images)


def _hflip(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return geometry.hflip(images)


def _sharpness(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    factor = torch.full((images.shape[0],), SHARPNESS_FACTOR, device=images.device, dtype=torch.float64)
    return blur.adjust_sharpness(images, factor)


def _gaussian_blur(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    sy, sx = images.shape[2] / 224.0, images.shape[3] / 224.0
    kernel = (blur.scaled_kernel_size(GAUSSIAN_BLUR_KERNEL, sy), blur.scaled_kernel_size(GAUSSIAN_BLUR_KERNEL, sx))
    return blur.gaussian_blur(images, params[:, 0], kernel, (sy, sx))


def _elliptic_local_blur(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return blur.elliptic_local_blur(images, params, LOCAL_BLUR_SIGMA)


def _rolling(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    h, w = images.shape[2:]
    shift_y = torch.round(params[:, 0].double() * h)
    shift_x = torch.round(params[:, 1].double() * w)
    return geometry.roll(images, shift_y, shift_x)


def _rotation(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return geometry.rotate_crop(images, params[:, 0])


def _erasing(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return occlusion.erase(images, params)


def _erasing_reference(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return reference.erase_reference(images, params)


def _rolling_reference(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return reference.roll_reference(images, params)


def _rotation_reference(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    return reference.rotate_crop_reference(images, params[:, 0])


def _builtins() -> dict[str, Factor]:
    ln = math.log
    # the erased box's shape: the same in the default and the reference variant (only its centre differs)
    box_shape = (Parameter("area", 0.02, 0.33, "frac_HW", domain=(0.0, 1.0)),
                 Parameter("log_aspect", ln(0.3), ln(3.3), "ln(h/w)", domain=(ln(0.01), ln(100.0))))
    factors = [
        # paper set 1
        Factor("erasing", (
            Parameter("center_y", 0.2, 0.8, "frac_H", domain=(0.0, 1.0)),
            Parameter("center_x", 0.2, 0.8, "frac_W", domain=(0.0, 1.0)),
            *box_shape,
        ), _erasing, description="fill a rectangle with 0"),
        Factor("sharpness", (), _sharpness, description=f"sharpen with factor {SHARPNESS_FACTOR}"),
        Factor("rolling", (
            Parameter("dy", -0.2, 0.2, "frac_H", domain=(-1.0, 1.0)),
            Parameter("dx", -0.2, 0.2, "frac_W", domain=(-1.0, 1.0)),
        ), _rolling, description="cyclic 2-D shift"),
        Factor("grayscale", (), _grayscale, description="RGB to gray, 3 channels"),
        Factor("gaussian_blur", (
            Parameter("sigma", 0.1, 2.0, "px@224", domain=(0.01, 10.0)),
        ), _gaussian_blur, description=f"Gaussian blur, {GAUSSIAN_BLUR_KERNEL}x{GAUSSIAN_BLUR_KERNEL} kernel at 224"),
        # paper set 2
        Factor("brightness", (Parameter("factor", 0.1, 2.5, "×", domain=(0.0, 10.0)),),
               _brightness, description="multiply intensities"),
        Factor("contrast", (Parameter("factor", 0.01, 3.5, "×", domain=(0.0, 10.0)),),
               _contrast, description="blend with the mean grey"),
        Factor("saturation", (Parameter("factor", 0.01, 3.5, "×", domain=(0.0, 10.0)),),
               _saturation, description="blend with grayscale"),
        Factor("hue", (Parameter("shift", -0.5, 0.5, "turn", domain=(-0.5, 0.5)),),
               _hue, description="rotate hue"),
        Factor("hflip", (), _hflip, description="horizontal flip"),
        Factor("rotation", (Parameter("angle", -10.0, 10.0, "deg", domain=(-45.0, 45.0)),),
               _rotation, description="rotate, crop the empty borders, resize back"),
        Factor("elliptic_local_blur", (
            Parameter("a", 10.0, 32.0, "px@224", domain=(1.0, 224.0)),
            Parameter("b", 10.0, 32.0, "px@224", domain=(1.0, 224.0)),
            Parameter("x", -32.0, 32.0, "px@224", domain=(-112.0, 112.0)),
            Parameter("y", -32.0, 32.0, "px@224", domain=(-112.0, 112.0)),
            Parameter("angle", -15.0, 15.0, "deg", domain=(-90.0, 90.0)),
        ), _elliptic_local_blur, description=f"Gaussian blur (sigma {LOCAL_BLUR_SIGMA} px@224) inside an ellipse"),
        # the paper's code, where the defaults above differ from it (bounds: H // 5 = 44 px at 224)
        Factor("erasing_reference", (
            Parameter("center_y", 44.0, 180.0, "px@224", domain=(0.0, 224.0)),
            Parameter("center_x", 44.0, 180.0, "px@224", domain=(0.0, 224.0)),
            *box_shape,
        ), _erasing_reference, description="reference code: fill a rectangle with 0, no-op when it does not fit"),
        Factor("rolling_reference", (
            Parameter("dy", -44.0, 44.0, "px@224", domain=(-224.0, 224.0)),
            Parameter("dx", -44.0, 44.0, "px@224", domain=(-224.0, 224.0)),
        ), _rolling_reference, description="reference code: cyclic 2-D shift of round(d) pixels"),
        Factor("rotation_reference", (Parameter("angle", -10.0, 10.0, "deg", domain=(-30.0, 30.0)),),
               _rotation_reference, description="reference code: uint8, PIL nearest rotate, crop (1.44x at 10 deg), "
                                                "bilinear resize"),
    ]
    return {factor.name: factor for factor in factors}


BUILTIN_FACTORS: dict[str, Factor] = _builtins()
_USER_FACTORS: dict[str, Factor] = {}

REFERENCE_VARIANTS: dict[str, str] = {
    "erasing": "erasing_reference",
    "rolling": "rolling_reference",
    "rotation": "rotation_reference",
}
"""Default factor → the variant that reproduces the paper's code (docs/factors.md: what differs and why)."""

PRESETS: dict[str, tuple[str, ...]] = {
    "paper-set1": ("erasing", "sharpness", "rolling", "grayscale", "gaussian_blur"),
    "paper-set2": ("brightness", "contrast", "saturation", "hue", "hflip", "rotation", "elliptic_local_blur"),
}
# the same sets with the reference code's variants, to reproduce the paper's numbers
PRESETS |= {f"{name}-reference": tuple(REFERENCE_VARIANTS.get(f, f) for f in factors)
            for name, factors in list(PRESETS.items())}


def factor_names() -> list[str]:
    """Names of the built-in factors, then the registered user-defined ones."""
    return list(BUILTIN_FACTORS) + list(_USER_FACTORS)


def get_factor(name: str, **bounds: tuple[float, float]) -> Factor:
    """The factor called ``name``, with the given parameters' bounds narrowed, e.g. ``get_factor("rotation", angle=(-5, 5))``."""
    factor = BUILTIN_FACTORS.get(name) or _USER_FACTORS.get(name)
    if factor is None:
        raise AugsenseError(f"unknown factor {name!r}; valid names: {', '.join(factor_names())}")
    return factor.with_bounds(**bounds) if bounds else factor


def preset(name: str) -> list[Factor]:
    """The factors of a preset: ``"paper-set1"``, ``"paper-set2"`` or their ``-reference`` versions."""
    names = PRESETS.get(name)
    if names is None:
        raise AugsenseError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return [BUILTIN_FACTORS[n] for n in names]


def register_factor(factor: Factor, *, overwrite: bool = False) -> Factor:
    """Make a user-defined factor findable by name (``get_factor``, ``FactorSpace.from_dict``); returns it."""
    if not isinstance(factor, Factor):
        raise AugsenseError(f"register_factor expects a Factor (see make_factor), got {type(factor).__name__}")
    if factor.name in BUILTIN_FACTORS:
        raise AugsenseError(f"{factor.name!r} is a built-in factor; give your factor another name")
    if factor.name in _USER_FACTORS and not overwrite:
        raise AugsenseError(f"a factor named {factor.name!r} is already registered; pass overwrite=True to replace it")
    _USER_FACTORS[factor.name] = factor
    return factor


def unregister_factor(name: str) -> None:
    """Forget a user-defined factor registered under ``name``."""
    if _USER_FACTORS.pop(name, None) is None:
        raise AugsenseError(f"no user-defined factor named {name!r} is registered")

