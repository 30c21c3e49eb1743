"""Example augmented images per factor at the low, middle and high ends of its bounds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from augsense.factors import FactorSpace
from augsense.factors.base import Factor
from augsense.report.palette import factor_colours

LEVELS = (("low", 0.0), ("middle", 0.5), ("high", 1.0))


def example_image(info: dict[str, Any]) -> tuple[torch.Tensor, str]:
    """The run's first reachable image as (3, S, S) float in [0, 1], and where it came from.

    Reads bundled photos (``foolbox:…``/``skimage:…`` sources) or image files named in run.json.
    Raises LookupError with the reason when none can be read (e.g. images passed in memory).
    """
    from PIL import Image

    from augsense.io.images import load_images, prepare

    size = int((info.get("model") or {}).get("input_size") or 224)
    sources = [str(s) for s in (info.get("images") or {}).get("sources", [])]
    if not sources:
        raise LookupError("run.json lists no image sources")
    for source in sources[:8]:
        if source.startswith(("foolbox:", "skimage:")):
            bundled = load_images("bundled", size)
            if source in bundled.sources:
                return bundled.pixels[bundled.sources.index(source)].float() / 255.0, source
        elif Path(source).is_file():
            try:
                with Image.open(source) as image:
                    image.load()
                    return prepare(image, size).float() / 255.0, source
            except OSError:
                continue
    raise LookupError(f"the run's images ({sources[0]}{', …' if len(sources) > 1 else ''}) were passed in memory "
                      "or are no longer on disk")


def level_rows(factor: Factor, level: float) -> torch.Tensor:
    """One unit-cube row (1, n_coords): every parameter at ``level`` of its bounds, the switch on."""
    row = torch.full((1, factor.n_coords), float(level), dtype=torch.float64)
    if factor.switch:
        row[0, -1] = 0.0  # u_switch <= p: applied
    return row


def _describe(factor: Factor, level: float) -> str:
    if not factor.parameters:
        return "on"
    params, _ = factor.parameters_from_unit(level_rows(factor, level))
    if len(factor.parameters) == 1:
        parameter = factor.parameters[0]
        return f"{parameter.name} = {float(params[0, 0]):.3g}{parameter.unit if parameter.unit in ('×', '°') else ''}"
    return f"{len(factor.parameters)} params at {level:.0%}"


def gallery(info: dict[str, Any], players: list[str]) -> tuple[Figure, str]:
    """Grid of the example image: per factor the original, then low / middle / high (on/off factors: on).

    Factors are laid out in two blocks side by side when there are more than six. Returns the
    figure and the image's source. Raises LookupError when no image is reachable.
    """
    image, source = example_image(info)
    space = FactorSpace.from_dict(info["factors"])
    factors = space.factors
    colours = factor_colours(players or space.players)
    blocks = 2 if len(factors) > 6 else 1
    rows = math.ceil(len(factors) / blocks)
    columns = 4 * blocks
    cell = 1.25
    fig = Figure(figsize=(cell * columns + 0.2 * blocks, cell * 1.18 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    batch = image.unsqueeze(0)
    for k, factor in enumerate(factors):
        row, block = k % rows, k // rows
        panels: list[tuple[str, np.ndarray]] = [(f"{factor.name}\noriginal", _to_numpy(batch))]
        levels = [("on", 0.0)] if not factor.parameters else LEVELS
        with torch.no_grad():
            for name, level in levels:
                augmented = factor(batch, level_rows(factor, level).to(batch.dtype)).clamp(0, 1)
                panels.append((f"{name}\n{_describe(factor, level)}", _to_numpy(augmented)))
        for i, (title, pixels) in enumerate(panels):
            ax = axes[row, block * 4 + i]
            ax.imshow(pixels, interpolation="bilinear")
            ax.set_title(title, fontsize=7, color=colours.get(factor.name, "black") if i == 0 else "black",
                         fontweight="bold" if i == 0 else "normal")
    return fig, source


def _to_numpy(batch: torch.Tensor) -> np.ndarray:
    return batch[0].permute(1, 2, 0).double().cpu().numpy()
