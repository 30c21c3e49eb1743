"""The run plan: everything that decides a run's numbers, resolved once, with one fingerprint.

A :class:`RunPlan` is built from the config, the loaded model, the loaded images, the factor space,
the design and the probe (:meth:`RunPlan.build`). Its entries (JSON values, in this order) are

- ``architecture`` and ``weights`` (SHA-256 of every state-dict entry's name, dtype, shape and raw
  bytes), ``input`` (input size, normalisation mean and std);
- ``layers`` (names and unit shapes), ``reduction``, ``output``;
- ``factors`` (names in order), ``bounds`` (every parameter's [low, high], + "log" if log-scaled), ``switches``
  (factor → p), ``order`` (composition order), ``random_order``, ``image_mode``;
- ``images`` (count, side in pixels, SHA-256 of the decoded (n, 3, S, S) uint8 pixels in order);
- ``preprocessing``, ``estimator`` (sobol2 says "without second-order intervals" when they are not
  kept: the sums differ), ``n``, ``seed``, ``block_size`` and ``generator`` (the design's versions: Sobol'
  generator, within-image assignment of images to base rows).

What does not change the accumulated sums is left out on purpose, so changing it never blocks a
resume: ``confidence`` (used only when the indices are computed from the sums), ``checkpoint_every``,
``report``, ``device``, progress bars, file paths and image labels (only clean top-1 uses them);
``batch_size`` matters only through ``block_size`` (the design's rows per block, derived from it).
The fingerprint is the SHA-256 of the canonical JSON of the entries. Run, resume, torchrun ranks
(:func:`check_ranks_agree`), stimulus export (``design.json``), checkpoints and ``run.json`` carry it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from augsense.errors import AugsenseError

FORMAT = "augsense-run-plan/1"

#: The plan's keys in the order they are compared and named.
KEYS = ("format", "architecture", "weights", "input", "layers", "reduction", "output", "factors", "bounds",
        "switches", "order", "random_order", "image_mode", "images", "preprocessing", "estimator", "n", "seed",
        "block_size", "generator")


def weights_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict: each entry's name, dtype, shape and raw bytes, in order."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if not isinstance(tensor, torch.Tensor):  # a module's extra state (get_extra_state)
                digest.update(f"{name}|extra|{json.dumps(tensor, sort_keys=True, default=repr)}|".encode())
                continue
            tensor = tensor.detach()
            if tensor.is_quantized:
                tensor = tensor.dequantize()
            elif tensor.layout != torch.strided:
                tensor = tensor.to_dense()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            flat = tensor.cpu().contiguous().reshape(-1)
            if flat.numel():
                digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()


def model_record(bundle: Any) -> dict[str, Any]:
    """Which network a table was computed with, for the JSON beside it: name, weights, and the SHA-256 of the
    weights (:func:`weights_digest`, as the run plan's ``weights``), which a run's report compares."""
    return {"name": bundle.name, "weights": bundle.weights, "weights_sha256": weights_digest(bundle.module)}


def pixels_digest(pixels: torch.Tensor) -> str:
    """SHA-256 of decoded images (n, 3, S, S) uint8 in order (shape included)."""
    digest = hashlib.sha256(f"{tuple(pixels.shape)}|{pixels.dtype}|".encode())
    array = np.ascontiguousarray(pixels.detach().cpu().numpy())
    digest.update(array.data)
    return digest.hexdigest()


def _strata_entry(space: Any, images: Any) -> dict[str, Any]:
    """With the partition or class players, the pool and class of each image decide the rows' images: hash them."""
    if not getattr(space, "image_factors", ()):
        return {}
    strata = images.strata()
    text = json.dumps([strata.pool_of.tolist(), strata.classes,
                       None if strata.class_of is None else strata.class_of.tolist()])
    return {"strata": hashlib.sha256(text.encode()).hexdigest()}


def _canonical(entries: dict[str, Any]) -> str:
    return json.dumps(entries, sort_keys=True, separators=(",", ":"), allow_nan=True)


@dataclass(frozen=True)
class RunPlan:
    """A resolved run: ``entries`` maps each of :data:`KEYS` to a JSON value (None where not applicable)."""

    entries: dict[str, Any]

    @classmethod
    def build(cls, config: Any, *, space: Any, design: Any, images: Any, bundle: Any = None,
              probe: Any = None) -> "RunPlan":
        """The plan of a run (or, without ``bundle``/``probe``, of a stimulus export).

        Args:
            config: the SensitivityConfig.
            space: its FactorSpace; design: its Design; images: the ImageSet as loaded.
            bundle: the ModelBundle (None for stimuli: no model); probe: the ActivationProbe.
        """
        bounds: dict[str, dict[str, list[Any]]] = {}
        switches: dict[str, float] = {}
        for factor in space.factors:
            if factor.parameters:
                bounds[factor.name] = {p.name: [float(p.low), float(p.high)] + (["log"] if p.log else [])
                                       for p in factor.parameters}
            if factor.switch:
                switches[factor.name] = float(factor.p)
        entries: dict[str, Any] = {
            "format": FORMAT,
            "architecture": None if bundle is None else
            f"{type(bundle.module).__module__}.{type(bundle.module).__qualname__}",
            "weights": None if bundle is None else weights_digest(bundle.module),
            "input": None if bundle is None else {"size": int(bundle.input_size),
                                                  "mean": [float(v) for v in bundle.mean],
                                                  "std": [float(v) for v in bundle.std]},
            "layers": None if probe is None else [[name, [int(s) for s in probe.unit_shapes[name]]]
                                                  + _probe_extras(probe, name) for name in probe.layers],
            "reduction": None if probe is None else config.reduction,
            "output": None if probe is None else config.output,
            "factors": [factor.name for factor in space.factors],
            "bounds": bounds,
            "switches": switches,
            "order": [str(name) for name in space.order],
            "random_order": bool(space.random_order),
            "image_mode": str(space.image_mode) + "".join(f"+{f}" for f in getattr(space, "image_factors", ())),
            "images": {"count": len(images), "size": int(images.size),
                       "sha256": images.pixels_sha256() if hasattr(images, "pixels_sha256") else
                       pixels_digest(images.pixels), **_strata_entry(space, images)},
            "preprocessing": None if bundle is None else config.preprocessing,
            "estimator": design.kind + (" without second-order intervals" if design.kind == "sobol2"
                                        and not getattr(config, "second_order_intervals", True) else ""),
            "n": int(design.n),
            "seed": int(design.seed),
            "block_size": int(design.block_size),
            "generator": {k: v for k, v in design.to_dict().items()
                          if k not in ("kind", "dims", "n", "seed", "block_size")},
        }
        assert tuple(entries) == KEYS
        return cls(entries)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON of the entries."""
        return hashlib.sha256(_canonical(self.entries).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The entries plus ``fingerprint`` (JSON-serialisable; stored in checkpoints, run.json, design.json)."""
        return {**self.entries, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: Any) -> "RunPlan":
        """A plan read back from :meth:`to_dict` (unknown keys kept, so a newer plan still compares)."""
        if not isinstance(data, dict):
            raise AugsenseError(f"a run plan must be a JSON object, got {type(data).__name__}")
        return cls({k: v for k, v in data.items() if k != "fingerprint"})

    def differences(self, other: "RunPlan | dict[str, Any] | None") -> list[str]:
        """The keys whose values differ from ``other``'s (all keys when ``other`` is not a plan)."""
        if not isinstance(other, RunPlan):
            try:
                other = RunPlan.from_dict(other)
            except AugsenseError:
                return list(self.entries)
        keys = list(self.entries) + [k for k in other.entries if k not in self.entries]
        return [k for k in keys if _canonical({"v": self.entries.get(k)}) != _canonical({"v": other.entries.get(k)})]

    def describe_differences(self, other: "RunPlan | dict[str, Any] | None", *, old: str = "", new: str = "") -> str:
        """``factors: [a, b] → [a, c]; images: sha256 1f2e… → 9a8b…`` for the differing keys (one line)."""
        theirs = other.entries if isinstance(other, RunPlan) else (other if isinstance(other, dict) else {})
        parts: list[str] = []
        keys = self.differences(other)
        for key in keys:
            _changes(key, theirs.get(key), self.entries.get(key), parts, old, new)
            if key == "block_size" and "generator" not in keys:   # else the design's rule changed, not batch_size
                parts[-1] += (" — the rows per block follow batch_size (batch_size // group size, capped by the "
                              f"design); use a batch_size that gives {theirs.get(key)}")
        return "; ".join(parts[:8] + (["…"] if len(parts) > 8 else []))

    def refusal(self, checkpoint_plan: Any) -> str:
        """The one-line message refusing a resume from a checkpoint whose plan is ``checkpoint_plan``."""
        if not isinstance(checkpoint_plan, dict):
            return ("cannot resume: the checkpoint records no run plan, so it cannot be shown to belong to this run; "
                    "start a new --out or drop --resume")
        keys = self.differences(checkpoint_plan)
        verb = "differs" if len(keys) == 1 and not keys[0].endswith("s") else "differ"
        return (f"cannot resume: {', '.join(keys)} {verb} from the checkpoint's "
                f"run ({self.describe_differences(checkpoint_plan)}); start a new --out or drop --resume")


def _changes(path: str, before: Any, after: Any, parts: list[str], old: str, new: str) -> None:
    """Append ``path: before → after`` for each differing leaf; tables are descended (``bounds.hue.shift``)."""
    if isinstance(before, dict) and isinstance(after, dict) and not ("sha256" in before and "sha256" in after):
        for key in list(after) + [k for k in before if k not in after]:
            if _canonical({"v": before.get(key)}) != _canonical({"v": after.get(key)}):
                _changes(f"{path}.{key}", before.get(key, "absent"), after.get(key, "absent"), parts, old, new)
        return
    parts.append(f"{path}: {old}{_short(before)} → {new}{_short(after)}")


def _short(value: Any, limit: int = 80) -> str:
    """A value for a one-line message: hashes cut to 12 hex digits, long values cut with '…'."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    if isinstance(value, dict) and isinstance(value.get("sha256"), str):
        value = {**value, "sha256": value["sha256"][:12] + "…"}
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def check_ranks_agree(plan: RunPlan, shard: Any) -> None:
    """Collective: every torchrun rank must have built the same plan; else every rank raises one line.

    Ranks load their model and images themselves (rank 0's weights are broadcast first), so a
    folder or a weights file that differs between nodes would otherwise mix two experiments.
    """
    if not shard.distributed:
        return
    import torch.distributed as dist

    everyone: list[Any] = [None] * shard.world_size
    dist.all_gather_object(everyone, plan.to_dict())
    reference = RunPlan.from_dict(everyone[0])
    for rank, theirs in enumerate(everyone[1:], start=1):
        other = RunPlan.from_dict(theirs)
        if other.fingerprint != reference.fingerprint:
            keys = other.differences(reference)
            raise AugsenseError(f"the ranks disagree on the run: rank {rank} differs from rank 0 in {', '.join(keys)} "
                                f"({other.describe_differences(reference, old='rank 0 ', new=f'rank {rank} ')}); "
                                "give every rank the same config, model and images")


def _probe_extras(probe: Any, name: str) -> list[str]:
    """A layer's channels-last or token layout and its softmax, when it has them (nothing for NCHW and vector
    layers, so the fingerprints of CNN runs stay as they were)."""
    layout = getattr(probe, "layouts", {}).get(name)
    extras = [layout.label] if layout is not None and layout.kind in ("nhwc", "tokens") else []
    return extras + (["softmax"] if name in getattr(probe, "softmax_layers", ()) else [])
