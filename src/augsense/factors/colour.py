"""Batched colour operations with one parameter per sample, following torchvision's functional meanings.

All take ``images`` ``(n, 3, H, W)`` float in [0, 1] and a per-sample parameter ``(n,)`` and return
``(n, 3, H, W)``. Formulas are those of ``torchvision.transforms.v2.functional`` (which follow PIL's
ImageEnhance), vectorised over the batch: brightness multiplies, contrast blends with the mean of the
grayscale image, saturation blends with the grayscale image, hue shifts H in HSV by a fraction of a turn.
"""

from __future__ import annotations

import torch

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


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """RGB ``(n, 3, H, W)`` → HSV ``(n, 3, H, W)`` with H in turns [0, 1) (PIL's algorithm, as torchvision)."""
    r, g, _ = images.unbind(dim=1)
    minc, maxc = torch.aminmax(images, dim=1)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze(1)
    rc, gc, bc = ((maxc.unsqueeze(1) - images) / divisor).unbind(dim=1)
    maxc_neq_r = maxc != r
    maxc_eq_g = maxc == g
    hg = rc.add(2.0).sub_(bc).mul_(maxc_eq_g & maxc_neq_r)
    hr = bc.sub(gc).mul_(~maxc_neq_r)
    hb = gc.add(4.0).sub_(rc).mul_(maxc_neq_r & ~maxc_eq_g)
    h = hr.add_(hg).add_(hb).mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """HSV ``(n, 3, H, W)`` (H in turns) → RGB ``(n, 3, H, W)``."""
    h, s, v = hsv.unbind(dim=1)
    h6 = h * 6
    i = torch.floor(h6)
    f = h6 - i
    sector = i.to(torch.long).remainder_(6)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = sxf.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    vpqt = torch.stack((v, p, q, t), dim=1)
    table = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], device=hsv.device)
    select = table[:, sector].movedim(0, 1)  # (n, 3, H, W): which of v, p, q, t each channel takes
    return vpqt.gather(1, select)


def adjust_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``shift`` ``(n,)`` of a turn, in [−0.5, 0.5] (identity 0)."""
    hsv = rgb_to_hsv(images)
    h = hsv[:, 0].add(shift.to(device=images.device, dtype=images.dtype).reshape(-1, 1, 1)).remainder_(1.0)
    return hsv_to_rgb(torch.stack((h, hsv[:, 1], hsv[:, 2]), dim=1))
