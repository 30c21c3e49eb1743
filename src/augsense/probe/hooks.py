"""Forward hooks on named layers that reduce activations inside the hook.

Only the reduced (n, units) tensor of each layer leaves the hook, so nothing per sample is kept
beyond one batch. ``"output"`` names the model's own output (logits, or softmax probabilities).
Each layer's layout (NCHW, NHWC, tokens; see :mod:`augsense.probe.layouts`) decides how its output
becomes units: ``mean``/``max`` over positions or patch tokens (one unit per channel), ``cls`` the
class token, ``none`` every channel × position as (C, *grid).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Callable, Literal, Mapping, Sequence

import torch
from torch import nn

from augsense.errors import AugsenseError
from augsense.probe.layouts import REDUCTIONS, Layout, ShapeTrace, check_declared, detect_layout, parse_layout

Reduction = Literal["mean", "max", "none", "cls"]
OUTPUT = "output"
#: at most this many close matches are suggested for a mistyped layer name
SUGGESTIONS = 5


@dataclass(frozen=True)
class LayerInfo:
    """A hookable layer: module name, module type, output shape without the batch axis, call count, layout."""

    name: str
    kind: str
    shape: tuple[int, ...]
    calls: int = 1
    layout: Layout | None = None
    batch: int = 1


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


def reduce_activation(output: torch.Tensor, reduction: str, layout: Layout | None = None) -> torch.Tensor:
    """Reduce a layer output to units.

    Args:
        output: (n, *shape), e.g. (n, C, H, W), (n, H, W, C), (n, T, C) or (n, C).
        reduction: ``"mean"`` / ``"max"`` over positions or patch tokens (one unit per channel),
            ``"cls"`` (the class token) or ``"none"`` (every channel × position is a unit, as in the paper).
        layout: the output's layout; None means channels first (NCHW).
    Returns:
        (n, units) float32.
    """
    if layout is None:
        shape = tuple(output.shape[1:])
        layout = Layout("vector", shape[0] if shape else 1) if len(shape) <= 1 else Layout("nchw", shape[0], shape[1:])
    return layout.reduce(output, reduction)


def unit_shape(shape: Sequence[int], reduction: str, layout: Layout | None = None) -> tuple[int, ...]:
    """Shape of a layer's units, given its output shape without the batch axis (channels first unless ``layout``)."""
    if layout is not None:
        return layout.unit_shape(reduction)
    if len(shape) <= 1 or reduction == "none":
        return tuple(shape) if shape else (1,)
    return (int(shape[0]),)


def list_layers(model: nn.Module, input_size: int = 224, device: torch.device | str = "cpu",
                layouts: Mapping[str, str] | None = None) -> list[LayerInfo]:
    """Every named module with its output shape and layout, from one forward pass of a blank image.

    ``layouts``: declared layouts by layer name (``nchw``, ``nhwc``, ``tokens``, ``tokens:P``); the others
    are detected (see :func:`augsense.probe.layouts.detect_layout`).
    """
    records: dict[str, LayerInfo] = {}
    handles = []
    trace = ShapeTrace(model)

    def hook(name: str) -> Callable:
        def record(module: nn.Module, args: object, output: object) -> None:
            trace.finished(name)
            tensor = _first_tensor(output)
            if tensor is None:
                return
            seen = records.get(name)
            calls = seen.calls + 1 if seen else 1
            records[name] = LayerInfo(name, type(module).__name__, tuple(tensor.shape[1:]), calls,
                                      batch=int(tensor.shape[0]) if tensor.ndim else 0)
        return record

    for name, module in model.named_modules():
        if name:
            handles.append(module.register_forward_hook(hook(name)))
    try:
        with torch.inference_mode():
            out = model(torch.zeros(1, 3, input_size, input_size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        trace.remove()
    layers = list(records.values())
    tensor = _first_tensor(out)
    if tensor is not None:
        trace.finished(OUTPUT)
        layers.append(LayerInfo(OUTPUT, "model output", tuple(tensor.shape[1:])))
    declared = dict(layouts or {})
    check_declared(declared, [layer.name for layer in layers])
    return [dataclasses.replace(layer, layout=_layout(layer, declared, trace)) for layer in layers]


def _layout(layer: LayerInfo, declared: Mapping[str, str], trace: ShapeTrace) -> Layout:
    if layer.batch != 1:  # list_layers forwards one image
        return Layout("batched", 0, (), 0, f"its output's first axis holds {layer.batch} entries for one image "
                      "(windows or heads folded into the batch), so it has no per-image units; probe the block "
                      "that contains it")
    if layer.name in declared:
        return parse_layout(layer.name, declared[layer.name], layer.shape, trace)
    return detect_layout(layer.name, layer.shape, trace)


def check_layers(requested: Sequence[str], available: Sequence[LayerInfo]) -> None:
    """Raise an AugsenseError naming the first unknown or shared layer, with close matches for a typo."""
    if not requested:
        raise AugsenseError("no layers chosen; list them with `augsense layers MODEL`")
    by_name = {layer.name: layer for layer in available}
    for name in requested:
        if name not in by_name:
            close = difflib.get_close_matches(name, list(by_name), n=SUGGESTIONS, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise AugsenseError(f"unknown layer {name!r}{hint} (all {len(by_name)} layers with their shapes: "
                                "`augsense layers MODEL`)")
        if by_name[name].calls > 1:
            raise AugsenseError(f"layer {name!r} is called {by_name[name].calls} times per forward pass "
                                "(a shared module); choose a module that runs once")
    if len(set(requested)) != len(requested):
        raise AugsenseError(f"layers listed twice: {sorted({n for n in requested if list(requested).count(n) > 1})}")


class ActivationProbe:
    """Records reduced activations of named layers during a forward pass.

    Usage::

        probe = ActivationProbe(model, ["layer1", "fc"], reduction="mean")
        with probe:
            units = probe(images)          # (n, m) float32, layers concatenated in order

    ``probe.slices[layer]`` gives each layer's columns, ``probe.unit_shapes[layer]`` their shape,
    ``probe.layouts[layer]`` the layout of its output. ``layouts`` declares layouts the detection cannot
    settle; ``softmax_layers`` are (n, classes) layers whose units are taken through a softmax (e.g. a
    classifier layer ``classifier.6`` when ``output`` is not the last module). Non-finite activations
    raise an AugsenseError naming the layer.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], *, reduction: str = "mean",
                 output: Literal["logits", "softmax"] = "logits", input_size: int = 224,
                 device: torch.device | str = "cpu",
                 edits: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
                 layouts: Mapping[str, str] | None = None, softmax_layers: Sequence[str] = ()) -> None:
        if reduction not in REDUCTIONS:
            raise AugsenseError(f"unknown reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}")
        if output not in ("logits", "softmax"):
            raise AugsenseError(f"unknown output {output!r}; use 'logits' or 'softmax'")
        self.model = model
        self.layers = list(layers)
        self.reduction = reduction
        self.output = output
        self.edits = dict(edits or {})
        available = list_layers(model, input_size, device, layouts)
        check_layers(self.layers, available)
        by_name = {layer.name: layer for layer in available}
        self.layer_shapes = {name: by_name[name].shape for name in self.layers}
        self.layouts: dict[str, Layout] = {name: by_name[name].layout for name in self.layers}  # type: ignore[misc]
        self.unit_shapes = {name: self.layouts[name].unit_shape(reduction, name) for name in self.layers}
        self.softmax_layers = list(softmax_layers)
        for name in self.softmax_layers:
            if name == OUTPUT:
                raise AugsenseError("softmax_layers: the model output takes output = 'softmax' instead")
            if name not in self.layers:
                raise AugsenseError(f"softmax_layers: {name!r} is not one of the run's layers "
                                    f"({', '.join(self.layers)}); add it to layers")
            if self.layouts[name].kind != "vector":
                raise AugsenseError(f"softmax_layers: layer {name!r} outputs {by_name[name].shape}; a softmax "
                                    "applies to a classifier layer's (n, classes) output")
        self.slices: dict[str, slice] = {}
        start = 0
        for name in self.layers:
            size = math.prod(self.unit_shapes[name])
            self.slices[name] = slice(start, start + size)
            start += size
        self.n_units = start
        self._store: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: object, output: object) -> object:
            tensor = _first_tensor(output)
            if tensor is None:
                raise AugsenseError(f"layer {name!r} returns no tensor")
            edit = self.edits.get(name)
            if edit is not None:
                tensor = edit(tensor)
            units = self.layouts[name].reduce(tensor, self.reduction)
            self._store[name] = units.softmax(dim=1) if name in self.softmax_layers else units
            return tensor if edit is not None and isinstance(output, torch.Tensor) else None
        return hook

    def __enter__(self) -> "ActivationProbe":
        modules = dict(self.model.named_modules())
        for name in self.layers:
            if name != OUTPUT:
                self._handles.append(modules[name].register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        """Forward (n, 3, S, S) normalised inputs; returns (n, m) float32 units of all layers."""
        if not self._handles and any(name != OUTPUT for name in self.layers):
            raise RuntimeError("use the probe inside `with probe:`")
        self._store.clear()
        out = _first_tensor(self.model(inputs))
        if OUTPUT in self.layers:
            assert out is not None
            logits = out.float()
            self._store[OUTPUT] = logits.softmax(dim=1) if self.output == "softmax" else logits.reshape(len(out), -1)
        parts = [self._store[name] for name in self.layers]
        units = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if not torch.isfinite(units).all():
            bad = [name for name in self.layers if not torch.isfinite(self._store[name]).all()]
            raise AugsenseError(f"layer {bad[0]!r} produced NaN or Inf activations; check the model and its weights")
        return units

    def unit_names(self) -> list[tuple[str, int]]:
        """(layer, unit index within the layer) for each of the m columns."""
        return [(name, i) for name in self.layers for i in range(math.prod(self.unit_shapes[name]))]
