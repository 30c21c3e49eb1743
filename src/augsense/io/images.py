"""Images: folders, the bundled sample photos, or a torch Dataset, decoded and centre-cropped.

Every source ends as an :class:`ImageSet`: a uint8 tensor (n, 3, S, S) at the model's input size
(kept compact in memory; converted to float in [0, 1] per batch), integer labels where known, the
source of each image, and the files that were skipped with the reason.

How a file becomes pixels (see :func:`prepare`; the same rules are listed in docs/scale.md):

- Memory is bounded twice. A file whose header claims more than :data:`MAX_SOURCE_PIXELS`
  (2**26, about 67 megapixels, at most ~270 MB decoded) is skipped before it is decoded. Before
  resizing, the long side is centre-cropped to :data:`MAX_ASPECT` (4) times the short side: the
  final centre crop only ever shows the middle of the image, so nothing visible changes, but a
  300000×8 strip no longer asks for a 9.6-million-pixel-wide resized copy (7.4 GB).
- EXIF orientation is applied (the photo stands as a viewer shows it).
- 16-bit images are scaled by their bit depth (v · 255 / 65535, or 2**b - 1 for a declared depth
  b of a 32-bit integer image), never by their own maximum; negative values count as 0.
- Float images are intensities in [0, 1], used as they are; values outside [0, 1] by at most one
  8-bit step (1/255, resampling overshoot) are clipped. An image with NaN/Inf or with values
  further outside (a 0–255 float image, a signed one) is skipped with its range in the reason
  rather than silently clipped to white or black.
- In a folder, symlinks whose target lies outside the folder (files or folders) are not followed:
  they are skipped and listed. Links inside the folder are followed, loops visited once.
"""

from __future__ import annotations

import importlib.util
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError

from augsense.errors import AugsenseError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

#: Images whose header claims more pixels than this are skipped before decoding (2**26, about 67
#: megapixels: ~200 MB as 8-bit RGB, ~270 MB at 4 bytes a pixel; larger than all but medium-format
#: camera photos). Downscale bigger images first.
MAX_SOURCE_PIXELS = 2 ** 26

#: Before resizing, the long side is centre-cropped to at most this many times the short side
#: (the final centre crop never reaches further out), bounding the resized copy to 4 × S'² pixels.
MAX_ASPECT = 4

#: Float pixels may stray outside [0, 1] by this much (one 8-bit step) and are clipped; further out, the image is
#: skipped with its range in the reason.
FLOAT_TOLERANCE = 1.0 / 255.0

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
    """Decode a PIL image to (3, size, size) uint8: upright, 8-bit RGB, shorter side resized, centre crop.

    EXIF orientation is applied; the long side is centre-cropped to :data:`MAX_ASPECT` × the short
    side before resizing; 16-bit and 32-bit integer images are scaled by their bit depth, float
    images read as [0, 1] (see :func:`to_eight_bit`); grayscale, palette, 1-bit, CMYK and RGBA
    (alpha dropped) are converted to RGB. Raises ValueError for float images outside [0, 1].
    """
    image = upright(image)
    box = _aspect_box(*image.size)
    if box is not None:
        image = image.crop(box)
    image = to_eight_bit(image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    tensor = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)).permute(2, 0, 1)
    tensor = TF.resize(tensor, [resize or size], antialias=True)
    return TF.center_crop(tensor, [size, size])


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says (the same image when there is none).

    An EXIF block that cannot be parsed is ignored, as image viewers do.
    """
    try:
        orientation = image.getexif().get(0x0112, 1)  # 0x0112: Orientation
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct.error):
        return image
    if orientation not in (2, 3, 4, 5, 6, 7, 8):
        return image
    return ImageOps.exif_transpose(image)


def _aspect_box(width: int, height: int) -> tuple[int, int, int, int] | None:
    """The centred crop box that limits the long side to MAX_ASPECT × the short side (None: no crop)."""
    short = min(width, height)
    longest = MAX_ASPECT * short
    if width > longest:
        left = (width - longest) // 2
        return left, 0, left + longest, height
    if height > longest:
        top = (height - longest) // 2
        return 0, top, width, top + longest
    return None


def _declared_bits(image: Image.Image) -> int | None:
    """The bits per sample a TIFF declares (tag 258), if any."""
    tags = getattr(image, "tag_v2", None)
    try:
        value = tags.get(258) if tags is not None else None
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct.error):
        return None
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) and 1 <= value <= 32 else None


def to_eight_bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer and float images as 8-bit grayscale (mode L); other modes unchanged.

    - ``I;16`` (any byte order): ``round(v · 255 / 65535)``, by the bit depth, not the image's maximum
      (a uniform 1000 stays dark grey: 4).
    - ``I`` (32-bit signed): by the declared depth b (TIFF BitsPerSample) as ``2**b - 1``, capped at
      2**31 - 1; without a declared depth it is taken as 16-bit (as older Pillow opened 16-bit PNGs).
      Values below 0 count as 0, above full scale as full scale.
    - ``F`` (float): values are intensities in [0, 1], scaled by 255; values outside by at most
      :data:`FLOAT_TOLERANCE` are clipped. NaN/Inf, or values further outside, raise ValueError
      naming the range (the file is skipped, not turned white or black).
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        bits = 16 if mode != "I" else min(_declared_bits(image) or 16, 31)
        full = 2 ** bits - 1
        wide = np.uint32 if full <= 65535 else np.int64
        array = np.clip(np.asarray(image).astype(wide), 0, full)
        eight = (array * 255 + full // 2) // full
        return Image.fromarray(eight.astype(np.uint8))  # 2-d uint8: mode L
    if mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if not np.isfinite(array).all():
            raise ValueError("float pixels include NaN or Inf")
        low, high = float(array.min()), float(array.max())
        if low < -FLOAT_TOLERANCE or high > 1.0 + FLOAT_TOLERANCE:
            raise ValueError(f"float pixels range over [{low:.4g}, {high:.4g}], not [0, 1]: float images are read as "
                             "intensities in [0, 1]; rescale it to [0, 1] or save it as 8- or 16-bit")
        eight = np.rint(np.clip(array, 0.0, 1.0) * 255.0)
        return Image.fromarray(eight.astype(np.uint8))  # 2-d uint8: mode L
    return image


def _read(path: Path, size: int, resize: int | None) -> torch.Tensor:
    """One image file as (3, size, size) uint8; ValueError/OSError say why it cannot be used.

    The header is checked before anything is decoded: more than :data:`MAX_SOURCE_PIXELS` pixels
    is refused (decompression bombs: a few KB of PNG can claim gigabytes of pixels).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower limit follows
            image = Image.open(path)
    except Image.DecompressionBombError as error:  # Pillow's own limit (2 × 89 megapixels), hit while opening
        raise ValueError(f"too large to decode ({error}); the limit is {MAX_SOURCE_PIXELS / 1e6:.0f} "
                         "megapixels: downscale it first") from None
    with image:
        width, height = image.size
        if width * height > MAX_SOURCE_PIXELS:
            raise ValueError(f"too large to decode: {width}×{height} = {width * height / 1e6:.0f} megapixels, over the "
                             f"limit of {MAX_SOURCE_PIXELS / 1e6:.0f} (decompression bomb guard): downscale it first")
        if min(width, height) < 8:
            raise ValueError(f"too small ({width}×{height} px)")
        image.load()
        return prepare(image, size, resize)


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _walk(root: Path) -> list[tuple[Path, str | None]]:
    """Files under root, sorted, each with None or the reason it is skipped.

    Directory symlinks inside the folder are followed, each real directory visited once (loops
    end). Symlinks, to files or folders, whose target lies outside the folder are not followed:
    they come back with a reason.
    """
    found: list[tuple[Path, str | None]] = []
    top = os.path.realpath(root)
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        kept = []
        for name in dirnames:
            target = os.path.realpath(os.path.join(dirpath, name))
            if _inside(target, top):
                kept.append(name)
            elif not name.startswith("."):
                found.append((Path(dirpath) / name, f"symlink to a folder outside the image folder ({target}): "
                                                    "not followed"))
        dirnames[:] = kept
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            target = os.path.realpath(path)
            if path.is_symlink() and not _inside(target, top):
                found.append((path, f"symlink to a file outside the image folder ({target}): not followed"))
            else:
                found.append((path, None))
    return found


def load_folder(root: str | Path, size: int, resize: int | None = None, *, class_names: Sequence[str] | None = None,
                limit: int | None = None) -> ImageSet:
    """Images from a folder: class sub-folders give labels, a flat folder gives none.

    A sub-folder name is read as a class index when it is an integer, or matched against
    ``class_names`` (the model's). Unreadable and non-image files, images too large to decode or
    outside [0, 1] (float), and symlinks leading out of the folder are skipped and listed with the reason.
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
    for path, refusal in files:
        if limit is not None and len(pixels) >= limit:
            break
        if refusal is not None:
            skipped.append((str(path), refusal))
            continue
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
            box = _aspect_box(int(tensor.shape[-1]), int(tensor.shape[-2]))
            if box is not None:
                tensor = tensor[:, box[1]:box[3], box[0]:box[2]]
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
