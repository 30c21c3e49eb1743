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

Neuron subsets (the paper's selected units): ``neurons={"features.0": [1, 2, 4, …]}`` keeps only
those output channels of one module of the segment, as the reference code does
(``preparation/single_unit.py``: ``subset_conv2d_module`` keeps the rows of a convolution's weight
for its "sequential" units, ``SelectSubsetOutput`` returns ``output[:, indices]`` for its
"residual" ones; both give the same numbers, since the modules after it act per channel). The
module's output, and every later module's, then has only those channels; the ``neuron`` column of
the tables maps each unit back to its channel index in the full network.

The segment runs its modules in sequence, so it must be a sequential part of the network's
forward pass (as ``nn.Sequential`` children and ResNet's top-level stem/stages are).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import warnings
from collections.abc import Mapping, Sequence
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
           "channel_subset", "neuron_table", "parse_neurons", "parse_segment", "run_segments", "segment_indices",
           "top_neurons"]

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


def _traced_shape(model: nn.Module, module: nn.Module, input_size: int, *, output: bool) -> tuple[int, ...] | None:
    """The shape (batch of 1 included) of ``module``'s first tensor input (or its output) during one pass of
    a blank (1, 3, input_size, input_size) image; None when it never sees a tensor."""
    shapes: list[tuple[int, ...]] = []

    def record(_: nn.Module, args: tuple[object, ...], result: object = None) -> None:
        tensor = result if output else args[0] if args else None
        if isinstance(tensor, torch.Tensor) and not shapes:
            shapes.append(tuple(tensor.shape))

    hook = module.register_forward_hook(record) if output else module.register_forward_pre_hook(record)
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        hook.remove()
    return shapes[0] if shapes else None


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
    traced = _traced_shape(model, modules[names[0]], input_size, output=False)
    shape = traced[1:] if traced is not None else None
    if shape is None or len(shape) != 3:
        raise AugsenseError(f"segment {spec!r}: module {names[0]!r} does not take an image-like (C, H, W) input "
                            f"(got {shape}); start the segment at a convolutional block")
    return Segment(tuple(names), (int(shape[0]), int(shape[1]), int(shape[2])), spec)


_NEURON_SPEC = re.compile(r"^(?P<module>[^:]+):(?P<indices>[\d,\s-]+)$")


def _indices(text: str, where: str) -> list[int]:
    """``"1,2,5-7"`` → [1, 2, 5, 6, 7]."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()) or (high and int(high) < int(low)):
            raise AugsenseError(f"neurons {where!r}: {part!r} is not a channel index or a range a-b (a ≤ b)")
        out.extend(range(int(low), int(high) + 1) if high else [int(low)])
    return out


def _neuron_mapping(spec: object, segment: Segment) -> dict[str, list[int]]:
    """The user's selection as {module: [indices]}: a mapping, ``"module:1,2,5-7"`` or a JSON file (a mapping, or
    the reference code's ``*_single_units.json`` list, whose entry with the segment's modules is used)."""
    if isinstance(spec, Mapping):
        return {str(k): [int(i) for i in (v.keys() if isinstance(v, Mapping) else v)] for k, v in spec.items()}
    text = str(spec).strip()
    if text.lower().endswith(".json"):
        path = Path(text)
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise AugsenseError(f"neurons file {text}: cannot read it as JSON ({error})") from None
        if isinstance(loaded, list):  # the reference code's config list: modules_names, neurons, module_type
            entries = [e for e in loaded if isinstance(e, Mapping) and list(e.get("modules_names", [])) ==
                       list(segment.modules)]
            if not entries:
                raise AugsenseError(f"neurons file {text}: no entry has modules_names {list(segment.modules)} "
                                    f"(segment {segment.spec!r})")
            loaded = entries[0].get("neurons", {})
        if not isinstance(loaded, Mapping):
            raise AugsenseError(f"neurons file {text}: expected {{module: [channel indices]}} or the paper's list")
        try:
            return {str(k): [int(i) for i in (v.keys() if isinstance(v, Mapping) else v)] for k, v in loaded.items()}
        except (TypeError, ValueError):
            raise AugsenseError(f"neurons file {text}: channel indices must be integers") from None
    mapping: dict[str, list[int]] = {}
    for part in (p.strip() for p in text.split(";") if p.strip()):
        match = _NEURON_SPEC.match(part)
        if not match:
            raise AugsenseError(f"neurons {part!r}: write MODULE:INDICES, e.g. features.0:1,2,4-8, or a .json file")
        mapping[match["module"].strip()] = _indices(match["indices"], part)
    return mapping


def parse_neurons(model: nn.Module, segment: Segment, spec: object, input_size: int = 224) -> dict[str, tuple[int, ...]]:
    """Validate a neuron (output-channel) selection for ``segment``: ``{}`` for none (``None``, ``""``, ``"all"``).

    Args:
        model: the full network (one blank pass records the module's output width).
        segment: from :func:`parse_segment`.
        spec: ``{"features.0": [1, 2, 4]}``, ``"features.0:1,2,4-8"``, or a ``.json`` file holding such a
            mapping or the reference code's ``*_single_units.json`` list (``modules_names``, ``neurons``).
        input_size: the blank image's size.

    Returns:
        ``{module: indices}`` for one module of the segment, indices distinct and within its channels.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "all")):
        return {}
    mapping = _neuron_mapping(spec, segment)
    if len(mapping) != 1:
        raise AugsenseError(f"neurons: select the channels of one module of the segment, got {len(mapping)} "
                            f"({', '.join(mapping) or 'none'})")
    (module, indices), = mapping.items()
    if module not in segment.modules:
        raise AugsenseError(f"neurons: {module!r} is not a module of segment {segment.spec!r} "
                            f"(modules {', '.join(segment.modules)})")
    if not indices:
        raise AugsenseError(f"neurons: no channel index given for {module!r}")
    if len(set(indices)) != len(indices):
        raise AugsenseError(f"neurons: channel indices of {module!r} repeat: {indices}")
    shape = _traced_shape(model, dict(model.named_modules())[module], input_size, output=True)
    if shape is None or len(shape) not in (2, 4):
        raise AugsenseError(f"neurons: {module!r} gives {shape}, not (n, C) or (n, C, H, W); channels are selected on "
                            "axis 1 (convolutional or linear outputs)")
    bad = [i for i in indices if i < 0 or i >= shape[1]]
    if bad:
        raise AugsenseError(f"neurons: {module!r} has {shape[1]} channels; index {bad[0]} is out of range")
    return {module: tuple(int(i) for i in indices)}


def top_neurons(maps: np.ndarray, players: Sequence[str], k: int = 2) -> dict[int, list[str]]:
    """Each factor's ``k`` most sensitive channels of a layer's index map: {channel: [factors]}, by channel.

    As the paper's selected units (each chosen for the factors that flagged it). ``maps``: (C, d) or
    (C, H, W, d) (averaged over positions); NaN (dead) channels are never chosen.
    """
    array = np.asarray(maps, dtype=np.float64)
    if array.ndim not in (2, 4) or array.shape[-1] != len(players):
        raise AugsenseError(f"top_neurons needs a (C, d) or (C, H, W, d) map for {len(players)} factors, "
                            f"got {array.shape}")
    per_channel = array
    if array.ndim == 4:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a dead channel: NaN, never chosen
            per_channel = np.nanmean(array.reshape(array.shape[0], -1, array.shape[-1]), axis=1)
    chosen: dict[int, list[str]] = {}
    for j, factor in enumerate(players):
        column = np.where(np.isfinite(per_channel[:, j]), per_channel[:, j], -np.inf)
        for c in np.argsort(-column, kind="stable")[:k]:
            if np.isfinite(column[c]):
                chosen.setdefault(int(c), []).append(str(factor))
    return dict(sorted(chosen.items()))


class _SelectChannels:
    """Forward hook: a module's output → its channels ``indices`` (axis 1), as ``SelectSubsetOutput``."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = torch.as_tensor(list(indices), dtype=torch.long)

    def __call__(self, module: nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        return output.index_select(1, self.indices.to(output.device))


class HSVSegment(nn.Module):
    """RGB in [0, 1] → HSV channel(s) → scaled, tiled over C → the segment's modules in order.

    Forward: (n, 3, S, S) → the last module's output. The modules keep their names from the
    network (``features.0`` …), so layers are probed under the same names as in a full run.
    """

    def __init__(self, model: nn.Module, segment: Segment, channel: Channel | str, *, shift: float = 0.0,
                 scale: float = 1.0, resize: bool = False, neurons: Mapping[str, Sequence[int]] | None = None) -> None:
        super().__init__()
        self.neurons = {str(k): tuple(int(i) for i in v) for k, v in (neurons or {}).items()}
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
            module = available[name]
            if name in self.neurons:  # a copy keeps the hook off the full network
                module = copy.deepcopy(module)
                module.register_forward_hook(_SelectChannels(self.neurons[name]))
            container.add_module(leaf, module)
            self._order.append(module)

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

    def neuron_of(self, layer: str, unit_shape: Sequence[int]) -> np.ndarray:
        """(units,) each unit's output channel in the full network: the selected index for a layer at or after
        the selected module (inside it, before its output is cut, the channel itself)."""
        shape = tuple(int(v) for v in unit_shape) or (1,)
        per_channel = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        channel = np.arange(int(np.prod(shape))) // per_channel
        position = {name: i for i, name in enumerate(self.segment.modules)}
        top = next((m for m in self.segment.modules if layer == m or layer.startswith(m + ".")), None)
        for name, indices in self.neurons.items():
            if top is not None and (layer == name or position[top] > position[name]):
                return np.asarray(indices, dtype=np.int64)[channel]
        return channel.astype(np.int64)


@dataclass
class SegmentRuns:
    """One sensitivity run per channel on the same segment, and the channel attribution."""

    segment: Segment
    runs: dict[str, SensitivityRun]
    attribution: pd.DataFrame
    indices: pd.DataFrame = field(default_factory=pd.DataFrame)
    out_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    #: the output-channel selection ({module: indices}; empty: all channels)
    neurons: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: per (layer, neuron): the channels' variances summed over the neuron's units (:func:`neuron_table`)
    neuron_summary: pd.DataFrame = field(default_factory=pd.DataFrame)


def _default_scaling(bundle: ModelBundle, segment: Segment) -> tuple[float, float]:
    """At the network input, the model's mean/std averaged over RGB; deeper, none (0, 1)."""
    if segment.input_shape == (3, bundle.input_size, bundle.input_size):
        return float(np.mean(bundle.mean)), float(np.mean(bundle.std))
    return 0.0, 1.0


def run_segments(config: SensitivityConfig, segment: str, *, channels: Sequence[str] | str = "all",
                 model: nn.Module | ModelBundle | None = None, images: ImageSet | str | None = None,
                 out_dir: str | Path | None = None, layers: Sequence[str] | None = None,
                 scaling: tuple[float, float] | None = None, progress: bool = True,
                 overwrite: bool = False, resize: bool = False, warn: bool = True,
                 neurons: object = None, selected_for: Mapping[int, Sequence[str]] | None = None) -> SegmentRuns:
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
        neurons: keep only these output channels of one module of the segment (the paper's selected
            units): ``{"features.0": [1, 2, 4]}``, ``"features.0:1,2,4-8"`` or a JSON file
            (:func:`parse_neurons`); default: all channels.
        selected_for: why each neuron was chosen ({index: [factors]}, e.g. :func:`top_neurons`), kept in
            the neuron table.

    Returns:
        :class:`SegmentRuns` with the per-channel runs and the attribution table
        (:func:`attribute_channels`, with each unit's ``neuron``: its output channel in the full network)
        and the per-neuron summary (:func:`neuron_table`); with ``out_dir`` also written as
        ``segments.parquet``, ``segments_indices.parquet`` and ``segments_neurons.parquet``.
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
    selection = parse_neurons(bundle.module, parsed, neurons, bundle.input_size)
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
    module = None
    for k, channel in enumerate(chosen):
        module = HSVSegment(bundle.module, parsed, channel, shift=shift, scale=scale, resize=resize, neurons=selection)
        segment_bundle = ModelBundle(module, f"{bundle.name}[{segment}]:{channel}", bundle.input_size,
                                     bundle.resize_size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        runs[channel] = run_sensitivity(run_config, model=segment_bundle, images=unlabelled,
                                        out_dir=out / channel if out is not None else None, progress=progress,
                                        overwrite=overwrite, warn=warn and k == 0)  # the same for every channel
    first = runs[chosen[0]]
    neuron = np.concatenate([module.neuron_of(layer, first.unit_shapes[layer]) for layer in first.slices]) \
        if module is not None else None
    attribution = attribute_channels(runs, neuron)
    indices = segment_indices(runs)
    summary = neuron_table(attribution, selected_for)
    if out is not None:
        from augsense.analyses.plan import model_record
        from augsense.io.provenance import atomic_write, write_parquet  # atomic: no reader sees half a table
        from augsense.io.results import versions

        write_parquet(attribution, out / "segments.parquet")
        write_parquet(indices, out / "segments_indices.parquet")
        write_parquet(summary, out / "segments_neurons.parquet")
        # which network the tables describe: a run folder's report shows them only for the run's own weights
        record = {"model": model_record(bundle), "segment": segment, "channels": chosen, "layers": probe_layers,
                  "neurons": {name: [int(i) for i in units] for name, units in selection.items()},
                  "versions": versions()}
        text = json.dumps(record, indent=2, default=str)
        atomic_write(out / "segments.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return SegmentRuns(parsed, runs, attribution, indices, out, neurons=selection, neuron_summary=summary)


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


def attribute_channels(runs: dict[str, SensitivityRun], neuron: np.ndarray | None = None) -> pd.DataFrame:
    """Which channel carries each unit's (and each unit-factor pair's) augmentation-induced variance.

    Args:
        runs: channel → run of the same segment, layers and factors.
        neuron: (m,) each unit's output channel in the full network (:meth:`HSVSegment.neuron_of`);
            default: the unit's channel in its layer.

    Returns:
        Long table: ``layer``, ``unit``, ``factor`` (a factor name, or ``"all"`` for the unit's
        whole variance), ``channel``, ``variance`` (V_c or V_{i,c}), ``share`` (of the sum over
        channels; NaN when no channel moves the unit), ``attributed`` (the channel with the
        largest variance, False everywhere when none moves it) and ``neuron``.
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
    own_channel = np.empty(variances.shape[1], dtype=np.int64)
    for layer, columns in first.slices.items():
        layer_of[columns] = layer
        unit_of[columns] = np.arange(columns.stop - columns.start)
        shape = tuple(first.unit_shapes.get(layer, ())) or (1,)
        own_channel[columns] = unit_of[columns] // max(1, int(np.prod(shape[1:])))
    if neuron is None:
        neuron = own_channel
    neuron = np.asarray(neuron, dtype=np.int64)
    if neuron.shape != (variances.shape[1],):
        raise AugsenseError(f"neuron must give one channel per unit ({variances.shape[1]}), got {neuron.shape}")
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
        "neuron": np.broadcast_to(neuron[None, :, None], (k, m, q)).ravel(),
    })


def neuron_table(attribution: pd.DataFrame, selected_for: Mapping[int, Sequence[str]] | None = None) -> pd.DataFrame:
    """Per (layer, neuron, factor): each input channel's variance summed over the neuron's units, its share and
    the attributed channel (per-channel units: the attribution rows themselves).

    Returns:
        Long table ``layer``, ``neuron``, ``factor``, ``channel``, ``variance``, ``share`` (NaN when no channel
        moves the neuron), ``attributed``, ``n_units`` and ``selected_for`` (comma-joined factors, or "").
    """
    columns = ["layer", "neuron", "factor", "channel", "variance", "share", "attributed", "n_units", "selected_for"]
    if attribution.empty:
        return pd.DataFrame(columns=columns)
    keys = ["layer", "neuron", "factor"]
    grouped = (attribution.groupby([*keys, "channel"], sort=False)
               .agg(variance=("variance", "sum"), n_units=("unit", "nunique")).reset_index())
    total = grouped.groupby(keys, sort=False)["variance"].transform("sum")
    grouped["share"] = np.where(total > 0, grouped["variance"] / total.where(total > 0, 1.0), np.nan)
    best = grouped.groupby(keys, sort=False)["variance"].transform("max")
    first_best = grouped.assign(_best=grouped["variance"].eq(best)).groupby(keys, sort=False)["_best"].cumsum().eq(1)
    grouped["attributed"] = grouped["variance"].eq(best) & first_best & (total > 0)
    reasons = {int(k): ",".join(map(str, v)) for k, v in (selected_for or {}).items()}
    grouped["selected_for"] = grouped["neuron"].map(lambda n: reasons.get(int(n), "")).astype(str)
    return grouped[columns]
