"""Images: folders, the bundled sample photos, or a torch Dataset, decoded and centre-cropped.

Every source ends as an :class:`ImageSet`: a uint8 tensor (n, 3, S, S) at the model's input size
(kept compact in memory; converted to float in [0, 1] per batch), integer labels where known, the
source of each image, and the files that were skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError

from augsense.errors import AugsenseError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

#: CC0 photos shipped inside scikit-image (no ImageNet label is claimed for them).
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


@dataclass
class ImageSet:
    """Decoded images at one size.

    Attributes:
        pixels: (n, 3, S, S) uint8.
        labels: (n,) int64 class indices, -1 where unknown; None when no image has a label.
        sources: n paths or names.
        skipped: (path, reason) for every file that could not be used.
        label_names: names of the label indices when they came from folder names.
    """

    pixels: torch.Tensor
    labels: torch.Tensor | None
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    label_names: list[str] | None = None

    def __len__(self) -> int:
        return self.pixels.shape[0]

    @property
    def size(self) -> int:
        return int(self.pixels.shape[-1])

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Float images in [0, 1] for the given indices: (len(index), 3, S, S) float32."""
        return self.pixels[index.cpu()].to(device, non_blocking=True).float().div_(255.0)

    def labelled(self) -> "ImageSet":
        """The subset with known labels."""
        if self.labels is None:
            raise AugsenseError("these images have no labels; use a folder with one sub-folder per class")
        keep = torch.nonzero(self.labels >= 0).flatten()
        return ImageSet(self.pixels[keep], self.labels[keep], [self.sources[i] for i in keep.tolist()],
                        list(self.skipped), self.label_names)


def prepare(image: Image.Image, size: int, resize: int | None = None) -> torch.Tensor:
    """Decode a PIL image to (3, size, size) uint8: RGB, resize shorter side, centre crop.

    Grayscale, palette, CMYK, RGBA (alpha dropped) and 16-bit images are converted to 8-bit RGB.
    """
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = max(float(array.max()), 1.0)
        image = Image.fromarray(np.clip(array / top * 255.0, 0, 255).astype(np.uint8))
    if image.mode != "RGB":
        image = image.convert("RGB")
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    tensor = TF.resize(tensor, [resize or size], antialias=True)
    return TF.center_crop(tensor, [size, size])


def _read(path: Path, size: int, resize: int | None) -> torch.Tensor:
    with Image.open(path) as image:
        image.load()
        if min(image.size) < 8:
            raise ValueError(f"too small ({image.size[0]}×{image.size[1]} px)")
        return prepare(image, size, resize)


def _walk(root: Path) -> list[Path]:
    """Image files under root, sorted, following directory symlinks without looping."""
    found: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        found.extend(Path(dirpath) / name for name in sorted(filenames) if not name.startswith("."))
    return found


def load_folder(root: str | Path, size: int, resize: int | None = None, *, class_names: Sequence[str] | None = None,
                limit: int | None = None) -> ImageSet:
    """Images from a folder: class sub-folders give labels, a flat folder gives none.

    A sub-folder name is read as a class index when it is an integer, or matched against
    ``class_names`` (the model's). Unreadable and non-image files are skipped and listed.
    """
    root = Path(root)
    if not root.exists():
        raise AugsenseError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise AugsenseError(f"{str(root)!r} is not a folder of images")
    files = _walk(root)
    lookup = {name.lower(): i for i, name in enumerate(class_names or [])}
    pixels, labels, sources, skipped = [], [], [], []
    folders: list[str] = []
    for path in files:
        if limit is not None and len(pixels) >= limit:
            break
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((str(path), "not an image file"))
            continue
        try:
            pixels.append(_read(path, size, resize))
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
            skipped.append((str(path), f"unreadable: {error}"))
            continue
        sources.append(str(path))
        parent = path.parent.relative_to(root).parts
        folder = parent[0] if parent else ""
        folders.append(folder)
        if folder.isdigit():
            labels.append(int(folder))
        else:
            labels.append(lookup.get(folder.lower().replace("_", " "), lookup.get(folder.lower(), -1)))
    if not pixels:
        detail = f" ({len(skipped)} files skipped, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise AugsenseError(f"no readable images in {str(root)!r}{detail}")
    has_labels = any(label >= 0 for label in labels)
    return ImageSet(torch.stack(pixels), torch.tensor(labels) if has_labels else None, sources, skipped,
                    sorted(set(folders)) if any(folders) else None)


def _package_folder(package: str, sub: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / sub
    return folder if folder.is_dir() else None


def load_bundled(size: int, resize: int | None = None, *, include_unlabelled: bool = True) -> ImageSet:
    """The sample photos bundled with installed packages, read in place (nothing is downloaded).

    20 ImageNet validation-style photos with labels from the ``foolbox`` wheel
    (``imagenet_<i>_<label>.jpg``), plus CC0 photos from ``scikit-image`` (label -1).
    """
    pixels, labels, sources = [], [], []
    foolbox = _package_folder("foolbox", "data")
    if foolbox is not None:
        for path in sorted(foolbox.glob("imagenet_*.jpg")):
            pixels.append(_read(path, size, resize))
            labels.append(int(path.stem.split("_")[2]))
            sources.append(f"foolbox:{path.name}")
    skimage = _package_folder("skimage", "data")
    if include_unlabelled and skimage is not None:
        for name in SKIMAGE_PHOTOS:
            if (skimage / name).exists():
                pixels.append(_read(skimage / name, size, resize))
                labels.append(-1)
                sources.append(f"skimage:{name}")
    if not pixels:
        raise AugsenseError("no bundled photos found: install the 'foolbox==3.3.4' and 'scikit-image' packages")
    return ImageSet(torch.stack(pixels), torch.tensor(labels), sources)


def load_dataset(dataset: torch.utils.data.Dataset, size: int, resize: int | None = None,
                 limit: int | None = None) -> ImageSet:
    """Images from a torch Dataset yielding (image, label) or image; PIL images or (3,H,W) tensors."""
    pixels, labels, sources = [], [], []
    count = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
    for i in range(count):
        item = dataset[i]
        image, label = (item[0], item[1]) if isinstance(item, (tuple, list)) else (item, -1)
        if isinstance(image, torch.Tensor):
            tensor = image
            if tensor.is_floating_point():
                tensor = (tensor.clamp(0, 1) * 255).round().to(torch.uint8)
            if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
                raise AugsenseError(f"dataset item {i} has shape {tuple(tensor.shape)}; expected (3, H, W)")
            tensor = tensor.expand(3, -1, -1)
            tensor = TF.center_crop(TF.resize(tensor, [resize or size], antialias=True), [size, size])
        else:
            tensor = prepare(image, size, resize)
        pixels.append(tensor)
        labels.append(int(label))
        sources.append(f"dataset[{i}]")
    if not pixels:
        raise AugsenseError("the dataset is empty")
    has_labels = any(label >= 0 for label in labels)
    return ImageSet(torch.stack(pixels), torch.tensor(labels) if has_labels else None, sources)


def load_images(source: str | Path | torch.utils.data.Dataset | None, size: int, resize: int | None = None, *,
                class_names: Sequence[str] | None = None, limit: int | None = None) -> ImageSet:
    """Images from ``"bundled"`` (or None), a folder path, or a torch Dataset."""
    if source is None or (isinstance(source, str) and source == "bundled"):
        images = load_bundled(size, resize)
        if limit is not None:
            images = ImageSet(images.pixels[:limit], images.labels[:limit] if images.labels is not None else None,
                              images.sources[:limit])
        return images
    if isinstance(source, (str, Path)):
        return load_folder(source, size, resize, class_names=class_names, limit=limit)
    return load_dataset(source, size, resize, limit)
