"""Batched geometric operations with per-sample parameters: horizontal flip, cyclic rolling, rotation with crop.

Images are ``(n, 3, H, W)`` float in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def hflip(images: torch.Tensor) -> torch.Tensor:
    """Mirror left–right."""
    return images.flip(-1)


def roll(images: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor) -> torch.Tensor:
    """Cyclic shift of each sample by its own integer ``shift_y``, ``shift_x`` ``(n,)`` pixels (as ``torch.roll``).

    out[i, :, y, x] = images[i, :, (y − shift_y[i]) mod H, (x − shift_x[i]) mod W], as one gather over
    the flattened H·W plane (source index ((y − dy) mod H)·W + (x − dx) mod W, shared by the channels).
    """
    n, c, h, w = images.shape
    device = images.device
    rows = (torch.arange(h, device=device).view(1, h) - shift_y.to(device).long().view(n, 1)).remainder_(h)
    cols = (torch.arange(w, device=device).view(1, w) - shift_x.to(device).long().view(n, 1)).remainder_(w)
    source = (rows.mul_(w).view(n, h, 1) + cols.view(n, 1, w)).view(n, 1, h * w)
    return images.reshape(n, c, h * w).gather(2, source.expand(n, c, h * w)).view(n, c, h, w)


def crop_zoom(angle_rad: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Side fraction ``k`` ``(n,)`` of the largest centred H:W rectangle inside the image rotated by the angle.

    For a W×H image rotated by θ, the centred rectangle kW×kH fits when
    k = min(W / (W cosθ + H sinθ), H / (W sinθ + H cosθ)) (θ taken as |θ|); a square gives 1/(cosθ + sinθ).
    """
    c, s = torch.cos(angle_rad).abs(), torch.sin(angle_rad).abs()
    return torch.minimum(width / (width * c + height * s), height / (width * s + height * c))


def rotate_crop(images: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Rotate each sample counter-clockwise by its ``angle_deg`` ``(n,)``, crop the largest border-free
    centred rectangle of the image's aspect ratio, and resize it back to H×W — one bilinear warp per sample.

    Output pixel q (centred pixel coordinates) samples the input at k·R(−θ) q (screen y down),
    so rotation and zoom share a single interpolation.
    """
    n, _, h, w = images.shape
    theta = torch.deg2rad(angle_deg.to(device=images.device, dtype=torch.float64))
    k = crop_zoom(theta, h, w)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # normalised coordinates: x_n = x / (W/2), y_n = y / (H/2)
    affine = torch.zeros(n, 2, 3, dtype=torch.float64, device=images.device)
    affine[:, 0, 0] = k * cos
    affine[:, 0, 1] = -k * sin * (h / w)
    affine[:, 1, 0] = k * sin * (w / h)
    affine[:, 1, 1] = k * cos
    grid = F.affine_grid(affine.to(images.dtype), [n, 3, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
