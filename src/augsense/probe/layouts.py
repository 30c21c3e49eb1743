"""Where the channels are in a hooked layer's output: NCHW, NHWC (channels last) or tokens N×T×C.

A CNN layer outputs (n, C, H, W); a Swin stage (n, H, W, C); a ViT block (n, T, C) with T = prefix +
grid tokens, the prefix being the class token and any register or distillation tokens. A
:class:`Layout` says which, so that ``mean``/``max`` reduce over positions (or patch tokens) to one unit
per channel, ``cls`` takes the class token, and ``none`` keeps every channel × position in the
(C, *grid) form CNN layers use (token layers reshaped to the patch grid, prefix tokens left out).

Detection (:func:`detect_layout`) uses what a forward pass shows, in this order:

1. evidence from modules that fix the channel axis: the nearest module that *produced* a tensor of
   exactly the layer's shape (the layer's own last Conv/Linear/norm, or one before it) and the nearest
   that *consumed* one after it. Conv, BatchNorm, GroupNorm, InstanceNorm and ``LayerNorm2d`` (the
   ConvNeXt family's) read axis 1 (channels first); Linear, LayerNorm and RMSNorm the last axis. A vote
   counts only when the module's channel count matches the size on its axis. Disagreeing votes make
   the layout ambiguous.
2. without votes, the shape: (C, H, H) with C ≠ H is NCHW, (H, H, C) NHWC, and (T, C) tokens when
   T − prefix equals the area of a patch grid the model produced (a Conv2d output's H × W).

The prefix token count comes from the model when it says (timm's ``num_prefix_tokens``, torchvision
ViT's ``class_token``), else the smallest count (≤ 16) that leaves a seen patch grid. Whatever stays
ambiguous must be declared (``layouts = {"features.1" = "nhwc"}``; values ``nchw``, ``nhwc``,
``tokens`` or ``tokens:P`` with P prefix tokens).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from augsense.errors import AugsenseError

REDUCTIONS: tuple[str, ...] = ("mean", "max", "none", "cls")
DECLARABLE = ("nchw", "nhwc", "tokens", "tokens:P")
MAX_PREFIX = 16
_DECLARED = re.compile(r"^(nchw|nhwc|tokens)(?::(\d+))?$")


@dataclass(frozen=True)
class Layout:
    """The layout of one layer's output (batch axis excluded).

    Attributes:
        kind: ``"vector"`` (C,), ``"nchw"`` (C, *grid), ``"nhwc"`` (*grid, C), ``"tokens"`` (T, C) with
            T = prefix + prod(grid), ``"unknown"`` (ambiguous: must be declared) or ``"batched"`` (windows
            or heads folded into the batch axis: no per-image units).
        channels: C.
        grid: spatial positions, or the patch grid of a token layer.
        prefix: tokens before the patch tokens (class, register, distillation tokens).
        how: how the layout was found, for ``augsense layers`` and error messages.
    """

    kind: str
    channels: int
    grid: tuple[int, ...] = ()
    prefix: int = 0
    how: str = ""

    @property
    def label(self) -> str:
        """Short name: ``nchw``, ``nhwc``, ``tokens 1+14×14``, ``vector`` or ``ambiguous``."""
        if self.kind == "tokens":
            grid = "×".join(str(g) for g in self.grid)
            return f"tokens {self.prefix}+{grid}" if self.prefix else f"tokens {grid}"
        return {"unknown": "ambiguous", "batched": "batch-mixed"}.get(self.kind, self.kind)

    def unit_shape(self, reduction: str, layer: str = "") -> tuple[int, ...]:
        """Shape of the layer's units: (C,) for ``mean``/``max``/``cls``, (C, *grid) for ``none``."""
        self.check(reduction, layer)
        if self.kind == "vector" or reduction != "none":
            return (self.channels,)
        return (self.channels, *self.grid)

    def check(self, reduction: str, layer: str = "") -> None:
        """Raise an AugsenseError when ``reduction`` cannot apply to this layout."""
        if reduction not in REDUCTIONS:
            raise AugsenseError(f"unknown reduction {reduction!r}; use one of {', '.join(REDUCTIONS)}")
        if self.kind == "batched":
            raise AugsenseError(f"layer {layer!r} cannot be probed: {self.how}")
        if self.kind == "unknown":
            raise AugsenseError(f"layer {layer!r}: {self.how}; declare its layout, e.g. "
                                f"layouts = {{\"{layer}\" = \"nchw\"}} (one of {', '.join(DECLARABLE)}), "
                                f"or --layouts {layer}=nchw")
        if reduction == "cls" and self.kind != "vector" and not (self.kind == "tokens" and self.prefix >= 1):
            raise AugsenseError(f"reduction 'cls' takes the class token, but layer {layer!r} is {self.label} "
                                "with no class token; use mean or max")

    def token_span(self, reduction: str) -> slice:
        """The tokens a unit summarises: the class token for ``cls``, else the patch tokens."""
        return slice(0, 1) if reduction == "cls" else slice(self.prefix, None)

    def reduce(self, output: torch.Tensor, reduction: str) -> torch.Tensor:
        """(n, *shape) layer output → (n, units) float32 in the order of :meth:`unit_shape`.

        ``mean``/``max`` reduce in place of the positions (no copy of a channels-last tensor); ``none``
        lays the values out channels first.
        """
        n = output.shape[0]
        if self.kind == "vector":
            return output.reshape(n, -1).float()
        if self.kind == "tokens":
            if reduction == "cls":
                return output[:, 0].float()
            patches = output[:, self.prefix:]  # (n, t, C)
            if reduction == "none":
                return patches.transpose(1, 2).reshape(n, -1).float()
            return (patches.mean(dim=1) if reduction == "mean" else patches.amax(dim=1)).float()
        positions = tuple(range(2, output.ndim)) if self.kind == "nchw" else tuple(range(1, output.ndim - 1))
        if reduction == "none":
            first = output if self.kind == "nchw" else output.movedim(-1, 1)
            return first.reshape(n, -1).float()
        return (output.mean(dim=positions) if reduction == "mean" else output.amax(dim=positions)).float()


# modules that fix the channel axis: (channels first?, channel count in, channel count out)
def _channel_rule(module: nn.Module) -> tuple[bool, int, int] | None:
    name = type(module).__name__
    if isinstance(module, (nn.modules.conv._ConvNd,)):
        return True, module.in_channels, module.out_channels
    if isinstance(module, nn.modules.batchnorm._NormBase):  # BatchNorm*, InstanceNorm*
        return True, module.num_features, module.num_features
    if isinstance(module, nn.GroupNorm):
        return True, module.num_channels, module.num_channels
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        c = int(module.normalized_shape[0])
        return (name.endswith("2d") or name.endswith("2D")), c, c  # LayerNorm2d permutes to NHWC inside
    if isinstance(module, nn.Linear):
        return False, module.in_features, module.out_features
    if hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm) and module.normalized_shape is not None \
            and len(module.normalized_shape) == 1:
        return False, int(module.normalized_shape[0]), int(module.normalized_shape[0])
    return None


@dataclass(frozen=True)
class _Event:
    step: int
    module: str
    first: bool
    channels: int
    shape: tuple[int, ...]


class ShapeTrace:
    """Hooks that record, during one forward pass, the evidence :func:`detect_layout` reads.

    ``consumed``/``produced``: (step, module, channels first?, channel count, shape without batch) of every
    module that fixes a channel axis; ``ends``: the step at which each named module finished; ``grids``:
    spatial sizes of Conv2d outputs (candidate patch grids).
    """

    def __init__(self, model: nn.Module) -> None:
        self.step = 0
        self.consumed: list[_Event] = []
        self.produced: list[_Event] = []
        self.grids: list[tuple[int, ...]] = []
        self.ends: dict[str, int] = {}
        self.prefix = model_prefix(model)
        self._handles: list = []
        for name, module in model.named_modules():
            rule = _channel_rule(module)
            if rule is not None:
                self._handles.append(module.register_forward_pre_hook(self._before(name, rule)))
                self._handles.append(module.register_forward_hook(self._after(name, rule)))

    def _before(self, name: str, rule: tuple[bool, int, int]):
        def hook(module: nn.Module, args: tuple) -> None:
            self.step += 1
            if args and isinstance(args[0], torch.Tensor) and args[0].ndim >= 2:
                self.consumed.append(_Event(self.step, name, rule[0], rule[1], tuple(args[0].shape[1:])))
        return hook

    def _after(self, name: str, rule: tuple[bool, int, int]):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            self.step += 1
            if isinstance(output, torch.Tensor) and output.ndim >= 2:
                shape = tuple(output.shape[1:])
                self.produced.append(_Event(self.step, name, rule[0], rule[2], shape))
                if isinstance(module, nn.Conv2d) and len(shape) == 3 and shape[1:] not in self.grids:
                    self.grids.append(shape[1:])
        return hook

    def finished(self, name: str) -> None:
        """Call from a module's forward hook: marks where its output became available."""
        self.step += 1
        self.ends[name] = self.step

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def votes(self, name: str, shape: tuple[int, ...]) -> list[tuple[bool, str]]:
        """(channels first?, reason) from the nearest producer and the nearest consumer of ``shape``."""
        end = self.ends.get(name, self.step)
        found: list[tuple[bool, str]] = []
        producer = next((e for e in reversed(self.produced) if e.step <= end and e.shape == shape), None)
        consumer = next((e for e in self.consumed if e.step > end and e.shape == shape), None)
        for event, verb in ((producer, "output of"), (consumer, "input of")):
            if event is None:
                continue
            axis = 0 if event.first else -1
            if shape[axis] == event.channels:
                found.append((event.first, f"{verb} {event.module} ({event.channels} channels "
                                            f"{'first' if event.first else 'last'})"))
        return found


def model_prefix(model: nn.Module) -> int | None:
    """Prefix tokens (class + registers) the model declares: timm's ``num_prefix_tokens``, torchvision's ViT
    ``class_token`` (1); None when it says nothing."""
    for module in model.modules():
        value = getattr(module, "num_prefix_tokens", None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        token = getattr(module, "class_token", None)
        if isinstance(token, torch.Tensor) and token.ndim == 3:
            return int(token.shape[1])
    return None


def _token_grid(tokens: int, prefix: int | None, grids: Sequence[tuple[int, ...]],
                square: bool = True) -> tuple[int, tuple[int, ...]] | None:
    """(prefix, grid) with prefix + area(grid) = tokens: a seen grid first, then (if ``square``) a square one."""
    candidates = sorted({0, prefix} if prefix is not None else set(range(MAX_PREFIX + 1)))
    for p in candidates:
        for grid in grids:
            if p + math.prod(grid) == tokens:
                return p, tuple(grid)
    for p in candidates if square else []:
        side = math.isqrt(max(tokens - p, 0))
        if side > 1 and side * side == tokens - p:
            return p, (side, side)
    return None


def detect_layout(name: str, shape: Sequence[int], trace: ShapeTrace | None) -> Layout:
    """The layout of a layer's output ``shape`` (batch excluded) from the evidence in ``trace``."""
    shape = tuple(int(s) for s in shape)
    if len(shape) <= 1:
        return Layout("vector", shape[0] if shape else 1, (), 0, "one value per channel")
    votes = trace.votes(name, shape) if trace is not None else []
    grids = trace.grids if trace is not None else []
    prefix = trace.prefix if trace is not None else None
    sides = {first for first, _ in votes}
    if len(sides) > 1:
        return Layout("unknown", 0, (), 0, f"output {_shape(shape)} is ambiguous: "
                                           + " but ".join(reason for _, reason in votes))
    if sides == {True}:
        return Layout("nchw", shape[0], shape[1:], 0, votes[0][1])
    if sides == {False}:
        reason = votes[0][1]
        if len(shape) == 2:
            found = _token_grid(shape[0], prefix, grids)
            if found is None:
                return Layout("tokens", shape[1], (shape[0],), 0, reason + "; no patch grid matches "
                              f"{shape[0]} tokens, so all are kept as a 1-D sequence")
            p, grid = found
            return Layout("tokens", shape[1], grid, p, reason)
        return Layout("nhwc", shape[-1], shape[:-1], 0, reason)
    # no module fixes the axis: the shape alone
    if len(shape) == 3 and shape[1] == shape[2] and shape[0] != shape[1]:
        return Layout("nchw", shape[0], shape[1:], 0, "square grid after the channel axis")
    if len(shape) == 3 and shape[0] == shape[1] and shape[2] != shape[0]:
        return Layout("nhwc", shape[2], shape[:2], 0, "square grid before the channel axis")
    if len(shape) == 2 and grids:
        found = _token_grid(shape[0], prefix, grids, square=False)
        if found is not None:
            return Layout("tokens", shape[1], found[1], found[0], "token count matches the patch grid")
    return Layout("unknown", 0, (), 0, f"output {_shape(shape)} is ambiguous: no Conv, Linear or norm module "
                                      "fixes its channel axis")


def parse_layout(name: str, text: str, shape: Sequence[int], trace: ShapeTrace | None) -> Layout:
    """A declared layout (``nchw``, ``nhwc``, ``tokens`` or ``tokens:P``) checked against the output shape."""
    shape = tuple(int(s) for s in shape)
    match = _DECLARED.match(str(text).strip().lower())
    if match is None:
        raise AugsenseError(f"layout {text!r} for layer {name!r} is not one of {', '.join(DECLARABLE)} "
                            "(P: prefix tokens, class + register)")
    kind, prefix = match.group(1), match.group(2)
    if kind != "tokens" and prefix is not None:
        raise AugsenseError(f"layout {text!r} for layer {name!r}: only tokens take a prefix count (tokens:P)")
    if len(shape) < 2:
        raise AugsenseError(f"layer {name!r} outputs {_shape(shape)}, one value per channel: it has no layout to "
                            "declare; drop it from layouts")
    if kind == "tokens":
        if len(shape) != 2:
            raise AugsenseError(f"layer {name!r} outputs {_shape(shape)}, not tokens × channels (T × C)")
        grids = trace.grids if trace is not None else []
        if prefix is not None:
            p = int(prefix)
            if p >= shape[0]:
                raise AugsenseError(f"layer {name!r} has {shape[0]} tokens, fewer than the {p} prefix tokens declared")
            found = _token_grid(shape[0], p, [g for g in grids if p + math.prod(g) == shape[0]])
            grid = found[1] if found is not None and found[0] == p else (shape[0] - p,)
            return Layout("tokens", shape[1], grid, p, "declared")
        found = _token_grid(shape[0], trace.prefix if trace is not None else None, grids)
        p, grid = found if found is not None else (0, (shape[0],))
        return Layout("tokens", shape[1], grid, p, "declared")
    if kind == "nchw":
        return Layout("nchw", shape[0], shape[1:], 0, "declared")
    return Layout("nhwc", shape[-1], shape[:-1], 0, "declared")


def check_declared(declared: Mapping[str, str], names: Iterable[str]) -> None:
    """Every declared layer must be a module of the model (close matches suggested)."""
    import difflib

    known = list(names)
    for name in declared:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise AugsenseError(f"layouts: the model has no layer {name!r}{hint}; run `augsense layers MODEL`")


def _shape(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape) or "a scalar"
