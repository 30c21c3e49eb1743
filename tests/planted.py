"""A planted network whose right answer is known in advance, and images for it.

With factors brightness (bounds [0.1, 1], no clipping), saturation ([0, 1], pure blending) and
hflip, the readout units of ``PlantedNet`` are built so that

- unit 0, mean luminance, moves with brightness only (saturation keeps luminance, flips keep means);
- unit 1, mean chromaticity (R − G)/(R + G + B), moves with saturation only (brightness cancels);
- unit 2, left-minus-right luminance share, moves with hflip only (brightness cancels, grey is
  unchanged by saturation);
- unit 3 is a constant (dead);
- unit 4, the squared left–right share, depends on the image only (no factor changes it).

Inputs reach the model unnormalised (mean 0, std 1 in the bundle).
"""

from __future__ import annotations

import torch
from torch import nn

from augsense.io.images import ImageSet
from augsense.io.models import ModelBundle

LUMA = (0.2989, 0.587, 0.114)
PLANTED = {0: "brightness", 1: "saturation", 2: "hflip"}


class PlantedReadout(nn.Module):
    """(n, 4, H, W) colour maps [grey, R−G, R+G+B, ones] → (n, 5) planted units."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        grey, opponent, total = maps[:, 0], maps[:, 1], maps[:, 2]
        width = grey.shape[-1]
        side = torch.ones(width, device=maps.device)
        side[width // 2:] = -1.0
        luminance = grey.mean(dim=(1, 2))
        chroma = (opponent / total.clamp_min(1e-4)).mean(dim=(1, 2))
        asymmetry = (grey * side).sum(dim=(1, 2)) / grey.sum(dim=(1, 2)).clamp_min(1e-6)
        constant = maps[:, 3].mean(dim=(1, 2))
        image_only = asymmetry ** 2
        return torch.stack([luminance, chroma, asymmetry, constant, image_only], dim=1)


class PlantedNet(nn.Module):
    """colour (1×1 conv, hand-set) → readout (5 planted units) → fc (3 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.colour = nn.Conv2d(3, 4, kernel_size=1)
        with torch.no_grad():
            self.colour.weight.zero_()
            self.colour.bias.zero_()
            self.colour.weight[0, :, 0, 0] = torch.tensor(LUMA)
            self.colour.weight[1, :, 0, 0] = torch.tensor([1.0, -1.0, 0.0])
            self.colour.weight[2, :, 0, 0] = 1.0
            self.colour.bias[3] = 1.0
        self.readout = PlantedReadout()
        self.fc = nn.Linear(5, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[8.0, 0, 0, 0, 0], [0, 8.0, 0, 0, 0], [0, 0, 8.0, 0, 0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.readout(self.colour(x)))


def planted_bundle() -> ModelBundle:
    return ModelBundle(PlantedNet().eval(), "planted", 32, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), ["lum", "chroma", "asym"])


def planted_images(n: int = 16, size: int = 32, seed: int = 0) -> ImageSet:
    """Smooth random colour images, each with its own left–right imbalance: (n, 3, size, size) uint8."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=generator)
    images = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    ramp = torch.linspace(-0.5, 0.5, size).view(1, 1, 1, size)
    tilt = (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    images = (0.15 + 0.7 * images + 0.3 * tilt * ramp).clamp(0.02, 0.98)
    pixels = (images * 255).round().to(torch.uint8)
    labels = torch.arange(n) % 3
    return ImageSet(pixels, labels, [f"planted:{i}" for i in range(n)])


PLANTED_CONFIG = dict(model="planted", images="planted", layers=["readout"], factors=["brightness", "saturation", "hflip"],
                      bounds={"brightness": {"factor": [0.1, 1.0]}, "saturation": {"factor": [0.0, 1.0]}},
                      output="logits", report=False, batch_size=64, device="cpu")


def planted_run_folder(out):
    """(out, its SensitivityRun): a small finished run of the planted network (readout + output layers, n = 64)."""
    from augsense.analyses.sensitivity import run_sensitivity
    from augsense.config import SensitivityConfig

    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images", "layers")}
    run = run_sensitivity(SensitivityConfig(**values, layers=["readout", "output"], n=64), model=planted_bundle(),
                          images=planted_images(), out_dir=out, progress=False)
    return out, run
