"""Batched blur-type operations with per-sample parameters: Gaussian blur, sharpness, elliptic local blur.

Images are ``(n, 3, H, W)`` float in [0, 1]. Gaussian kernels follow torchvision's ``gaussian_blur``
(separable, reflect padding, weights ∝ exp(−t²/2σ²) normalised to sum 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from augsense.factors.chunks import row_chunks


MAX_CPU_TAPS = 11
"""Longest kernel side blurred tap by tap on the CPU; measured on 2 cores, 128 images: 7 taps 21 ms by taps vs
37 ms by the grouped convolution (224×224), 19 taps 18 ms vs 15 ms (a 120×120 crop)."""


def gaussian_kernels(sigma: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels ``(n, kernel_size)`` for per-sample ``sigma`` ``(n,)`` in pixels."""
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=sigma.device, dtype=torch.float64)
    logits = -0.5 * (t / sigma.double().unsqueeze(1)) ** 2
    return torch.softmax(logits, dim=1)


def separable_blur(images: torch.Tensor, kernel_y: torch.Tensor, kernel_x: torch.Tensor,
                   padding: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Convolve each sample with its own separable kernel.

    images ``(n, C, H, W)``; kernel_y ``(n, ky)``, kernel_x ``(n, kx)`` with odd sizes. ``padding``
    (left, right, top, bottom) is reflect padding, by default half a kernel on every side (output
    ``(n, C, H, W)``); smaller padding gives a smaller, 'valid' output. On the CPU, kernels of up to
    ``MAX_CPU_TAPS`` taps are summed over shifted views a few images at a time (:func:`_blur_into`);
    longer kernels and other devices use one grouped convolution (equal results).
    """
    n, c, h, w = images.shape
    ky, kx = kernel_y.shape[1], kernel_x.shape[1]
    if padding is None:
        padding = (kx // 2, kx // 2, ky // 2, ky // 2)
    kernel_y, kernel_x = kernel_y.to(images.dtype), kernel_x.to(images.dtype)
    if images.device.type != "cpu" or max(ky, kx) > MAX_CPU_TAPS:
        return _grouped_conv_blur(images, kernel_y, kernel_x, padding)
    out = images.new_empty(n, c, h + padding[2] + padding[3] - ky + 1, w + padding[0] + padding[1] - kx + 1)
    for rows in row_chunks(images):
        _blur_into(images[rows], kernel_y[rows], kernel_x[rows], padding, out[rows])
    return out


def _blur_into(images: torch.Tensor, kernel_y: torch.Tensor, kernel_x: torch.Tensor,
               padding: tuple[int, int, int, int], out: torch.Tensor) -> None:
    """Write the separable blur of ``images`` ``(m, C, H, W)`` into ``out`` ``(m, C, H', W')``.

    Rows first, then columns, each as Σ_t w[t]·(padded view shifted by t), tap after tap: the sums of the
    grouped convolution in its order (equal results), in ky + kx passes over cache-sized chunks.
    """
    m = images.shape[0]
    x = F.pad(images, padding, mode="reflect") if any(padding) else images
    h_out, w_out = out.shape[-2:]
    taps_y = kernel_y.reshape(m, -1, 1, 1, 1).unbind(dim=1)  # ky × (m, 1, 1, 1)
    taps_x = kernel_x.reshape(m, -1, 1, 1, 1).unbind(dim=1)
    rows = x[..., :h_out, :] * taps_y[0]
    for t in range(1, len(taps_y)):
        rows.addcmul_(x[..., t:t + h_out, :], taps_y[t])
    torch.mul(rows[..., :w_out], taps_x[0], out=out)
    for t in range(1, len(taps_x)):
        out.addcmul_(rows[..., t:t + w_out], taps_x[t])


def _grouped_conv_blur(images: torch.Tensor, kernel_y: torch.Tensor, kernel_x: torch.Tensor,
                       padding: tuple[int, int, int, int]) -> torch.Tensor:
    """The separable blur as two grouped convolutions over the batch's n·C planes (for CUDA)."""
    n, c, h, w = images.shape
    ky, kx = kernel_y.shape[1], kernel_x.shape[1]
    x = images.reshape(1, n * c, h, w)
    if any(padding):
        x = F.pad(x, padding, mode="reflect")
    wy = kernel_y.repeat_interleave(c, dim=0).reshape(n * c, 1, ky, 1)
    wx = kernel_x.repeat_interleave(c, dim=0).reshape(n * c, 1, 1, kx)
    x = F.conv2d(F.conv2d(x, wy, groups=n * c), wx, groups=n * c)
    return x.reshape(n, c, x.shape[-2], x.shape[-1])


def scaled_kernel_size(size_at_224: int, scale: float) -> int:
    """Odd kernel side for an image ``scale`` = side/224 times a 224 image, from its side at 224; at least 3."""
    return max(3, 2 * round(size_at_224 // 2 * scale) + 1)


def covering_kernel_size(sigma: float) -> int:
    """Odd kernel side covering ±3σ (σ in pixels of this image); at least 3."""
    return max(3, 2 * math.ceil(3.0 * sigma) + 1)


def gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, kernel_size: tuple[int, int] = (7, 7),
                  sigma_scale: tuple[float, float] = (1.0, 1.0)) -> torch.Tensor:
    """Gaussian blur with per-sample ``sigma`` ``(n,)`` px, times ``sigma_scale`` (y, x); kernel ``(ky, kx)``."""
    sigma = sigma.to(images.device)
    kernel_y = gaussian_kernels(sigma * sigma_scale[0], kernel_size[0])
    kernel_x = gaussian_kernels(sigma * sigma_scale[1], kernel_size[1])
    return separable_blur(images, kernel_y, kernel_x)


def adjust_sharpness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Sharpen by ``factor`` ``(n,)`` (identity 1) as torchvision/PIL: blend with a 3×3 smoothed image.

    The smoothing kernel is [[1,1,1],[1,5,1],[1,1,1]]/13, so the blend r·x + (1 − r)·smooth is
    (r + 4(1 − r)/13)·x + ((1 − r)/13)·box with box the 3×3 box sum (from shifted views); it is
    written straight into the output's interior, and the one-pixel border is left unchanged. On the CPU
    a few images at a time (``row_chunks``), so the passes run in cache.
    """
    n = images.shape[0]
    r = factor.to(device=images.device, dtype=torch.float64).reshape(n, 1, 1, 1)
    centre_weight = (r + 4.0 * (1.0 - r) / 13.0).to(images.dtype)
    box_weight = ((1.0 - r) / 13.0).to(images.dtype)
    out = torch.empty_like(images)
    for rows in row_chunks(images):
        _sharpen_into(images[rows], centre_weight[rows], box_weight[rows], out[rows])
    return out


def _sharpen_into(images: torch.Tensor, centre_weight: torch.Tensor, box_weight: torch.Tensor,
                  out: torch.Tensor) -> None:
    """Write ``centre_weight·x + box_weight·box`` (clamped) into ``out``'s interior, ``x`` on its border.

    images and out ``(m, C, H, W)``; the weights ``(m, 1, 1, 1)``; box is the 3×3 box sum.
    """
    rows = images[..., :, :-2] + images[..., :, 1:-1]
    rows += images[..., :, 2:]
    box = rows[..., :-2, :] + rows[..., 1:-1, :]
    box += rows[..., 2:, :]
    del rows
    out[..., 0, :], out[..., -1, :] = images[..., 0, :], images[..., -1, :]
    out[..., 1:-1, 0], out[..., 1:-1, -1] = images[..., 1:-1, 0], images[..., 1:-1, -1]
    interior = out[..., 1:-1, 1:-1]
    torch.mul(box, box_weight, out=box)
    torch.addcmul(box, images[..., 1:-1, 1:-1], centre_weight, out=interior)
    interior.clamp_(0.0, 1.0)


def ellipse_masks(height: int, width: int, centre_y: torch.Tensor, centre_x: torch.Tensor,
                  semi_y: torch.Tensor, semi_x: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Filled ellipses ``(n, 1, H, W)`` bool, one per sample.

    Pixel (i, j) has centre (i + 0.5, j + 0.5); every argument is ``(n,)`` in pixels (angle in degrees,
    counter-clockwise on screen); ``semi_x`` is the semi-axis along x before rotation.
    """
    device = centre_y.device
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    dy = ys.view(1, -1, 1) - centre_y.float().view(-1, 1, 1)
    dx = xs.view(1, 1, -1) - centre_x.float().view(-1, 1, 1)
    theta = torch.deg2rad(angle_deg.float()).view(-1, 1, 1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    # rotate the offset by -theta (screen y points down, so counter-clockwise is +theta with -dy)
    along_x = dx * cos - dy * sin
    along_y = dx * sin + dy * cos
    inside = (along_x / semi_x.float().view(-1, 1, 1)) ** 2 + (along_y / semi_y.float().view(-1, 1, 1)) ** 2 <= 1.0
    return inside.unsqueeze(1)


def elliptic_local_blur(images: torch.Tensor, params: torch.Tensor, sigma_px: float = 3.0) -> torch.Tensor:
    """Gaussian blur (σ = ``sigma_px`` px@224, kernel ±3σ) inside a per-sample filled ellipse.

    params ``(n, 5)``: semi-axes a (x), b (y), centre shift x, y from the image centre, all px@224,
    and the ellipse angle in degrees. Only the bounding box of the batch's ellipses is blurred (once for
    the batch, reading a kernel's margin of real pixels around it), then blended through the masks.
    """
    n, _, h, w = images.shape
    sy, sx = h / 224.0, w / 224.0
    ky, kx = covering_kernel_size(sigma_px * sy), covering_kernel_size(sigma_px * sx)
    a, b, shift_x, shift_y, angle = params.to(images.device).unbind(dim=1)
    masks = ellipse_masks(h, w, h / 2 + shift_y * sy, w / 2 + shift_x * sx, b * sy, a * sx, angle)
    rows = torch.nonzero(masks.any(dim=3).any(dim=0).squeeze(0)).squeeze(1)
    cols = torch.nonzero(masks.any(dim=2).any(dim=0).squeeze(0)).squeeze(1)
    if rows.numel() == 0:
        return images
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    py, px = ky // 2, kx // 2
    ry0, ry1, rx0, rx1 = max(y0 - py, 0), min(y1 + py, h), max(x0 - px, 0), min(x1 + px, w)
    # reflect-pad only where the margin runs past the image edge: equal to blurring the whole image
    padding = (px - (x0 - rx0), px - (rx1 - x1), py - (y0 - ry0), py - (ry1 - y1))
    sigma = torch.full((1,), sigma_px, device=images.device)
    kernel_y = gaussian_kernels(sigma * sy, ky).expand(n, ky)
    kernel_x = gaussian_kernels(sigma * sx, kx).expand(n, kx)
    blurred = separable_blur(images[..., ry0:ry1, rx0:rx1], kernel_y, kernel_x, padding)
    out = images.clone()
    out[..., y0:y1, x0:x1] = torch.where(masks[..., y0:y1, x0:x1], blurred, images[..., y0:y1, x0:x1])
    return out
