"""Batched colour operations with one parameter per sample, following torchvision's functional meanings.

All take ``images`` ``(n, 3, H, W)`` float in [0, 1] and a per-sample parameter ``(n,)`` and return
``(n, 3, H, W)``. Formulas are those of ``torchvision.transforms.v2.functional`` (which follow PIL's
ImageEnhance), vectorised over the batch: brightness multiplies, contrast blends with the mean of the
grayscale image, saturation blends with the grayscale image, hue shifts H in HSV by a fraction of a turn.
"""

from __future__ import annotations

import torch

from augsense.factors.chunks import row_chunks

_LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601-2, as torchvision and PIL


def _per_sample(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``(n,)`` -> ``(n, 1, 1, 1)`` on the images' device and dtype."""
    return values.to(device=images.device, dtype=images.dtype).reshape(-1, 1, 1, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma ``(n, 1, H, W)`` of RGB ``images`` ``(n, 3, H, W)``."""
    r, g, b = images.unbind(dim=1)
    return r.mul(_LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(1)


def blend(images: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """``clamp(ratio·images + (1 − ratio)·other, 0, 1)`` with ``ratio`` ``(n,)``; ``other`` broadcasts to images."""
    r = _per_sample(ratio, images)
    one_minus = _per_sample(1.0 - ratio.double(), images)
    return (images * r).add_(other * one_minus).clamp_(0.0, 1.0)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply intensities by ``factor`` ``(n,)`` (identity 1) and clamp to [0, 1]."""
    return (images * _per_sample(factor, images)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with each image's mean grey level by ``factor`` ``(n,)`` (identity 1)."""
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)
    return blend(images, mean, factor)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grayscale image by ``factor`` ``(n,)`` (identity 1; 0 gives gray)."""
    return blend(images, grayscale(images), factor)


def to_grayscale(images: torch.Tensor) -> torch.Tensor:
    """RGB → luma, replicated to 3 channels: ``(n, 3, H, W)``."""
    return grayscale(images).expand_as(images).contiguous()


_HUE_OFFSETS = (5.0, 3.0, 1.0)  # sector offsets of R, G, B in the closed-form HSV -> RGB


def hue_turns(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HSV hue ``(n, H, W)`` in turns [0, 1), the channel max V and range V·S ``(n, H, W)``.

    PIL's RGB -> HSV algorithm, as torchvision (gray pixels, max == min, get hue 0), computed on
    channel planes only (no (n, 3, H, W) temporaries).
    """
    r, g, b = images.unbind(dim=1)
    maxc = torch.maximum(torch.maximum(r, g), b)
    channel_range = maxc - torch.minimum(torch.minimum(r, g), b)
    divisor = torch.where(channel_range == 0, torch.ones_like(channel_range), channel_range)
    h = torch.where(maxc == r, g - b,
                    torch.where(maxc == g, (b - r).add_(divisor, alpha=2.0), (r - g).add_(divisor, alpha=4.0)))
    return h.div_(divisor).mul_(1.0 / 6.0).add_(1.0).fmod_(1.0), maxc, channel_range


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` ``(n,)`` of a turn, in [−0.5, 0.5] (identity 0), keeping HSV S and V.

    HSV -> RGB in closed form: channel = V − V·S·clamp(min(k, 4 − k), 0, 1) with
    k = (n + 6H) mod 6 and n = 5, 3, 1 for R, G, B; equal to torchvision's table lookup. On the CPU a few
    images at a time (``row_chunks``), so the round trip's planes stay in cache.
    """
    shift = shift.to(device=images.device, dtype=images.dtype).view(-1, 1, 1)
    out = torch.empty_like(images)
    for rows in row_chunks(images):
        _shift_hue_into(images[rows], shift[rows], out[rows])
    return out


def _shift_hue_into(images: torch.Tensor, shift: torch.Tensor, out: torch.Tensor) -> None:
    """Write ``images`` ``(m, 3, H, W)`` with their hue rotated by ``shift`` ``(m, 1, 1)`` turns into ``out``."""
    h, maxc, channel_range = hue_turns(images)
    h6 = h.add_(shift).remainder_(1.0).mul_(6.0)
    for channel, offset in enumerate(_HUE_OFFSETS):
        k = h6 + offset
        k = torch.where(k >= 6.0, k - 6.0, k)
        ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        torch.sub(maxc, ramp.mul_(channel_range), out=out[:, channel])
