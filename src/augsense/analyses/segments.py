"""HSV single-channel segments: which of hue, saturation or value carries a unit's sensitivity.

A *segment* is a run of consecutive modules cut out of a network (AlexNet ``features.0-2``,
ResNet18's stem ``conv1,bn1,relu,maxpool`` or ``layer1``). The augmented RGB input is converted to
HSV (``kornia.color.rgb_to_hsv``; hue in turns), one channel — or a chosen subset such as ``hs``
or ``hsv`` — is kept, affinely scaled, and tiled over the segment's input width (input channel c
gets the subset's channel c mod k; one channel is simply replicated, as the paper does). The
input is fed at the image's own resolution, as the paper feeds its units the 224 × 224 input
whatever module they start at (``resize=True`` area-averages it to the resolution the segment
sees inside the full network instead). The usual sensitivity run then measures the segment's units
(``run_sensitivity`` with the segment as the model), once per channel, as the paper's third series
does (Kharyuk, Matveev & Oseledets 2025, §6 of SPEC).

Attribution: the same unit is measured with the H, the S and the V input. Its augmentation-induced
variance V_c (within-image variance) and partial variances V_{i,c} (total-order numerators, or
Shapley values) are in the unit's own activation scale for every channel, so they compare across
channels: a unit is *attributed* to the channel with the largest V_c, and each (unit, factor) to
the channel with the largest V_{i,c}; ``share`` is the channel's fraction of the sum over
channels. Dead units (no variance under a channel) count as 0 for that channel.

The segment runs its modules in sequence, so it must be a sequential part of the network's
forward pass (as ``nn.Sequential`` children and ResNet's top-level stem/stages are).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import kornia
import numpy as np
import pandas as pd
import torch
from torch import nn

from augsense.analyses.sensitivity import SensitivityRun, run_sensitivity
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.io.images import ImageSet, images_for
from augsense.io.models import ModelBundle, load_model

__all__ = ["CHANNELS", "CHANNEL_SUBSETS", "HSVSegment", "Segment", "SegmentRuns", "attribute_channels",
           "channel_subset", "parse_segment", "run_segments", "segment_indices"]

Channel = Literal["h", "s", "v"]
CHANNELS: tuple[str, ...] = ("h", "s", "v")
#: Every non-empty subset of H, S, V, in canonical order (``"subsets"`` selects them all).
CHANNEL_SUBSETS: tuple[str, ...] = ("h", "s", "v", "hs", "sv", "hv", "hsv")


def channel_subset(name: str) -> str:
    """Canonical subset name: ``"vh"`` → ``"hv"``; an AugsenseError unless distinct letters of h, s, v."""
    text = str(name).strip().lower()
    if not text or any(c not in CHANNELS for c in text) or len(set(text)) != len(text):
        raise AugsenseError(f"segment channel {name!r} must be h, s, v or a subset of them (hs, sv, hv, hsv), "
                            "all (h, s, v) or subsets (all seven)")
    ordered = "".join(c for c in CHANNELS if c in text)
    return {"sh": "hs", "vs": "sv", "vh": "hv"}.get(ordered, ordered)


_RANGE = re.compile(r"^(?P<parent>.+)\.(?P<start>\d+)-(?P<end>\d+)$")


@dataclass(frozen=True)
class Segment:
    """Consecutive modules of a network, by name, with the shape of their input.

    Attributes:
        modules: module names in forward order, e.g. ``["features.0", "features.1", "features.2"]``.
        input_shape: (C, H, W) of the first module's input in the full network.
        spec: how the user wrote it (``"features.0-2"``).
    """

    modules: tuple[str, ...]
    input_shape: tuple[int, int, int]
    spec: str


def parse_segment(model: nn.Module, spec: str, input_size: int = 224) -> Segment:
    """Resolve ``"parent.A-B"`` (children A..B inclusive), ``"a,b,c"`` or ``"name"`` on ``model``.

    The input shape is recorded with a forward pre-hook during one pass of a blank image.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise AugsenseError("a segment is written 'parent.A-B' (e.g. features.0-2), 'a,b,c' (e.g. "
                            "conv1,bn1,relu,maxpool) or one module name (e.g. layer1)")
    modules = dict(model.named_modules())
    match = _RANGE.match(spec.strip())
    if match:
        start, end = int(match["start"]), int(match["end"])
        if end < start:
            raise AugsenseError(f"segment {spec!r}: the range end {end} is before its start {start}")
        names = [f"{match['parent']}.{i}" for i in range(start, end + 1)]
    else:
        names = [part.strip() for part in spec.split(",") if part.strip()]
    unknown = [name for name in names if name not in modules or not name]
    if unknown:
        children = [n for n in modules if n and "." not in n]
        raise AugsenseError(f"segment {spec!r}: the model has no module {unknown[0]!r}; top-level modules: "
                            f"{', '.join(children)} (see `augsense layers MODEL`)")
    shapes: dict[str, tuple[int, ...]] = {}

    def record(module: nn.Module, args: tuple[object, ...]) -> None:
        if isinstance(args[0], torch.Tensor) and "input" not in shapes:
            shapes["input"] = tuple(args[0].shape[1:])

    handle = modules[names[0]].register_forward_pre_hook(record)
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        handle.remove()
    shape = shapes.get("input")
    if shape is None or len(shape) != 3:
        raise AugsenseError(f"segment {spec!r}: module {names[0]!r} does not take an image-like (C, H, W) input "
                            f"(got {shape}); start the segment at a convolutional block")
    return Segment(tuple(names), (int(shape[0]), int(shape[1]), int(shape[2])), spec)


class HSVSegment(nn.Module):
    """RGB in [0, 1] → HSV channel(s) → scaled, tiled over C → the segment's modules in order.

    Forward: (n, 3, S, S) → the last module's output. The modules keep their names from the
    network (``features.0`` …), so layers are probed under the same names as in a full run.
    """

    def __init__(self, model: nn.Module, segment: Segment, channel: Channel | str, *, shift: float = 0.0,
                 scale: float = 1.0, resize: bool = False) -> None:
        super().__init__()
        channel = channel_subset(channel)
        if scale == 0:
            raise AugsenseError("scale must be non-zero")
        self.channel = channel
        self.indices = [CHANNELS.index(c) for c in channel]
        self.index = self.indices[0]
        self.resize = resize
        self.segment = segment
        self.shift, self.scale = float(shift), float(scale)
        available = dict(model.named_modules())
        self._order: list[nn.Module] = []
        for name in segment.modules:
            container: nn.Module = self
            *parents, leaf = name.split(".")
            for part in parents:
                if not hasattr(container, part) or not isinstance(getattr(container, part), nn.Module):
                    container.add_module(part, nn.Module())
                container = getattr(container, part)
            container.add_module(leaf, available[name])
            self._order.append(available[name])

    def channel_input(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) RGB in [0, 1] → (n, C, S, S) (or (n, C, H, W) with ``resize``): input channel c is
        the subset's channel c mod k (hue in turns), scaled."""
        hsv = kornia.color.rgb_to_hsv(images)
        hsv = torch.cat([hsv[:, :1] / (2 * torch.pi), hsv[:, 1:]], dim=1)
        chosen = hsv[:, self.indices]
        channels, height, width = self.segment.input_shape
        if self.resize and chosen.shape[-2:] != (height, width):
            chosen = nn.functional.interpolate(chosen, size=(height, width), mode="area")
        scaled = (chosen - self.shift) / self.scale
        if len(self.indices) == 1:
            return scaled.expand(-1, channels, -1, -1)
        return scaled[:, [c % len(self.indices) for c in range(channels)]]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.channel_input(images)
        for module in self._order:
            x = module(x)
        return x


@dataclass
class SegmentRuns:
    """One sensitivity run per channel on the same segment, and the channel attribution."""

    segment: Segment
    runs: dict[str, SensitivityRun]
    attribution: pd.DataFrame
    indices: pd.DataFrame = field(default_factory=pd.DataFrame)
    out_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


def _default_scaling(bundle: ModelBundle, segment: Segment) -> tuple[float, float]:
    """At the network input, the model's mean/std averaged over RGB; deeper, none (0, 1)."""
    if segment.input_shape == (3, bundle.input_size, bundle.input_size):
        return float(np.mean(bundle.mean)), float(np.mean(bundle.std))
    return 0.0, 1.0


def run_segments(config: SensitivityConfig, segment: str, *, channels: Sequence[str] | str = "all",
                 model: nn.Module | ModelBundle | None = None, images: ImageSet | str | None = None,
                 out_dir: str | Path | None = None, layers: Sequence[str] | None = None,
                 scaling: tuple[float, float] | None = None, progress: bool = True,
                 overwrite: bool = False, resize: bool = False, warn: bool = True) -> SegmentRuns:
    """Run the sensitivity analysis on a network segment fed one HSV channel at a time.

    Args:
        config: the run configuration (factors, estimator, n, seed, …); ``layers`` name modules of
            the segment (default: the segment's last module); ``output`` is forced to logits.
        segment: ``"features.0-2"``, ``"conv1,bn1,relu,maxpool"``, ``"layer1"`` …
        channels: ``"all"`` (h, s, v), ``"subsets"`` (h, s, v, hs, sv, hv, hsv), one channel or subset
            (``"hs"``), or a list of them.
        model, images: override ``config.model`` / ``config.images``.
        out_dir: writes ``<out_dir>/<channel>/`` run folders and ``<out_dir>/segments.parquet``.
        layers: overrides ``config.layers``.
        scaling: (shift, scale) applied to the channel before replication; default: the model's
            mean/std averaged over RGB when the segment starts at the input, else (0, 1).
        progress: progress bars.
        overwrite: replace finished runs in the channel folders (see :func:`run_sensitivity`).
        resize: area-average the input to the segment's resolution inside the network; default
            False: the image's own resolution, as the paper.
        warn: print the run warnings (once, with the first channel: they are the same for every channel).

    Returns:
        :class:`SegmentRuns` with the per-channel runs and the attribution table
        (:func:`attribute_channels`).
    """
    chosen = (list(CHANNELS) if channels == "all" else list(CHANNEL_SUBSETS) if channels == "subsets"
              else [channels] if isinstance(channels, str) else list(channels))
    if not chosen:
        raise AugsenseError("segment channel '' must be h, s, v or a subset of them (hs, sv, hv, hsv)")
    chosen = list(dict.fromkeys(channel_subset(c) for c in chosen))
    bundle = model if isinstance(model, ModelBundle) else load_model(model if model is not None else config.model,
                                                                     weights=config.weights, seed=config.seed,
                                                                     categories=config.categories)
    bundle.module.eval()
    parsed = parse_segment(bundle.module, segment, bundle.input_size)
    def inside(name: str) -> bool:
        return any(name == m or name.startswith(m + ".") for m in parsed.modules)

    probe_layers = list(layers) if layers is not None else (
        list(config.layers) if all(inside(name) for name in config.layers) else [parsed.modules[-1]])
    outside = [name for name in probe_layers if not inside(name)]
    if outside:
        raise AugsenseError(f"layer {outside[0]!r} is not inside segment {segment!r} "
                            f"(modules {', '.join(parsed.modules)})")
    if isinstance(images, ImageSet):
        image_set = images
    else:
        image_set = images_for(config, bundle, images)
    unlabelled = ImageSet(image_set.pixels, None, image_set.sources, list(image_set.skipped))  # no top-1 on a segment
    shift, scale = scaling if scaling is not None else _default_scaling(bundle, parsed)
    run_config = dataclasses.replace(config, layers=probe_layers, output="logits", report=False)
    out = Path(out_dir) if out_dir is not None else None
    runs: dict[str, SensitivityRun] = {}
    for k, channel in enumerate(chosen):
        module = HSVSegment(bundle.module, parsed, channel, shift=shift, scale=scale, resize=resize)
        segment_bundle = ModelBundle(module, f"{bundle.name}[{segment}]:{channel}", bundle.input_size,
                                     bundle.resize_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        runs[channel] = run_sensitivity(run_config, model=segment_bundle, images=unlabelled,
                                        out_dir=out / channel if out is not None else None, progress=progress,
                                        overwrite=overwrite, warn=warn and k == 0)  # the same for every channel
    attribution = attribute_channels(runs)
    indices = segment_indices(runs)
    if out is not None:
        attribution.to_parquet(out / "segments.parquet", index=False)
        indices.to_parquet(out / "segments_indices.parquet", index=False)
    return SegmentRuns(parsed, runs, attribution, indices, out)


def segment_indices(runs: dict[str, SensitivityRun]) -> pd.DataFrame:
    """The segment's sensitivity indices per input channel (subset), averaged over each layer's live units.

    Returns:
        Long table ``channel``, ``layer``, ``factor``, ``quantity`` (first_order / total_order /
        shapley, whichever the runs have), ``mean``, ``sd`` (over units), ``n_units`` (finite ones).
    """
    rows = []
    for channel, run in runs.items():
        for quantity in ("first_order", "total_order", "shapley"):
            values = getattr(run.result, quantity, None)
            if values is None:
                continue
            values = np.asarray(values, dtype=np.float64)  # (m, d)
            for layer, columns in run.slices.items():
                block = values[columns]
                for j, factor in enumerate(run.players):
                    finite = block[:, j][np.isfinite(block[:, j])]
                    rows.append({"channel": channel, "layer": layer, "factor": factor, "quantity": quantity,
                                 "mean": float(finite.mean()) if finite.size else np.nan,
                                 "sd": float(finite.std(ddof=1)) if finite.size > 1 else np.nan,
                                 "n_units": int(finite.size)})
    return pd.DataFrame(rows, columns=["channel", "layer", "factor", "quantity", "mean", "sd", "n_units"])


def _partial_variances(run: SensitivityRun) -> np.ndarray:
    """(m, d) augmentation-induced partial variances: total-order numerators (Sobol) or Shapley values."""
    result = run.result
    partial = result.total_order_variance if result.total_order_variance is not None else result.shapley_variance
    if partial is None:
        raise AugsenseError("the segment runs have neither total-order nor Shapley partial variances")
    return np.nan_to_num(np.asarray(partial, dtype=np.float64), nan=0.0)


def attribute_channels(runs: dict[str, SensitivityRun]) -> pd.DataFrame:
    """Which channel carries each unit's (and each unit-factor pair's) augmentation-induced variance.

    Args:
        runs: channel → run of the same segment, layers and factors.

    Returns:
        Long table: ``layer``, ``unit``, ``factor`` (a factor name, or ``"all"`` for the unit's
        whole variance), ``channel``, ``variance`` (V_c or V_{i,c}), ``share`` (of the sum over
        channels; NaN when no channel moves the unit) and ``attributed`` (the channel with the
        largest variance, False everywhere when none moves it).
    """
    if not runs:
        raise AugsenseError("no segment runs to compare")
    channels = list(runs)
    first = runs[channels[0]]
    players = first.players
    variances = np.stack([np.nan_to_num(np.asarray(runs[c].result.variance, dtype=np.float64)) for c in channels])
    partial = np.stack([_partial_variances(runs[c]) for c in channels])  # (k, m, d)
    per_factor = np.concatenate([variances[:, :, None], partial], axis=2)  # (k, m, 1 + d)
    total = per_factor.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(total > 0, per_factor / total, np.nan)
    best = per_factor.argmax(axis=0)  # (m, 1 + d)
    attributed = (np.arange(len(channels))[:, None, None] == best[None]) & (total > 0)
    layer_of = np.empty(variances.shape[1], dtype=object)
    unit_of = np.empty(variances.shape[1], dtype=np.int64)
    for layer, columns in first.slices.items():
        layer_of[columns] = layer
        unit_of[columns] = np.arange(columns.stop - columns.start)
    k, m, q = per_factor.shape
    factor_names = np.array(["all", *players], dtype=object)
    return pd.DataFrame({
        "layer": np.broadcast_to(layer_of[None, :, None], (k, m, q)).ravel(),
        "unit": np.broadcast_to(unit_of[None, :, None], (k, m, q)).ravel(),
        "factor": np.broadcast_to(factor_names[None, None, :], (k, m, q)).ravel(),
        "channel": np.broadcast_to(np.array(channels, dtype=object)[:, None, None], (k, m, q)).ravel(),
        "variance": per_factor.ravel(),
        "share": share.ravel(),
        "attributed": attributed.ravel(),
    })
