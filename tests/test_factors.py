"""Every built-in factor: the batched call equals applying the same operation to each sample alone.

References: torchvision's functional ops where the meaning matches (colour ops within 1e-5), and
independent per-sample references written here for rotation-with-crop, rolling and elliptic local blur.
"""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from augsense.factors import blur, chunks, get_factor

COLOUR_ATOL = 1e-5
N = 6


def _photo_like(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Random images (n,3,h,w) in [0,1]: noise plus some exactly gray and saturated pixels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, h, w, generator=g)
    images[:, :, : h // 8] = images[:, :1, : h // 8]  # gray rows hit the max == min branch of HSV
    images[:, :, -2:, :] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    return images


def _smooth(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth images (n,3,h,w) in [0.1,0.9], so interpolation differences stay small."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    out = []
    for _ in range(n):
        a = torch.rand(3, 3, generator=g) * 6 + 1
        ph = torch.rand(3, generator=g) * 6
        out.append(torch.stack([0.5 + 0.4 * torch.sin(a[c, 0] * xx + a[c, 1] * yy + ph[c]) for c in range(3)]))
    return torch.stack(out)


def _params(name: str, n: int, seed: int = 1, **bounds: tuple[float, float]) -> torch.Tensor:
    factor = get_factor(name, **bounds)
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, factor.n_coords, generator=g, dtype=torch.float64)
    u[0, :] = 0.0
    u[-1, :] = 1.0
    params, _ = factor.parameters_from_unit(u)
    return params.float()


TORCHVISION_COLOUR = {
    "brightness": TF.adjust_brightness,
    "contrast": TF.adjust_contrast,
    "saturation": TF.adjust_saturation,
    "hue": TF.adjust_hue,
}


@pytest.mark.parametrize("name", sorted(TORCHVISION_COLOUR))
def test_colour_factor_matches_torchvision_per_sample(name: str) -> None:
    images = _photo_like(N, 40, 48)
    params = _params(name, N)
    out = get_factor(name).apply(images, params)
    for i in range(N):
        expected = TORCHVISION_COLOUR[name](images[i], float(params[i, 0]))
        torch.testing.assert_close(out[i], expected, atol=COLOUR_ATOL, rtol=0)


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("grayscale", lambda im: TF.rgb_to_grayscale(im, num_output_channels=3)),
        ("hflip", TF.horizontal_flip),
        ("sharpness", lambda im: TF.adjust_sharpness(im, 1.5)),
    ],
)
def test_on_off_factor_matches_torchvision(name: str, reference) -> None:
    images = _photo_like(N, 40, 48)
    factor = get_factor(name)
    assert factor.switch and factor.parameters == ()
    out = factor.apply(images, torch.zeros(N, 0))
    for i in range(N):
        torch.testing.assert_close(out[i], reference(images[i]), atol=COLOUR_ATOL, rtol=0)


def test_gaussian_blur_matches_torchvision_7x7_at_224() -> None:
    images = _photo_like(3, 224, 224)
    params = _params("gaussian_blur", 3)
    out = get_factor("gaussian_blur").apply(images, params)
    for i in range(3):
        expected = TF.gaussian_blur(images[i], [7, 7], [float(params[i, 0])] * 2)
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


def test_gaussian_blur_scales_sigma_and_kernel_with_image_size() -> None:
    images = _photo_like(2, 112, 56)
    params = torch.tensor([[2.0], [0.7]])
    out = get_factor("gaussian_blur").apply(images, params)
    for i in range(2):
        sigma = float(params[i, 0])
        # H = 112: kernel 2*round(3*0.5)+1 = 5, sigma/2; W = 56: kernel 2*round(3*0.25)+1 = 3, sigma/4
        expected = TF.gaussian_blur(images[i], [3, 5], [sigma / 4, sigma / 2])
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


def test_erasing_matches_torchvision_erase() -> None:
    h, w = 60, 80
    images = _photo_like(N, h, w)
    params = _params("erasing", N)
    out = get_factor("erasing").apply(images, params)
    for i in range(N):
        cy, cx, area, log_aspect = (float(v) for v in params[i].double())
        aspect = math.exp(log_aspect)
        bh = round(math.sqrt(area * h * w * aspect))
        bw = round(math.sqrt(area * h * w / aspect))
        top, left = round(cy * h - bh / 2), round(cx * w - bw / 2)
        i0, j0 = max(top, 0), max(left, 0)
        i1, j1 = min(top + bh, h), min(left + bw, w)
        expected = TF.erase(images[i], i0, j0, i1 - i0, j1 - j0, torch.tensor(0.0))
        torch.testing.assert_close(out[i], expected, atol=0, rtol=0)
        assert (out[i] == 0).any()


def test_rolling_matches_per_sample_numpy_roll() -> None:
    h, w = 30, 50
    images = _photo_like(N, h, w)
    params = _params("rolling", N)
    out = get_factor("rolling").apply(images, params)
    for i in range(N):
        dy, dx = round(float(params[i, 0]) * h), round(float(params[i, 1]) * w)
        expected = images[i].numpy()
        # independent reference: index arithmetic by hand, out[y, x] = in[(y - dy) % h, (x - dx) % w]
        ref = expected.copy()
        for y in range(h):
            for x in range(w):
                ref[:, y, x] = expected[:, (y - dy) % h, (x - dx) % w]
        torch.testing.assert_close(out[i], torch.from_numpy(ref), atol=0, rtol=0)


def test_rotation_matches_torchvision_rotate_crop_resize() -> None:
    """Reference: torchvision rotate (bilinear), centre crop of the inscribed square, bilinear resize.

    Two interpolations and an integer crop side in the reference against one warp here: on smooth images
    the interior (4 px border excluded) agrees within 0.03 (max) and 0.006 (mean).
    """
    h = w = 224
    images = _smooth(4, h, w)
    params = torch.tensor([[-10.0], [-3.3], [6.0], [10.0]])
    out = get_factor("rotation").apply(images, params)
    for i in range(4):
        angle = float(params[i, 0])
        t = math.radians(abs(angle))
        side = math.floor(h / (math.cos(t) + math.sin(t)))
        ref = TF.rotate(images[i], angle, interpolation=TF.InterpolationMode.BILINEAR)
        ref = TF.resize(TF.center_crop(ref, [side, side]), [h, w], antialias=False)
        diff = (out[i] - ref).abs()[:, 4:-4, 4:-4]
        assert float(diff.max()) <= 0.03, float(diff.max())
        assert float(diff.mean()) <= 0.006, float(diff.mean())
        # no empty border: corners are image content, not fill
        assert float(out[i][:, [0, 0, -1, -1], [0, -1, 0, -1]].min()) >= 0.09


def test_rotation_crops_non_square_images_without_borders() -> None:
    images = torch.ones(2, 3, 48, 96)
    out = get_factor("rotation", angle=(-30, 30)).apply(images, torch.tensor([[30.0], [-30.0]]))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)


def _ellipse_reference(image: torch.Tensor, a: float, b: float, x: float, y: float, angle: float) -> torch.Tensor:
    """Per-sample reference: torchvision blur (σ=3 px@224, 19-tap at 224) pasted inside an ellipse drawn by loops."""
    _, h, w = image.shape
    sy, sx = h / 224, w / 224
    ky = max(3, 2 * math.ceil(9 * sy) + 1)
    kx = max(3, 2 * math.ceil(9 * sx) + 1)
    blurred = TF.gaussian_blur(image, [kx, ky], [3 * sx, 3 * sy])
    cy, cx = h / 2 + y * sy, w / 2 + x * sx
    t = math.radians(angle)
    out = image.clone()
    for i in range(h):
        for j in range(w):
            dy, dx = i + 0.5 - cy, j + 0.5 - cx
            # point in the ellipse's frame: undo a counter-clockwise (on screen, y down) rotation
            ex = dx * math.cos(t) - dy * math.sin(t)
            ey = dx * math.sin(t) + dy * math.cos(t)
            if (ex / (a * sx)) ** 2 + (ey / (b * sy)) ** 2 <= 1.0:
                out[:, i, j] = blurred[:, i, j]
    return out


def test_elliptic_local_blur_matches_per_sample_reference() -> None:
    h, w = 112, 112
    images = _photo_like(3, h, w)
    params = _params("elliptic_local_blur", 3)
    out = get_factor("elliptic_local_blur").apply(images, params)
    for i in range(3):
        expected = _ellipse_reference(images[i], *(float(v) for v in params[i]))
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)
        assert (out[i] != images[i]).any()


def test_elliptic_local_blur_at_the_image_edges_matches_reference() -> None:
    """Ellipses that leave the image: the blurred region's margin is reflect-padded like a full-image blur."""
    images = _photo_like(2, 64, 96)
    factor = get_factor("elliptic_local_blur", x=(-112, 112), y=(-112, 112), angle=(-90, 90), a=(1, 224))
    params = torch.tensor([[40.0, 32.0, 112.0, -112.0, 0.0], [100.0, 20.0, -100.0, 90.0, 30.0]])
    out = factor.apply(images, params)
    for i in range(2):
        expected = _ellipse_reference(images[i], *(float(v) for v in params[i]))
        torch.testing.assert_close(out[i], expected, atol=1e-5, rtol=0)


def test_elliptic_mask_is_rotated_counter_clockwise() -> None:
    """A thin ellipse at +45° on screen covers the top-right and bottom-left diagonal, not the other."""
    image = _photo_like(1, 224, 224)
    params = torch.tensor([[32.0, 10.0, 0.0, 0.0, 15.0]])
    factor = get_factor("elliptic_local_blur", angle=(-45, 45))
    out = factor.apply(image, params.clone().index_fill_(1, torch.tensor([4]), 45.0))
    changed = (out != image).any(dim=1)[0]
    assert changed[112 - 20, 112 + 20] and changed[112 + 20, 112 - 20]
    assert not changed[112 - 20, 112 - 20] and not changed[112 + 20, 112 + 20]


IDENTITY = {
    "brightness": 1.0,
    "contrast": 1.0,
    "saturation": 1.0,
    "hue": 0.0,
    "gaussian_blur": 0.1,
    "rotation": 0.0,
}


@pytest.mark.parametrize("name", sorted(IDENTITY))
def test_identity_parameter_returns_input(name: str) -> None:
    images = _photo_like(3, 32, 40)
    out = get_factor(name).apply(images, torch.full((3, 1), IDENTITY[name]))
    torch.testing.assert_close(out, images, atol=COLOUR_ATOL, rtol=0)  # hue: HSV round trip, ~1e-6


def test_rolling_zero_and_switch_off_return_input() -> None:
    images = _photo_like(3, 32, 40)
    assert torch.equal(get_factor("rolling").apply(images, torch.zeros(3, 2)), images)
    for name in ["hflip", "grayscale", "sharpness"]:
        factor = get_factor(name)
        assert torch.equal(factor(images, torch.full((3, 1), 0.9)), images)  # u > p: off
    erasing = get_factor("erasing").with_switch(0.5)
    assert torch.equal(erasing(images, torch.full((3, 5), 0.75)), images)


def test_call_applies_only_active_samples() -> None:
    images = _photo_like(4, 32, 32)
    u = torch.tensor([[0.1], [0.9], [0.5], [0.51]], dtype=torch.float64)
    out = get_factor("hflip")(images, u)
    for i, on in enumerate([True, False, True, False]):
        assert torch.equal(out[i], images[i].flip(-1) if on else images[i])


@pytest.mark.parametrize("name", ["brightness", "hue", "rotation", "elliptic_local_blur", "erasing", "rolling",
                                  "gaussian_blur", "sharpness", "contrast", "saturation", "grayscale", "hflip",
                                  "erasing_reference", "rolling_reference", "rotation_reference"])
def test_inference_mode_float32_deterministic(name: str) -> None:
    factor = get_factor(name)
    images = _photo_like(4, 48, 48)
    u = torch.rand(4, factor.n_coords, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        first = factor(images, u)
        second = factor(images.clone(), u.clone())
    assert first.dtype == torch.float32 and first.shape == images.shape
    assert torch.equal(first, second)
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation", "hue", "rotation", "elliptic_local_blur",
                                  "erasing", "rolling", "gaussian_blur", "sharpness", "grayscale", "hflip"])
def test_cuda_matches_cpu(name: str) -> None:
    factor = get_factor(name)
    images = _smooth(4, 64, 64)
    params = _params(name, 4)
    with torch.inference_mode():
        cpu = factor.apply(images, params)
        gpu = factor.apply(images.cuda(), params.cuda())
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["gaussian_blur", "sharpness", "elliptic_local_blur", "erasing", "erasing_reference"])
def test_cpu_row_chunks_and_batch_composition_leave_results_unchanged(name: str, monkeypatch) -> None:
    """The CPU paths run a few images at a time (row_chunks): any chunking gives each sample's own result."""
    factor = get_factor(name)
    n = 7
    images = _photo_like(n, 40, 48)
    params = _params(name, n)
    whole = factor.apply(images, params)
    monkeypatch.setattr(chunks, "CACHE_CHUNK_BYTES", 2 * images[0].numel() * images.element_size())
    assert [s.stop - s.start for s in chunks.row_chunks(images)] == [2, 2, 2, 1]
    assert torch.equal(factor.apply(images, params), whole)
    for i in range(n):
        assert torch.equal(factor.apply(images[i:i + 1], params[i:i + 1]), whole[i:i + 1]), i


def test_separable_blur_on_the_cpu_equals_the_grouped_convolution() -> None:
    """The CPU's tap-by-tap sums and the grouped convolution used on CUDA give the same blur (also 'valid' padding)."""
    images = _photo_like(5, 40, 48)
    sigma = torch.tensor([0.3, 0.9, 1.4, 2.0, 3.1], dtype=torch.float64)
    kernel_y, kernel_x = blur.gaussian_kernels(sigma, 7), blur.gaussian_kernels(sigma * 0.5, 5)
    for padding in [(2, 2, 3, 3), (0, 2, 1, 3), (0, 0, 0, 0)]:
        taps = blur.separable_blur(images, kernel_y, kernel_x, padding)
        conv = blur._grouped_conv_blur(images, kernel_y.float(), kernel_x.float(), padding)
        assert taps.shape == conv.shape
        torch.testing.assert_close(taps, conv, atol=1e-6, rtol=0)
