"""The configuration of a sensitivity run: one dataclass, loadable from TOML, saved in run.json.

Every field is also a command-line flag (``--batch-size`` for ``batch_size``). Unknown keys and
wrong types are errors that name the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from augsense.errors import AugsenseError

ESTIMATORS = ("sobol", "sobol2", "shapley-exact", "shapley-permutation")
IMAGE_MODES = ("within", "joint")
PREPROCESSING = ("standard", "paper")

#: The largest base sample N. Not a memory limit (a run's bookkeeping does not grow with N; see
#: bench/bench_memory.py) but one of time and use: N = 2**26 already means N × (factors + 2) ≥ 2·10^8
#: forward passes (many hours on a GPU, months on a CPU) and intervals below 1e-4 wide, finer than
#: any difference worth reading. (scipy's Sobol' sequence and the design would allow 2**30.)
MAX_N = 2 ** 26

#: The demo: the embedded default model on the bundled photos, stem to classifier.
DEMO_LAYERS = ["_bn0", "_blocks.2", "_blocks.7", "_blocks.15", "_fc"]


@dataclass
class SensitivityConfig:
    """What a sensitivity run measures and how.

    Attributes:
        model: ``"efficientnet-lite0"`` (embedded default), a torchvision architecture name, or
            ``"timm:NAME"`` (a timm architecture with its pretrained preprocessing).
        weights: local weights file (its classifier sets the class count, e.g. 365), a torchvision weights
            name (``"IMAGENET1K_V1"``), or ``"random"`` (random initialisation from ``seed``; a name without
            weights is refused).
        categories: a file of class names for the model's outputs (``categories_places365.txt`` …).
        images: ``"bundled"`` or a folder (class sub-folders give labels).
        layers: module names (see ``augsense layers MODEL``); ``"output"`` is the model output.
        reduction: ``"mean"`` (per channel, over positions or patch tokens), ``"max"``, ``"cls"`` (the class
            token of a ViT layer) or ``"none"`` (every unit, the paper's maps; token layers on the patch grid).
        layouts: declared output layouts by layer, ``{"features.1" = "nhwc"}`` (``nchw``, ``nhwc``,
            ``tokens``, ``tokens:P`` with P class/register tokens) where detection is ambiguous.
        output: the model output as ``"logits"`` or ``"softmax"``.
        softmax_layers: layers among ``layers`` whose (n, classes) output is taken through a softmax
            (a classifier layer such as ``"classifier.6"``).
        factors: factor names or presets (``"paper-set1"``, ``"paper-set2"``, and ``"paper-set1-reference"``,
            ``"paper-set2-reference"`` with the reference code's erasing, rolling and rotation).
        bounds: narrowed parameter bounds, ``{factor: {parameter: [low, high]}}``.
        switches: parametric factors that also get an on/off coordinate.
        random_order: sample the composition order as a factor (Lehmer code).
        image_mode: ``"within"`` (indices of augmentation variance within each image) or
            ``"joint"`` (the image is a factor too).
        estimator: ``"sobol"`` (S1, ST), ``"sobol2"`` (+ S2), ``"shapley-exact"``, ``"shapley-permutation"``.
        second_order_intervals: false keeps no second moments for sobol2's pairs (about half its
            per-output memory): S2 estimates stay, their per-unit intervals are NaN (the layer-level
            S2 keeps its interval: its sums are per layer, not per output).
        n: base rows N of the design (a power of two); evaluations = N × group size.
        seed: seed of the scrambled Sobol' design.
        batch_size: evaluations grouped per forward pass (and the design's rows per block: batch_size //
            group size); on the CPU the model sees at most 128 of them at a time (as fast, less memory).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"`` …
        preprocessing: ``"standard"`` or ``"paper"`` (per-image per-channel min-max stretch first).
        confidence: level of the confidence intervals.
        limit_images: use at most this many images of a folder: a random subset drawn with ``seed`` (the
            bundled photos and a Dataset: the first ones).
        per_class: use this many images of every class of a folder (all of a smaller class), drawn with ``seed``;
            with ``limit_images`` too, a random ``limit_images`` of those.
        label_files: class lists and ground-truth files (``LOC_synset_mapping.txt``, ``LOC_val_solution.csv``,
            ``categories_places365.txt``, ``places365_val.txt``, ``filename label`` text); files of those names in
            or up to four folders above the image folder are found without it.
        image_cache: ``"auto"`` (decode a folder once into ``<folder>/.augsense-cache``, else the user cache
            folder, and memory-map it), a cache folder, or ``"off"`` (decode into memory every run).
        decode_workers: threads decoding images; 0 = the CPU cores (at most 16).
        images_partition: a second image folder (e.g. the training pool beside the validation one): adds the
            ``partition`` player choosing the pool (joint mode).
        class_factor: add the ``class`` player: the design picks a class, then the image player an image
            within it (joint mode; classes from labels, else class folders).
        checkpoint_every: seconds between checkpoints, a finite number ≥ 0; 0 turns checkpoints off
            (the one way to say "never": negative, NaN and inf are refused).
        report: write report.html at the end.
        segment: run on a block cut out of the network instead (``"features.0-2"``, ``"layer1"`` …),
            fed one HSV channel of the augmented input at a time (see ``augsense segments``).
        segment_channel: ``"h"``, ``"s"``, ``"v"`` or ``"all"`` (one run per channel).
    """

    model: str = "efficientnet-lite0"
    weights: str | None = None
    categories: str | None = None
    images: str = "bundled"
    layers: list[str] = field(default_factory=lambda: list(DEMO_LAYERS))
    reduction: str = "mean"
    layouts: dict[str, str] = field(default_factory=dict)
    output: str = "softmax"
    softmax_layers: list[str] = field(default_factory=list)
    factors: list[str] = field(default_factory=lambda: ["paper-set2"])
    bounds: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    switches: list[str] = field(default_factory=list)
    random_order: bool = False
    image_mode: str = "within"
    estimator: str = "sobol"
    second_order_intervals: bool = True
    n: int = 256
    seed: int = 0
    batch_size: int = 32
    device: str = "auto"
    preprocessing: str = "standard"
    confidence: float = 0.95
    limit_images: int | None = None
    per_class: int | None = None
    label_files: list[str] = field(default_factory=list)
    image_cache: str = "auto"
    decode_workers: int = 0
    images_partition: str | None = None
    class_factor: bool = False
    checkpoint_every: float = 120.0
    report: bool = True
    segment: str | None = None
    segment_channel: str = "all"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check types and values; raise AugsenseError naming the first bad key."""
        hints = typing.get_type_hints(SensitivityConfig)
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), hints[f.name])
        _choice("reduction", self.reduction, ("mean", "max", "none", "cls"))
        for layer, layout in self.layouts.items():
            if not re.fullmatch(r"nchw|nhwc|tokens(:\d+)?", layout.strip().lower()):
                raise AugsenseError(f"layouts: {layer!r} = {layout!r} is not one of nchw, nhwc, tokens, tokens:P "
                                    "(P: class + register tokens)")
        _choice("output", self.output, ("logits", "softmax"))
        _choice("image_mode", self.image_mode, IMAGE_MODES)
        _choice("estimator", self.estimator, ESTIMATORS)
        _choice("preprocessing", self.preprocessing, PREPROCESSING)
        _choice("segment_channel", self.segment_channel, ("h", "s", "v", "all"))
        if self.n < 2 or self.n & (self.n - 1):
            raise AugsenseError(f"n = {self.n} must be a power of two ≥ 2 (Sobol' balance), e.g. 256 or 1024")
        if self.n > MAX_N:
            raise AugsenseError(f"n = {self.n} is beyond the largest base sample, 2**26 = {MAX_N}, which already takes "
                                "N × (factors + 2) ≥ 2·10^8 forward passes (many hours on a GPU, months on a CPU) for "
                                "intervals below 1e-4 wide; n = 2**14 gives intervals of a few 1e-3")
        if not (math.isfinite(self.checkpoint_every) and self.checkpoint_every >= 0):
            raise AugsenseError(f"checkpoint_every = {self.checkpoint_every} must be a finite number of seconds ≥ 0, "
                                "e.g. 120; 0 turns checkpoints off")
        if self.batch_size < 1:
            raise AugsenseError("batch_size must be ≥ 1")
        if not 0 < self.confidence < 1:
            raise AugsenseError(f"confidence = {self.confidence} must lie strictly between 0 and 1")
        if self.limit_images is not None and self.limit_images < 1:
            raise AugsenseError("limit_images must be ≥ 1")
        if self.per_class is not None and self.per_class < 1:
            raise AugsenseError("per_class must be ≥ 1 (the paper: 50 images per class)")
        if self.decode_workers < 0:
            raise AugsenseError("decode_workers must be ≥ 0 (0: one per CPU core)")
        if (self.class_factor or self.images_partition is not None) and self.image_mode != "joint":
            raise AugsenseError("class_factor and images_partition make the image a factor: set image_mode = 'joint'")
        if not self.factors:
            raise AugsenseError("no factors chosen; name some (see `augsense factors`) or a preset")
        if not self.layers:
            raise AugsenseError("no layers chosen; list them with `augsense layers MODEL`")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SensitivityConfig":
        """Build from a mapping (a TOML table); unknown keys are errors."""
        if not isinstance(data, dict):
            raise AugsenseError(f"a config must be a table of keys (a TOML file or a dict), got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(map(str, data)) - known)
        if unknown:
            raise AugsenseError(f"unknown config key {unknown[0]!r}; valid keys: {', '.join(sorted(known))}")
        values = dict(data)
        if isinstance(values.get("factors"), str):
            values["factors"] = [values["factors"]]
        if isinstance(values.get("layers"), str):
            values["layers"] = [values["layers"]]
        if isinstance(values.get("layouts"), dict):  # TOML reads an unquoted features.1 = "nhwc" as nested tables
            values["layouts"] = _dotted(values["layouts"])
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path) -> "SensitivityConfig":
        path = Path(path)
        if not path.is_file():
            raise AugsenseError(f"config file {str(path)!r} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise AugsenseError(f"config file {str(path)!r} is not valid TOML: {error}") from error
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The config as TOML text that reproduces the run."""
        lines = []
        tables = []
        for key, value in self.to_dict().items():
            if value is None:
                continue
            if isinstance(value, dict):
                if value:
                    tables.append((key, value))
                continue
            lines.append(f"{key} = {_toml_value(value)}")
        for key, table in tables:
            lines.append(f"\n[{key}]")
            for name, inner in table.items():
                if isinstance(inner, str):  # layouts: quoted keys, layer names hold dots
                    lines.append(f"{_toml_value(name)} = {_toml_value(inner)}")
                    continue
                items = ", ".join(f"{p} = {_toml_value(v)}" for p, v in inner.items())
                lines.append(f"{name} = {{ {items} }}")
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _dotted(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"features": {"1": "nhwc"}} → {"features.1": "nhwc"}; other values are left for the type check."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        flat.update(_dotted(value, name + ".") if isinstance(value, dict) and value else {name: value})
    return flat


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise AugsenseError(f"{key} = {value!r} is not one of {', '.join(allowed)}")


def _check_type(key: str, value: Any, hint: Any) -> None:
    """A small structural type check for config values (no coercion beyond int → float)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        if value is None and type(None) in args:
            return
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    ok: bool
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is bool or hint is str:
        ok = isinstance(value, hint)
    elif origin is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    elif origin is dict and args[1] is str:
        ok = isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    elif origin is dict:
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, dict) and all(
                isinstance(p, str) and isinstance(b, (list, tuple)) and len(b) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b)
                for p, b in v.items())
            for k, v in value.items())
    else:
        ok = True
    if not ok:
        expected = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}.get(
            hint, "a list of strings" if origin is list else "a table of layer names to layouts" if args[1:] == (str,)
            else "a table {factor = {parameter = [low, high]}}")
        raise AugsenseError(f"config key {key!r} must be {expected}, got {value!r}")
