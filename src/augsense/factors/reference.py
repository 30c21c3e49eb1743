"""Reference variants: augmentations exactly as the paper's own code applies them, batched.

The code of Kharyuk, Matveev & Oseledets (github.com/kharyuk/activation_sa, ``src/image_transforms/``,
torchvision 0.9, PIL) differs from augsense's default factors in three places (see docs/factors.md):

- erasing (``erase.py``): the box centre is rounded to a pixel, the box is moved inside at the top/left
  edge but the image is left **unchanged** when the box does not fit at the bottom/right edge
  (about 16 % of draws with the paper's bounds);
- rotation (``cropped_rotation.py``): the float image is truncated to uint8, rotated by PIL with
  nearest-neighbour sampling, cropped by a formula that zooms about 1.44× at 10° (the exact border-free
  crop needs 1.16×), and resized back bilinearly to uint8;
- rolling (``roll.py``): shifts are drawn in ±(H // 5) pixels (±44 at 224) rather than ±0.2·H.

Each function here takes a batch ``(n, 3, H, W)`` float in [0, 1] and one parameter row per sample,
like every factor, and returns the same shape. Pixel parameters are px@224 and scale with the image;
at 224×224 (the paper's size) the outputs equal the reference code's.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F

from augsense.errors import AugsenseError
from augsense.factors.geometry import roll
from augsense.factors.occlusion import zero_boxes

REFERENCE_SIZE = 224
"""The image side the reference code ran at; px@224 parameters scale by H/224 and W/224."""


def erase_boxes_reference(height: int, width: int, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference code's erasing boxes: ``(n, 4)`` int64 (top, left, bottom, right; exclusive) and ``fits`` ``(n,)``.

    params ``(n, 4)``: centre row, centre column (px@224), area fraction of H·W, ln(h/w). As ``erase.erase``:
    centre = round(c), h = round(√(H·W·area·r)), w = round(√(H·W·area / r)) (r = e^log_aspect, rounding
    half to even), top = max(0, row − h // 2), left = max(0, col − w // 2); the box is used only when
    top + h < H and left + w < W, otherwise the image is left unchanged (``fits`` False).
    """
    cy, cx, area, log_aspect = params.to(torch.float64).unbind(dim=1)
    row = torch.round(cy * (height / REFERENCE_SIZE))
    col = torch.round(cx * (width / REFERENCE_SIZE))
    erase_area = float(height * width) * area
    aspect = torch.exp(log_aspect)
    box_h = torch.round(torch.sqrt(erase_area * aspect))
    box_w = torch.round(torch.sqrt(erase_area / aspect))
    top = (row - torch.div(box_h, 2, rounding_mode="floor")).clamp_min(0.0)
    left = (col - torch.div(box_w, 2, rounding_mode="floor")).clamp_min(0.0)
    fits = (top + box_h < height) & (left + box_w < width)
    boxes = torch.stack((top, left, top + box_h, left + box_w), dim=1).long()
    return boxes, fits


def erase_reference(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Fill each sample's box (``erase_boxes_reference``) with 0 where it fits; other samples pass unchanged."""
    _, _, h, w = images.shape
    boxes, fits = erase_boxes_reference(h, w, params)
    return zero_boxes(images, boxes * fits.unsqueeze(1))  # a box that does not fit: the empty box (0, 0, 0, 0)


def roll_reference(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Cyclic shift by round(dy), round(dx) pixels (px@224, rounding half to even), as ``roll.roll_2d``."""
    h, w = images.shape[2:]
    shift_y = torch.round(params[:, 0].double() * (h / REFERENCE_SIZE))
    shift_x = torch.round(params[:, 1].double() * (w / REFERENCE_SIZE))
    return roll(images, shift_y, shift_x)


def to_uint8_levels(images: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] → uint8 as ``torchvision.transforms.functional.to_pil_image``: ``x.mul(255).byte()`` (truncates)."""
    return images.mul(255).clamp_(0, 255).to(torch.uint8)


def pil_rotate_fixed_point(angle: float, width: int, height: int) -> tuple[int, int, int, int, int, int]:
    """The 16.16 fixed-point affine map PIL uses for ``Image.rotate(angle, NEAREST)`` (centre, no expand).

    Output pixel (x, y) reads input pixel (⌊(a2 + x·a0 + y·a1) / 2¹⁶⌋, ⌊(a5 + x·a3 + y·a4) / 2¹⁶⌋), or the
    fill colour outside the image. Written after Pillow's ``Image.rotate`` (matrix rounded to 15 decimals)
    and ``affine_fixed`` in ``libImaging/Geometry.c``; returns (a0, a1, a2, a3, a4, a5).
    """
    angle = angle % 360.0
    cx, cy = width / 2, height / 2
    a = -math.radians(angle)
    m0, m1 = round(math.cos(a), 15), round(math.sin(a), 15)
    m3, m4 = round(-math.sin(a), 15), round(math.cos(a), 15)
    m2 = m0 * -cx + m1 * -cy + 0.0 + cx
    m5 = m3 * -cx + m4 * -cy + 0.0 + cy

    def fix(v: float) -> int:
        return math.floor(v * 65536.0 + 0.5)

    return fix(m0), fix(m1), fix(m2 + m0 * 0.5 + m1 * 0.5), fix(m3), fix(m4), fix(m5 + m3 * 0.5 + m4 * 0.5)


def reference_crop_margin(angle: float, side: int) -> int:
    """Pixels ``crop_black_borders`` cuts from each side of a ``side``² image rotated by ``angle`` degrees.

    m = round(t / (1 − t²) · (side − side·t)) with t = |tan θ| (= round(side·t / (1 + t))): 34 px at 10°
    on 224 (crop 156, zoom 1.44×) where the largest border-free square needs 15.4 px (zoom 1.16×).
    """
    tan_a = np.abs(np.tan(angle * np.pi / 180))
    coef = tan_a / (1 - tan_a**2)
    return int(round(coef * (side - side * tan_a)))


def rotate_crop_reference(images: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Rotate counter-clockwise, crop and resize back as ``cropped_rotation.custom_rotation`` (torchvision 0.9).

    images ``(n, 3, S, S)`` float in [0, 1] (square: the reference swaps width and height), angle_deg ``(n,)``.
    Per sample: uint8 levels = trunc(255·x); PIL rotate with nearest neighbour and black fill (one batched
    gather with PIL's fixed-point coordinates); crop ``reference_crop_margin`` pixels from every side;
    bilinear resize (float32, align_corners=False, no antialiasing) back to S×S, rounded to uint8 (one
    ``interpolate`` call per distinct crop size). Returns the uint8 levels / 255 in the images' dtype.
    """
    n, c, h, w = images.shape
    if h != w:
        raise AugsenseError(
            f"rotation_reference reproduces the reference code, which handles square images only (it swaps "
            f"width and height); got {h}×{w}. Use 'rotation' for other shapes"
        )
    if h > 16384:
        raise AugsenseError(f"rotation_reference: {h}×{w} images are beyond PIL's fixed-point rotation (16384 px)")
    if n == 0:
        return images.clone()
    device = images.device
    angles = [float(a) for a in angle_deg.detach().double().cpu().tolist()]
    # PIL's fixed-point coordinates are C ints: int32 here too (|values| < 2**31 is PIL's own check_fixed bound)
    coefficients = torch.tensor([pil_rotate_fixed_point(a, w, h) for a in angles], dtype=torch.int32, device=device)
    a0, a1, a2, a3, a4, a5 = (coefficients[:, i].view(n, 1, 1) for i in range(6))
    ys = torch.arange(h, device=device, dtype=torch.int32).view(1, h, 1)
    xs = torch.arange(w, device=device, dtype=torch.int32).view(1, 1, w)
    x_in = torch.bitwise_right_shift(a2 + ys * a1 + xs * a0, 16)
    y_in = torch.bitwise_right_shift(a5 + ys * a4 + xs * a3, 16)
    inside = (x_in >= 0) & (x_in < w) & (y_in >= 0) & (y_in < h)
    # outside the image: the extra, black pixel appended at flat index h·w (PIL's fill colour 0)
    source = torch.where(inside, y_in * w + x_in, h * w).view(n, 1, h * w).long().expand(n, c, h * w)
    padded = torch.cat((images.reshape(n, c, h * w), images.new_zeros(n, c, 1)), dim=2)
    # nearest neighbour only moves pixels, so truncating to uint8 levels after the gather is the same
    rotated = to_uint8_levels(padded.gather(2, source).view(n, c, h, w))

    margins = [reference_crop_margin(a, h) for a in angles]
    if 2 * max(margins) >= h:
        raise AugsenseError(f"rotation_reference: the reference crop leaves nothing of a {h}×{w} image at angles "
                            f"{[a for a, m in zip(angles, margins) if 2 * m >= h]}; use smaller angles")
    # one interpolate call per crop size, on contiguous runs of samples sorted by margin
    order = sorted(range(n), key=margins.__getitem__)
    rotated = rotated[torch.tensor(order, device=device)]  # (advanced indexing: index_select is slow on CPU)
    out = torch.empty(n, c, h, w, dtype=images.dtype, device=device)
    start = 0
    for margin, run in itertools.groupby(order, key=margins.__getitem__):
        stop = start + len(list(run))
        crop = rotated[start:stop, :, margin:h - margin, margin:w - margin].to(torch.float32)
        if margin:
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=False).round_()
        out[start:stop] = crop
        start = stop
    inverse = torch.empty(n, dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(n)
    return out[inverse.to(device)].div_(255.0)
