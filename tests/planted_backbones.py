"""Three planted networks with the same units in three layouts: NCHW (a CNN), NHWC (Swin-like), tokens (ViT-like).

A hand-set 8×8 patch embedding (stride 8) turns a 32×32 image into a 4×4 grid of patch means
[luminance, R − G, R + G + B, 1]; the ``block`` then writes five features at every patch position:

- 0: the patch's luminance (its mean over patches moves with brightness only);
- 1: the patch's chromaticity (R − G)/(R + G + B) (mean: saturation only; brightness cancels);
- 2: side × luminance / mean luminance, side +1 on the left two grid columns, −1 on the right two
  (mean: the left–right luminance share, hflip only);
- 3: a constant (dead);
- 4: the patch's R + G + B (moves with brightness and saturation, never with hflip).

With ``reduction = "mean"`` the five channel units of ``block`` therefore have the planted answers of
:mod:`planted` in every layout, and with ``"none"`` the (5, 4, 4) per-position maps of the three
networks must be the same numbers. The ViT-like network puts a class token first whose five channels
are the pooled features permuted, [2, 0, 1, 3, 4], so ``reduction = "cls"`` gives unit 0 ↔ hflip,
1 ↔ brightness, 2 ↔ saturation: a different answer from ``mean`` (which must leave the class token out).
The head reads the three informative features, pooled over the patches (3 classes).
"""

from __future__ import annotations

import torch
from torch import nn

from augsense.io.models import ModelBundle
from planted import LUMA

CHANNELS = 5
GRID = 4
SIZE = 32
MEAN_ANSWER = {0: "brightness", 1: "saturation", 2: "hflip"}
CLS_ANSWER = {0: "hflip", 1: "brightness", 2: "saturation"}
CLS_ORDER = [2, 0, 1, 3, 4]


def patch_embedding() -> nn.Conv2d:
    """(n, 3, 32, 32) → (n, 4, 4, 4): per 8×8 patch, the means [luminance, R − G, R + G + B] and 1."""
    conv = nn.Conv2d(3, 4, kernel_size=8, stride=8)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0] = torch.tensor(LUMA).view(3, 1, 1) / 64
        conv.weight[1] = torch.tensor([1.0, -1.0, 0.0]).view(3, 1, 1) / 64
        conv.weight[2] = 1.0 / 64
        conv.bias[3] = 1.0
    return conv


def features(lum: torch.Tensor, opponent: torch.Tensor, total: torch.Tensor, one: torch.Tensor) -> torch.Tensor:
    """Per-patch inputs (n, 4, 4) each → (n, 5, 4, 4) planted features, channels first."""
    side = torch.ones(GRID, device=lum.device)
    side[GRID // 2:] = -1.0
    share = lum * side / lum.mean(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    return torch.stack([lum, opponent / total.clamp_min(1e-4), share, one, total], dim=1)


def identity_linear(kind: type) -> nn.Module:
    """An identity projection (Linear, or 1×1 Conv2d): what fixes the channel axis for layout detection."""
    module = nn.Linear(CHANNELS, CHANNELS) if kind is nn.Linear else nn.Conv2d(CHANNELS, CHANNELS, 1)
    with torch.no_grad():
        module.weight.copy_(torch.eye(CHANNELS).view_as(module.weight))
        module.bias.zero_()
    return module


def head() -> nn.Linear:
    """(n, 5) pooled features → 3 logits [4 (luminance − ½), 20 chromaticity, 20 share]: each class wins on some
    images, so masking any of the three informative channels changes predictions."""
    linear = nn.Linear(CHANNELS, 3)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[0, 0], linear.weight[1, 1], linear.weight[2, 2] = 4.0, 20.0, 20.0
        linear.bias.copy_(torch.tensor([-2.0, 0.0, 0.0]))
    return linear


class CnnBlock(nn.Module):
    """(n, 4, 4, 4) patch means → (n, 5, 4, 4) features (NCHW)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = identity_linear(nn.Conv2d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(features(x[:, 0], x[:, 1], x[:, 2], x[:, 3]))


class PlantedCnn(nn.Module):
    """patch_embed → block (n, 5, 4, 4) → mean over positions → head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = patch_embedding()
        self.block = CnnBlock()
        self.head = head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.patch_embed(x)).mean(dim=(2, 3)))


class SwinBlock(nn.Module):
    """(n, 4, 4, 4) NHWC patch means → (n, 4, 4, 5) NHWC features."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = identity_linear(nn.Linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(features(x[..., 0], x[..., 1], x[..., 2], x[..., 3]).permute(0, 2, 3, 1))


class PlantedSwin(nn.Module):
    """patch_embed → channels last → block (n, 4, 4, 5) → mean over positions → head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = patch_embedding()
        self.block = SwinBlock()
        self.head = head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.patch_embed(x).permute(0, 2, 3, 1)).mean(dim=(1, 2)))


class VitBlock(nn.Module):
    """(n, 1 + 16, 4) tokens [class, patches row-major] → (n, 17, 5) tokens; the class token gets the pooled
    features in the order ``CLS_ORDER``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = identity_linear(nn.Linear)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[0]
        grid = tokens[:, 1:].transpose(1, 2).reshape(n, 4, GRID, GRID)  # row-major tokens back on the grid
        planted = features(grid[:, 0], grid[:, 1], grid[:, 2], grid[:, 3])  # (n, 5, 4, 4)
        patches = planted.flatten(2).transpose(1, 2)  # (n, 16, 5)
        cls = patches.mean(dim=1)[:, CLS_ORDER].unsqueeze(1)
        return self.proj(torch.cat([cls, patches], dim=1))


class PlantedVit(nn.Module):
    """patch_embed → tokens (class token first, as torchvision's ViT) → block (n, 17, 5) → patch mean → head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = patch_embedding()
        self.class_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.block = VitBlock()
        self.head = head()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (n, 16, 4)
        tokens = torch.cat([self.class_token.expand(x.shape[0], -1, -1), patches], dim=1)
        return self.head(self.block(tokens)[:, 1:].mean(dim=1))


NETWORKS = {"cnn": PlantedCnn, "swin": PlantedSwin, "vit": PlantedVit}


def bundle(kind: str) -> ModelBundle:
    """The planted network ``kind`` (cnn, swin, vit), unnormalised inputs, 32×32."""
    return ModelBundle(NETWORKS[kind]().eval(), f"planted-{kind}", SIZE, SIZE, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
                       ["lum", "chroma", "share"])
