"""Example augmented images per factor at the low, middle and high ends of its bounds."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import matplotlib.colors as mcolors
import numpy as np
import torch
from matplotlib.figure import Figure

from augsense.factors import FactorSpace
from augsense.factors.base import Factor
from augsense.report.palette import factor_colours

LEVELS = (("low", 0.0), ("middle", 0.5), ("high", 1.0))
#: Pixels per side of a gallery thumbnail (the augmentation itself runs at the model's input size).
DISPLAY_SIZE = 128


def example_image(info: dict[str, Any]) -> tuple[torch.Tensor, str]:
    """The run's first reachable image as (3, S, S) float in [0, 1], and where it came from.

    Reads bundled photos (``foolbox:…``/``skimage:…`` sources) or image files named in run.json.
    Raises LookupError with the reason when none can be read (e.g. images passed in memory).
    """
    from PIL import Image

    from augsense.io.images import prepare

    size = int((info.get("model") or {}).get("input_size") or 224)
    sources = [str(s) for s in (info.get("images") or {}).get("sources", [])]
    if not sources:
        raise LookupError("run.json lists no image sources")
    for source in sources[:8]:
        path = _bundled_path(source) if source.startswith(("foolbox:", "skimage:")) else Path(source)
        if path is None or not path.is_file():
            continue
        try:
            with Image.open(path) as image:
                image.load()
                return prepare(image, size).float() / 255.0, source
        except OSError:
            continue
    raise LookupError(f"the run's images ({sources[0]}{', …' if len(sources) > 1 else ''}) were passed in memory "
                      "or are no longer on disk")


def _bundled_path(source: str) -> Path | None:
    """``foolbox:<file>`` / ``skimage:<file>`` → the file inside the installed package's data folder."""
    package, name = source.split(":", 1)
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "data" / name


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
        unit = {"×": "×", "deg": "°", "°": "°"}.get(parameter.unit or "", "")
        return f"{parameter.name} = {float(params[0, 0]):.3g}{unit}"
    return f"{len(factor.parameters)} params at {level:.0%}"


def gallery(info: dict[str, Any], players: list[str]) -> tuple[Figure, str]:
    """The example image per factor: original, then low / middle / high (on/off factors: on).

    Drawn as one mosaic (a single image, fast to render): factors in two blocks side by side when
    there are more than six, each row framed in the factor's colour. Returns the figure and the
    image's source; raises LookupError when no image is reachable.
    """
    image, source = example_image(info)
    space = FactorSpace.from_dict(info["factors"])
    factors = space.factors
    colours = factor_colours(players or space.players)
    blocks = 2 if len(factors) > 6 else 1
    rows = math.ceil(len(factors) / blocks)
    size = DISPLAY_SIZE
    pad, title, gap = 6, 32, 24  # pixels: around each cell, above it for its title, between blocks
    cell_w, cell_h = size + 2 * pad, size + 2 * pad + title
    width = blocks * 4 * cell_w + (blocks - 1) * gap
    mosaic = np.ones((rows * cell_h, width, 3))
    labels: list[tuple[float, float, str, bool]] = []
    batch = image.unsqueeze(0)
    for k, factor in enumerate(factors):
        row, block = k % rows, k // rows
        levels = [("on", 0.0)] if not factor.parameters else LEVELS
        rows_u = torch.cat([level_rows(factor, level) for _, level in levels]).to(batch.dtype)
        with torch.no_grad():  # all levels in one batched call, the original first
            augmented = torch.cat([batch, factor(batch.expand(len(levels), -1, -1, -1), rows_u)])
        thumbnails = _to_numpy(augmented, size)
        texts = [f"{factor.name}\noriginal"] + [name if name == "on" else f"{name}\n{_describe(factor, level)}"
                                                for name, level in levels]
        panels = list(zip(texts, thumbnails))
        colour = np.array(mcolors.to_rgb(colours.get(factor.name, "black")))
        for i, (text, pixels) in enumerate(panels):
            x0 = block * (4 * cell_w + gap) + i * cell_w + pad
            y0 = row * cell_h + title + pad
            border = 4 if i == 0 else 2
            mosaic[y0 - border:y0 + size + border, x0 - border:x0 + size + border] = colour
            mosaic[y0:y0 + size, x0:x0 + size] = pixels
            labels.append((x0 + size / 2, y0 - border - 2, text, i == 0))
    dpi = 110
    fig = Figure(figsize=(width / dpi, mosaic.shape[0] / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, interpolation="antialiased")
    for x, y, text, bold in labels:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=7.5, fontweight="bold" if bold else "normal",
                linespacing=1.1)
    ax.set_axis_off()
    return fig, source


def _to_numpy(batch: torch.Tensor, size: int = DISPLAY_SIZE) -> np.ndarray:
    """(n, 3, S, S) → (n, size, size, 3) for display, resampled (antialiased when shrinking)."""
    if batch.shape[-1] != size:
        batch = torch.nn.functional.interpolate(batch, size=(size, size), mode="bilinear",
                                                antialias=batch.shape[-1] > size)
    return batch.clamp(0, 1).permute(0, 2, 3, 1).double().cpu().numpy()
