"""Unit masks built from sensitivity maps, applied inside the forward pass.

Guided masking is the second experimental series of Kharyuk, Matveev & Oseledets (2025,
arXiv 2503.03283): units whose sensitivity to one factor is ≥ the q-quantile of the layer's map are
multiplied by α (0 damages, 0.5 attenuates, 1.5 amplifies); soft masks multiply every unit by its
index M or by 1 − M. The baselines the paper lacked pick the same number of units at random or the
least sensitive ones.

A mask is a multiplier on a layer's units: (C,) for per-channel maps (broadcast over positions),
(C, H, W) for per-unit maps, in the channels-first form the probe gives every layer. On a channels-last
(NHWC) layer it multiplies the last axis; on a token layer (n, T, C) it scales exactly the activations
the unit summarised: the patch tokens for ``mean``/``max`` and ``none`` (a (C, *grid) map is laid back
onto the patch tokens), the class token for ``cls``; the other prefix tokens are left alone. K configurations are evaluated in one forward pass by
:class:`MaskedForward`: the batch runs unmasked up to the first masked layer, whose hook repeats it
K times (config-major) and applies the K multipliers, so the shared prefix is computed once.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from torch import nn

from augsense.allocator import heap_allocations  # noqa: F401 (re-exported for the masking engine)
from augsense.errors import AugsenseError
from augsense.probe.layouts import Layout

MASK_KINDS = ("quantile", "soft", "soft-inverse")
MAX_ALPHA = 100.0


def check_quantile(q: float) -> float:
    """A quantile level in [0, 1], or an AugsenseError."""
    value = float(q)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise AugsenseError(f"quantile q must lie in [0, 1] (units ≥ the q-quantile are masked), got {q!r}")
    return value


def check_alpha(alpha: float) -> float:
    """A mask multiplier α in [0, MAX_ALPHA], or an AugsenseError."""
    value = float(alpha)
    if not math.isfinite(value) or not 0.0 <= value <= MAX_ALPHA:
        raise AugsenseError(f"mask multiplier α must lie in [0, {MAX_ALPHA:g}] (0 damages, 0.5 attenuates, "
                            f"1.5 amplifies), got {alpha!r}")
    return value


def _finite(values: ArrayLike) -> NDArray[np.float64]:
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise AugsenseError("the sensitivity map is empty")
    return array


def quantile_units(values: ArrayLike, q: float) -> NDArray[np.bool_]:
    """Units whose index is ≥ the q-quantile of the map's finite values.

    Args:
        values: (*unit_shape,) one factor's map of one layer; NaN marks dead units, never selected.
        q: quantile level in [0, 1].
    Returns:
        (*unit_shape,) boolean selection.
    """
    array = _finite(values)
    q = check_quantile(q)
    finite = np.isfinite(array)
    if not finite.any():
        return np.zeros(array.shape, dtype=bool)
    cut = np.quantile(array[finite], q)
    return finite & (array >= cut)


def least_units(values: ArrayLike, n_units: int) -> NDArray[np.bool_]:
    """The ``n_units`` finite units with the smallest index (ties broken by position): (*unit_shape,) bool."""
    array = _finite(values)
    flat = np.where(np.isfinite(array), array, np.inf).ravel()
    n_units = min(int(n_units), int(np.isfinite(array).sum()))
    chosen = np.zeros(flat.shape, dtype=bool)
    chosen[np.argsort(flat, kind="stable")[:n_units]] = True
    return chosen.reshape(array.shape)


def random_units(values: ArrayLike, n_units: int, rng: np.random.Generator) -> NDArray[np.bool_]:
    """``n_units`` units drawn uniformly without replacement among the finite (live) ones: (*unit_shape,) bool."""
    array = _finite(values)
    pool = np.flatnonzero(np.isfinite(array))
    chosen = np.zeros(array.size, dtype=bool)
    chosen[rng.choice(pool, size=min(int(n_units), pool.size), replace=False)] = True
    return chosen.reshape(array.shape)


def selection_multiplier(selected: NDArray[np.bool_], alpha: float) -> NDArray[np.float32]:
    """α on the selected units, 1 elsewhere: (*unit_shape,) float32."""
    return np.where(selected, check_alpha(alpha), 1.0).astype(np.float32)


def soft_multiplier(values: ArrayLike, inverse: bool = False) -> NDArray[np.float32]:
    """The soft mask M (index clipped to [0, 1], dead units 0) or 1 − M: (*unit_shape,) float32.

    A map with no finite value (every unit dead) is refused: M would zero the whole layer.
    """
    array = _finite(values)
    if not np.isfinite(array).any():
        raise AugsenseError("the sensitivity map has no finite value (every unit is dead): no soft mask can be "
                            "built from it")
    array = np.clip(np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    return (1.0 - array if inverse else array).astype(np.float32)


def channels_last_copy(module: nn.Module) -> nn.Module | None:
    """A copy of ``module`` whose 4-D weights are channels-last (NHWC), or None if it has no 2-D convolution
    or cannot be copied.

    On the CPU, oneDNN's NHWC kernels (depthwise convolutions above all) run EfficientNet-Lite0 about 1.5×
    faster than NCHW with the same float32 results up to rounding (bench/bench_masking.py). A copy, so the
    caller's module keeps its layout.
    """
    if not any(isinstance(m, nn.Conv2d) for m in module.modules()):
        return None
    try:
        duplicate = copy.deepcopy(module)
    except Exception:  # a module that cannot be copied keeps its layout
        return None
    return duplicate.to(memory_format=torch.channels_last)


class MaskedForward:
    """Forward a batch under K mask configurations at once.

    Usage::

        with MaskedForward(model, {"layer2": m2, "fc": m_fc}) as masked:   # m: (K, *unit_shape)
            logits = masked(x)                                            # (K, n, classes)

    Each multiplier tensor is (K, *unit_shape) with unit_shape (C,) (per channel, broadcast over
    positions) or (C, *grid) (per unit), channels first whatever the layer's layout. ``layouts`` gives each
    layer's :class:`~augsense.probe.layouts.Layout` (or a declared ``"nhwc"``, ``"tokens"`` …); the missing
    ones are detected from the first batch. ``reduction`` is the run's (``cls`` masks the class token). The first masked layer to run repeats
    its input batch K times (config-major); when a later module still needs the un-repeated batch
    (a skip connection around the masked layer, or a forward that reshapes with the batch size it saw
    at the input), the whole input is repeated instead and ``expand_inside`` turns False. The first
    shared pass is checked once against the first configuration run alone.
    """

    def __init__(self, model: nn.Module, multipliers: Mapping[str, torch.Tensor], *, expand_inside: bool = True,
                 layouts: Mapping[str, Layout | str] | None = None, reduction: str = "mean") -> None:
        if not multipliers:
            raise AugsenseError("no masked layers given")
        modules = dict(model.named_modules())
        unknown = [name for name in multipliers if name not in modules or not name]
        if unknown:
            raise AugsenseError(f"cannot mask layer {unknown[0]!r}: the model has no such module")
        sizes = {int(m.shape[0]) for m in multipliers.values()}
        if len(sizes) != 1:
            raise AugsenseError(f"every layer needs the same number of mask configurations, got {sorted(sizes)}")
        self.model = model
        self.multipliers = dict(multipliers)
        self.n_configs = sizes.pop()
        self.expand_inside = expand_inside
        self.reduction = reduction
        given = dict(layouts or {})
        self.layouts: dict[str, Layout] = {name: given[name] for name in self.multipliers
                                           if isinstance(given.get(name), Layout)}
        self._declared = {name: str(value) for name, value in given.items() if isinstance(value, str)}
        self.verified = False
        self._n = 0
        self._active: torch.Tensor | None = None
        self._bypass = False
        self._handles: list = []

    @contextmanager
    def unhooked(self) -> Iterator[None]:
        """Run the plain model (the unmasked reference) without leaving the ``with`` block."""
        self._bypass = True
        try:
            yield
        finally:
            self._bypass = False

    @property
    def active(self) -> int:
        """Configurations in the current pass."""
        return self.n_configs if self._active is None else int(self._active.numel())

    def _edit(self, name: str) -> Callable[[nn.Module, object, object], torch.Tensor]:
        def hook(module: nn.Module, args: object, output: object) -> torch.Tensor | None:
            if self._bypass:
                return None
            if not isinstance(output, torch.Tensor):
                raise AugsenseError(f"layer {name!r} does not return a single tensor; mask another layer")
            multiplier = self.multipliers[name] if self._active is None else self.multipliers[name][self._active]
            k, n = self.active, self._n
            if output.shape[0] == n:  # first masked layer: the shared batch fans out to the K configurations
                view = output.unsqueeze(0)
            elif output.shape[0] == k * n:
                view = output.reshape(k, n, *output.shape[1:])
            else:
                raise AugsenseError(f"layer {name!r} sees a batch of {output.shape[0]}, expected {n} or {k * n}")
            masked = _apply(view, multiplier.to(output.dtype), self.layouts[name], self.reduction, name)
            masked = masked.reshape(k * n, *output.shape[1:])
            if output.ndim == 4 and output.is_contiguous(memory_format=torch.channels_last):
                masked = masked.contiguous(memory_format=torch.channels_last)  # keep the fast layout downstream
            return masked
        return hook

    def __enter__(self) -> "MaskedForward":
        modules = dict(self.model.named_modules())
        for name in self.multipliers:
            self._handles.append(modules[name].register_forward_hook(self._edit(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _detect(self, inputs: torch.Tensor) -> None:
        """Find the layouts not given, from one blank image of the inputs' size (hooks bypassed)."""
        missing = [name for name in self.multipliers if name not in self.layouts]
        if not missing:
            return
        from augsense.probe.hooks import list_layers

        with self.unhooked():
            found = {layer.name: layer.layout for layer in list_layers(self.model, int(inputs.shape[-1]),
                                                                       inputs.device, self._declared)}
        for name in missing:
            layout = found.get(name)
            if layout is None:
                raise AugsenseError(f"cannot mask layer {name!r}: it does not run in the forward pass")
            layout.check(self.reduction, name)
            self.layouts[name] = layout

    def _run(self, inputs: torch.Tensor, active: torch.Tensor | None, n: int) -> torch.Tensor:
        self._active, self._n = active, n
        return self.model(inputs)

    def __call__(self, inputs: torch.Tensor, configs: torch.Tensor | None = None) -> torch.Tensor:
        """(n, 3, S, S) normalised inputs → (K, n, *output) outputs under each configuration.

        ``configs``: indices of the configurations to run (default: all K).
        """
        if not self._handles:
            raise RuntimeError("use MaskedForward inside `with`")
        self._detect(inputs)
        n = inputs.shape[0]
        k = self.n_configs if configs is None else int(configs.numel())
        if self.expand_inside and k > 1:
            try:
                out = self._run(inputs, configs, n)
            except RuntimeError as error:
                if "size" not in str(error) and "shape" not in str(error):
                    raise
                self.expand_inside = False  # a skip connection bypasses the masked layer
            else:
                if out.shape[0] != k * n:
                    self.expand_inside = False  # no masked layer ran, or the model reshaped the batch
                else:
                    out = out.reshape(k, n, *out.shape[1:])
                    if not self.verified:  # once: the first configuration alone must agree on every image
                        first = configs[:1] if configs is not None else torch.zeros(1, dtype=torch.long)
                        alone = self._run(inputs, first.to(next(iter(self.multipliers.values())).device), n)
                        scale = float(alone.abs().max()) + 1e-12
                        self.verified = True
                        if not torch.allclose(alone, out[0], rtol=1e-3, atol=1e-4 * scale):
                            self.expand_inside = False
                    if self.expand_inside:
                        return out
        repeated = inputs.unsqueeze(0).expand(k, *inputs.shape).reshape(k * n, *inputs.shape[1:])
        out = self._run(repeated, configs, n)
        return out.reshape(k, n, *out.shape[1:])


def _apply(view: torch.Tensor, multiplier: torch.Tensor, layout: Layout, reduction: str, name: str) -> torch.Tensor:
    """Multiply (1 or K, n, *shape) outputs by (K, *unit_shape) multipliers along the layout's channel axis.

    Returns (K, n, *shape).
    """
    k, units = multiplier.shape[0], tuple(multiplier.shape[1:])
    shape = tuple(view.shape[2:])
    per_unit = layout.unit_shape("none") if layout.kind != "vector" else (layout.channels,)
    if units not in {(layout.channels,), per_unit}:
        raise AugsenseError(f"mask for layer {name!r} has unit shape {units}, but the layer's units are "
                            f"({layout.channels},) per channel or {per_unit} per position ({layout.label} output "
                            f"{shape})")
    if layout.kind in ("vector", "nchw"):
        factor = multiplier.reshape(k, 1, *units, *([1] * (len(shape) - len(units))))
        return view * factor  # broadcast: one write, no repeated copy
    if layout.kind == "nhwc":
        grid = units[1:] if len(units) > 1 else (1,) * (len(shape) - 1)
        factor = multiplier.reshape(k, layout.channels, -1).transpose(1, 2).reshape(k, 1, *grid, layout.channels)
        return view * factor
    # tokens (n, T, C): scale the tokens the units summarise, keep the others
    span = layout.token_span("none" if len(units) > 1 else reduction)
    factor = multiplier.reshape(k, layout.channels, -1).transpose(1, 2).unsqueeze(1)  # (K, 1, t or 1, C)
    tokens, channels = view.shape[2], view.shape[3]
    start, stop = span.start, tokens if span.stop is None else span.stop
    n = view.shape[1]
    pieces = [view[:, :, start:stop] * factor]
    if start:
        pieces.insert(0, view[:, :, :start].expand(k, n, start, channels))
    if stop < tokens:
        pieces.append(view[:, :, stop:].expand(k, n, tokens - stop, channels))
    return torch.cat(pieces, dim=2)


def layout_options(run_info: Mapping) -> dict:
    """``layouts`` (declared) and ``reduction`` of a run folder's config (run.json), for :class:`MaskedForward`."""
    config = run_info.get("config", {}) if isinstance(run_info, Mapping) else {}
    return {"layouts": dict(config.get("layouts") or {}), "reduction": str(config.get("reduction", "mean"))}
