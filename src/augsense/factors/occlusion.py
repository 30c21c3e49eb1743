"""Batched occlusion: random erasing with a per-sample rectangle filled with 0."""

from __future__ import annotations

import torch


def erase_boxes(height: int, width: int, params: torch.Tensor) -> torch.Tensor:
    """Integer boxes ``(n, 4)`` = (top, left, bottom, right), bottom/right exclusive, clipped to the image.

    params ``(n, 4)``: centre y, centre x (fractions of H, W), area fraction of H·W, log aspect ratio
    ln(h/w). As torchvision's RandomErasing: h = round(√(area·H·W·r)), w = round(√(area·H·W / r));
    top = round(cy·H − h/2), left = round(cx·W − w/2).
    """
    cy, cx, area, log_aspect = params.double().unbind(dim=1)
    aspect = torch.exp(log_aspect)
    box_h = torch.round(torch.sqrt(area * height * width * aspect))
    box_w = torch.round(torch.sqrt(area * height * width / aspect))
    top = torch.round(cy * height - box_h / 2)
    left = torch.round(cx * width - box_w / 2)
    bottom = (top + box_h).clamp(0, height)
    right = (left + box_w).clamp(0, width)
    return torch.stack((top.clamp(0, height), left.clamp(0, width), bottom, right), dim=1).long()


def erase(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Fill each sample's rectangle (see ``erase_boxes``) with 0. images ``(n, 3, H, W)``, params ``(n, 4)``."""
    _, _, h, w = images.shape
    return zero_boxes(images, erase_boxes(h, w, params))


def zero_boxes(images: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """A copy of ``images`` ``(n, C, H, W)`` with each sample's box set to 0.

    boxes ``(n, 4)`` int64 (top, left, bottom, right), bottom/right exclusive, within the image (an empty box
    leaves its sample unchanged). On the CPU a copy and one slice fill per box (3x less CPU time than a masked
    fill reading a mask for every pixel); elsewhere one masked fill.
    """
    n, _, h, w = images.shape
    if images.device.type == "cpu":
        out = images.clone()
        for i, (top, left, bottom, right) in enumerate(boxes.tolist()):
            out[i, :, top:bottom, left:right] = 0.0
        return out
    boxes = boxes.to(images.device)
    ys = torch.arange(h, device=images.device).view(1, h)
    xs = torch.arange(w, device=images.device).view(1, w)
    top, left, bottom, right = (boxes[:, i].view(n, 1) for i in range(4))
    inside = ((ys >= top) & (ys < bottom)).view(n, 1, h, 1) & ((xs >= left) & (xs < right)).view(n, 1, 1, w)
    return images.masked_fill(inside, 0.0)
