"""A planted network whose units depend on the image *and* on the factors, with exact answers.

Factors: brightness (factor in [0.2, 1], no clipping), saturation ([0, 1], a pure blend with grey)
and hflip (a switch, on with probability 1/2). Every unit is a polynomial of degree <= 2 in the
brightness and saturation factors, whose coefficients depend on the image and on the flip: with
G = left-half mean luminance and O = left-half mean of R - G (both change with hflip and differ per
image), the units are

    G, O, G^2, G * O, G + 2 * O, (mean luminance of the whole image) * G

so they mix brightness x hflip x image, brightness x saturation x hflip x image, and an
image-only factor times an interaction. :func:`exact_answer` runs the *real* factor code and the
network on every image x Gauss–Legendre node x flip (4-node rules integrate these polynomials
exactly) and returns the exact indices (tests/exact.py); nothing of augsense's estimators is used.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from augsense.factors import FactorSpace, get_factor
from augsense.io.images import ImageSet
from augsense.io.models import ModelBundle
from exact import ExactIndices, exact_indices, exact_within, gauss_legendre

LUMA = torch.tensor([0.2989, 0.587, 0.114])
FACTORS = ["brightness", "saturation", "hflip"]
BOUNDS = {"brightness": {"factor": [0.2, 1.0]}, "saturation": {"factor": [0.0, 1.0]}}
SIZE = 8
N_UNITS = 6


class ImageFactorReadout(nn.Module):
    """(n, 3, S, S) in [0, 1] → (n, 6) units (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = torch.einsum("nchw,c->nhw", x, LUMA.to(x))
        opponent = x[:, 0] - x[:, 1]
        half = x.shape[-1] // 2
        g = grey[..., :half].mean((1, 2))
        o = opponent[..., :half].mean((1, 2))
        whole = grey.mean((1, 2))
        return torch.stack([g, o, g * g, g * o, g + 2 * o, whole * g], 1)


class ImageFactorNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.readout = ImageFactorReadout()
        self.fc = nn.Linear(N_UNITS, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.readout(x))


def bundle() -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle(ImageFactorNet().eval(), "image-factor", SIZE, SIZE, (0.0,) * 3, (1.0,) * 3, None,
                       "as given")


def images(n: int, seed: int = 0) -> ImageSet:
    """n images (n, 3, 8, 8) uint8 with their own colour balance and left–right imbalance."""
    generator = torch.Generator().manual_seed(1000 + seed)
    base = 0.2 + 0.6 * torch.rand(n, 3, 1, 1, generator=generator)
    texture = 0.15 * torch.rand(n, 3, SIZE, SIZE, generator=generator)
    tilt = 0.4 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5) * torch.linspace(-1, 1, SIZE).view(1, 1, 1, -1)
    pixels = ((base + texture + tilt).clamp(0.02, 0.98) * 255).round().to(torch.uint8)
    return ImageSet(pixels, None, [f"planted:{i}" for i in range(n)])


def space(image_mode: str = "within") -> FactorSpace:
    factors = [get_factor(name) for name in FACTORS]
    factors = [f.with_bounds(**{k: tuple(v) for k, v in BOUNDS.get(f.name, {}).items()}) if f.name in BOUNDS else f
               for f in factors]
    return FactorSpace(factors, image_mode=image_mode)  # type: ignore[arg-type]


def grid_values(image_set: ImageSet, nodes: int = 4) -> tuple[np.ndarray, list[np.ndarray]]:
    """The units on every image x brightness node x saturation node x flip: (n_images, k, k, 2, 6)
    float64, and the probability weights of the three factor axes."""
    low_b, high_b = BOUNDS["brightness"]["factor"]
    low_s, high_s = BOUNDS["saturation"]["factor"]
    xb, wb = gauss_legendre(low_b, high_b, nodes)
    xs, ws = gauss_legendre(low_s, high_s, nodes)
    ub, us = (xb - low_b) / (high_b - low_b), (xs - low_s) / (high_s - low_s)
    flips = np.array([0.25, 0.75])  # u <= 1/2 switches the flip on
    u = np.stack(np.meshgrid(ub, us, flips, indexing="ij"), -1).reshape(-1, 3)
    n, g = len(image_set), len(u)
    rows = torch.from_numpy(np.tile(u, (n, 1))).double()
    x = image_set.batch(torch.arange(n).repeat_interleave(g)).double()
    with torch.no_grad():
        out = ImageFactorReadout()(space().apply(x, rows))
    return out.numpy().reshape(n, nodes, nodes, 2, N_UNITS), [wb, ws, np.array([0.5, 0.5])]


def exact_answer(image_set: ImageSet, image_mode: str, image_weights: np.ndarray | None = None,
                 grid: tuple[np.ndarray, list[np.ndarray]] | None = None) -> list[ExactIndices]:
    """Exact indices of every unit. Within: players (brightness, saturation, hflip), images averaged
    with ``image_weights`` (default uniform); joint: the image is a fourth player, uniform.
    ``grid``: :func:`grid_values` of the images, when already computed."""
    values, weights = grid if grid is not None else grid_values(image_set)
    n = len(image_set)
    w = np.full(n, 1 / n) if image_weights is None else np.asarray(image_weights)
    if image_mode == "within":
        return [exact_within(values[..., j], w, weights) for j in range(N_UNITS)]
    moved = np.moveaxis(values, 0, 3)  # (k, k, 2, n_images, units): players in FactorSpace order
    return [exact_indices(moved[..., j], [*weights, np.full(n, 1 / n)]) for j in range(N_UNITS)]
