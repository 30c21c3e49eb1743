"""The random composition order as a factor, against its exact share (issue: no silently wrong numbers).

A "stamp" factor paints the top-left quarter; hflip moves it to the right when it comes later, and
brightness scales it when it comes later, so the order of the three matters. Every factor here
is discrete or polynomial (brightness, 4 Gauss–Legendre nodes), and the order player takes 3! = 6
values, so enumerating image x stamp x flip x brightness x order with the real factor code gives the
exact indices (tests/exact.py). The pipeline must cover them, also at large N where the intervals
are narrow (the order's ST came out 0.335-0.350 +- 0.02 against an exact 0.2915 before the image
pairing was fixed).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from augsense.analyses.sensitivity import build_factor_space, run_sensitivity
from augsense.config import SensitivityConfig
from augsense.design.core import image_assignment
from augsense.factors import make_factor, register_factor
from augsense.factors.registry import unregister_factor
from augsense.io.images import ImageSet
from augsense.io.models import ModelBundle
from exact import exact_indices, exact_within, gauss_legendre

SIZE = 8
STAMP = 0.9
FACTORS = ["order_test_stamp", "hflip", "brightness"]
BOUNDS = {"brightness": {"factor": [0.2, 1.0]}}
SLACK = 1e-6


def _stamp(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    out = images.clone()
    h, w = images.shape[-2:]
    out[..., : h // 2, : w // 2] = STAMP
    return out


@pytest.fixture(autouse=True)
def stamp_factor():
    """The stamp factor, registered for these tests only (the registry is global)."""
    register_factor(make_factor("order_test_stamp", [], _stamp, switch=True,
                                description="paint the top-left quarter (tests)"), overwrite=True)
    yield
    unregister_factor("order_test_stamp")


class Readout(nn.Module):
    """(n, 3, 8, 8) → (n, 3): left-half luminance, its square, top-left-quarter luminance."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = torch.einsum("nchw,c->nhw", x, torch.tensor([0.2989, 0.587, 0.114]).to(x))
        half = x.shape[-1] // 2
        left = grey[..., :half].mean((1, 2))
        corner = grey[..., : x.shape[-2] // 2, :half].mean((1, 2))
        return torch.stack([left, left * left, corner], 1)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.readout = Readout()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(x)


def images(n: int) -> ImageSet:
    generator = torch.Generator().manual_seed(7)
    base = 0.1 + 0.5 * torch.rand(n, 3, 1, 1, generator=generator)
    tilt = 0.3 * torch.rand(n, 1, 1, 1, generator=generator) * torch.linspace(-1, 1, SIZE).view(1, 1, 1, -1)
    pixels = ((base + tilt + 0.1 * torch.rand(n, 3, SIZE, SIZE, generator=generator)).clamp(0.02, 0.98) * 255)
    return ImageSet(pixels.round().to(torch.uint8), None, [f"order:{i}" for i in range(n)])


def config(**changes) -> SensitivityConfig:
    values = dict(model="order-test", images="python", layers=["readout"], factors=FACTORS, bounds=BOUNDS,
                  random_order=True, estimator="sobol", n=256, seed=0, batch_size=512, device="cpu",
                  output="logits", report=False)
    values.update(changes)
    return SensitivityConfig(**values)


def grid(image_set: ImageSet) -> tuple[np.ndarray, list[np.ndarray]]:
    """Units on image x stamp x flip x brightness node x order: (n, 2, 2, 4, 6, 3), and axis weights."""
    space = build_factor_space(config())
    assert space.players == FACTORS + ["order"]
    xb, wb = gauss_legendre(0.2, 1.0, 4)
    switch = np.array([0.25, 0.75])                         # u <= 1/2: on
    orders = (np.arange(6) + 0.5) / 6                       # one u per Lehmer code
    u = np.stack(np.meshgrid(switch, switch, (xb - 0.2) / 0.8, orders, indexing="ij"), -1).reshape(-1, 4)
    n, g = len(image_set), len(u)
    x = image_set.batch(torch.arange(n).repeat_interleave(g)).double()
    with torch.no_grad():
        out = Readout()(space.apply(x, torch.from_numpy(np.tile(u, (n, 1)))))
    half = np.array([0.5, 0.5])
    return out.numpy().reshape(n, 2, 2, 4, 6, 3), [half, half, wb, np.full(6, 1 / 6)]


def run(n_images: int, seed: int, n: int, mode: str = "within"):
    bundle = ModelBundle(Net().eval(), "order-test", SIZE, SIZE, (0.0,) * 3, (1.0,) * 3, None, "as given")
    return run_sensitivity(config(n=n, seed=seed, image_mode=mode), model=bundle, images=images(n_images),
                           progress=False).result


def exact(values: np.ndarray, weights: list[np.ndarray], mode: str, image_weights: np.ndarray):
    if mode == "within":
        return [exact_within(values[..., j], image_weights, weights) for j in range(values.shape[-1])]
    moved = np.moveaxis(values, 0, 4)                          # image is the last player in joint mode
    n = values.shape[0]
    return [exact_indices(moved[..., j], [*weights, np.full(n, 1 / n)]) for j in range(values.shape[-1])]


def covered(result, truth) -> list[bool]:
    hits = []
    for quantity in ("first_order", "total_order"):
        ci = getattr(result, f"{quantity}_ci")
        for unit, e in enumerate(truth):
            for player, target in enumerate(getattr(e, quantity)):
                hits.append(ci[0, unit, player] - SLACK <= target <= ci[1, unit, player] + SLACK)
    return hits


def test_the_order_matters_here():
    values, weights = grid(images(4))
    truth = exact(values, weights, "within", np.full(4, 0.25))
    order_total = [e.total_order[3] for e in truth]
    assert min(order_total) > 0.02, order_total


@pytest.mark.parametrize("mode", ["within", "joint"])
def test_order_factor_intervals_cover_the_exact_value(mode):
    n_images, n = 4, 256
    values, weights = grid(images(n_images))
    hits = []
    for seed in range(8):
        counts = np.bincount(image_assignment(np.arange(n), n_images, n=n, seed=seed), minlength=n_images)
        hits += covered(run(n_images, seed, n, mode), exact(values, weights, mode, counts / n))
    assert 0.88 <= np.mean(hits) <= 0.995, (np.mean(hits), len(hits))


def test_order_factor_total_index_at_large_n():
    n_images, n = 4, 8192
    values, weights = grid(images(n_images))
    counts = np.bincount(image_assignment(np.arange(n), n_images, n=n, seed=3), minlength=n_images)
    truth = exact(values, weights, "within", counts / n)
    result = run(n_images, 3, n)
    low, high = result.total_order_ci[:, :, 3]
    targets = np.array([e.total_order[3] for e in truth])
    assert ((high - low) < 0.1).all()                           # narrow: large N
    assert ((low - SLACK <= targets) & (targets <= high + SLACK)).sum() >= 2, (low, high, targets)
