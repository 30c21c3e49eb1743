"""Images: folders, the bundled sample photos, or a torch Dataset, decoded and centre-cropped.

Every source ends as an :class:`ImageSet`: a uint8 tensor (n, 3, S, S) at the model's input size
(kept compact in memory; converted to float in [0, 1] per batch), integer labels where known, the
source of each image, and the files that were skipped with the reason.

A folder is read in three steps: :func:`list_folder` finds the image files and their labels
(class folders, mapping and ground-truth files: :mod:`augsense.io.labels`), :func:`select` picks a
seeded subset (``per_class``, ``limit``), and :func:`decode_selection` decodes it in threads, into
memory or into the shared memory-mapped cache of :mod:`augsense.io.image_cache`.

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

import hashlib
import importlib.util
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps, UnidentifiedImageError

from augsense.errors import AugsenseError
from augsense.io.labels import WNID, ClassList, file_key, find_label_files, folder_labels, wnid_classes

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

#: Version of the decoding rules above (a decoded cache made by another version is rebuilt).
DECODER_VERSION = "augsense-decode/1"

#: CC0 photos shipped inside scikit-image (no ImageNet label is claimed for them).
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


@dataclass
class ImageSet:
    """Decoded images at one size.

    Attributes:
        pixels: (n, 3, S, S) uint8 (in memory, or a read-only memory map of a decoded cache).
        labels: (n,) int64 class indices, -1 where unknown; None when no image has a label.
        sources: n paths or names.
        skipped: (path, reason) for every file that could not be used.
        label_names: class index → name, when a class list (mapping file or the model's names) labelled them.
        folders: n class-folder keys ("" for a file lying directly in the folder), for folders only.
        pools: (n,) int64 image pool of each image (0: ``images``, 1: ``images_partition``), None with one pool.
        notices: what the user should know about the labels or the subset (printed as warnings by a run).
        digest: SHA-256 of the pixels as :func:`pixels_sha256` computes it, when already known (a cache).
        label_files: the label files that labelled the images, with where they were found (run.json records them).
    """

    pixels: torch.Tensor
    labels: torch.Tensor | None
    sources: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    label_names: list[str] | None = None
    folders: list[str] | None = None
    pools: torch.Tensor | None = None
    notices: list[str] = field(default_factory=list)
    digest: str | None = None
    label_files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    @property
    def size(self) -> int:
        return int(self.pixels.shape[-1])

    def batch(self, index: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        """Float images in [0, 1] for the given indices: (len(index), 3, S, S) float32."""
        return self.pixels[index.cpu()].to(device, non_blocking=True).float().div_(255.0)

    def pixels_sha256(self) -> str:
        """SHA-256 of the (n, 3, S, S) uint8 pixels in order (the run plan's ``images.sha256``), computed once."""
        if self.digest is None:
            self.digest = pixels_sha256(self.pixels)
        return self.digest

    def labelled_rows(self) -> torch.Tensor:
        """(n',) int64 indices of the images with a known label, in order (empty without labels): readers
        gather them batch by batch (:meth:`batch`), so a memory-mapped set is not copied."""
        if self.labels is None:
            return torch.empty(0, dtype=torch.long)
        return torch.nonzero(self.labels >= 0).flatten()

    def labelled(self) -> "ImageSet":
        """The subset with known labels (this set itself when every image has one: no copy of the pixels)."""
        if self.labels is None:
            raise AugsenseError("these images have no labels; use a folder with one sub-folder per class")
        keep = self.labelled_rows()
        if len(keep) == len(self):
            return self
        return ImageSet(self.pixels[keep], self.labels[keep], [self.sources[i] for i in keep.tolist()],
                        list(self.skipped), self.label_names)

    def strata(self) -> "ImageStrata":
        """The images grouped by pool and class, for the ``partition`` and ``class`` players (see ImageStrata)."""
        from augsense.factors.strata import ImageStrata

        return ImageStrata.from_images(self)


def pixels_sha256(pixels: torch.Tensor, chunk: int = 256) -> str:
    """SHA-256 of decoded images (n, 3, S, S) uint8 in order, shape included, read ``chunk`` images at a time."""
    digest = hashlib.sha256(f"{tuple(pixels.shape)}|{pixels.dtype}|".encode())
    for start in range(0, pixels.shape[0], chunk):
        digest.update(np.ascontiguousarray(pixels[start:start + chunk].detach().cpu().numpy()).data)
    return digest.hexdigest()


def resampling(interpolation: str) -> TF.InterpolationMode:
    """torchvision's mode for a model's interpolation name (timm's ``pretrained_cfg``); AugsenseError if unknown."""
    modes = {"bilinear": TF.InterpolationMode.BILINEAR, "bicubic": TF.InterpolationMode.BICUBIC,
             "nearest": TF.InterpolationMode.NEAREST}
    if interpolation not in modes:
        raise AugsenseError(f"unknown interpolation {interpolation!r}: use one of {', '.join(modes)}")
    return modes[interpolation]


def _resize(tensor: torch.Tensor, short_side: int, interpolation: str) -> torch.Tensor:
    """(3, H, W) uint8 with the shorter side resized to ``short_side`` (antialiased when downscaling)."""
    mode = resampling(interpolation)
    return TF.resize(tensor, [short_side], interpolation=mode, antialias=mode != TF.InterpolationMode.NEAREST)


def prepare(image: Image.Image, size: int, resize: int | None = None, interpolation: str = "bilinear") -> torch.Tensor:
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
    return TF.center_crop(_resize(tensor, resize or size, interpolation), [size, size])


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


def _read(path: Path, size: int, resize: int | None, interpolation: str = "bilinear") -> torch.Tensor:
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
        return prepare(image, size, resize, interpolation)


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _walk(root: Path) -> list[tuple[Path, str | None, tuple[str, ...]]]:
    """Files under root, sorted, each with None or the reason it is skipped, and its folder below root.

    Directory symlinks inside the folder are followed, each real directory visited once (loops
    end). Symlinks, to files or folders, whose target lies outside the folder are not followed:
    they come back with a reason. Hidden files and folders (a leading dot: the decoded cache
    ``.augsense-cache``, ``.ipynb_checkpoints``) are passed over. One ``scandir`` per folder and no
    system call per plain file (1.28 M ImageNet training files are listed in seconds).
    """
    found: list[tuple[Path, str | None, tuple[str, ...]]] = []
    top = os.path.realpath(root)
    seen: set[str] = set()
    pending: list[tuple[str, tuple[str, ...]]] = [(str(root), ())]
    while pending:  # depth first, sorted: a folder's files, then its sub-folders in name order
        folder, parts = pending.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(folder) as scan:
                entries = sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:  # unreadable folder: passed over, as os.walk does
            continue
        folders, files = [], []
        for entry in entries:
            try:
                is_folder = entry.is_dir()  # follows links; a dangling link is a file (and fails to decode)
            except OSError:
                is_folder = False
            target = os.path.realpath(entry.path) if entry.is_symlink() else None
            outside = target is not None and not _inside(target, top)
            if is_folder:
                if outside:
                    found.append((Path(entry.path), f"symlink to a folder outside the image folder ({target}): "
                                                    "not followed", parts))
                else:
                    folders.append((entry.path, parts + (entry.name,)))
            elif outside:
                files.append((Path(entry.path), f"symlink to a file outside the image folder ({target}): not followed",
                              parts))
            else:
                files.append((Path(entry.path), None, parts))
        found.extend(files)
        pending.extend(reversed(folders))
    return found


@dataclass
class FolderListing:
    """The image files of a folder with their labels, before anything is decoded.

    files: image paths in sorted order; labels: class index per file (-1 unknown); folders: class-folder
    key per file ("" directly in the folder); skipped: (path, reason); label_names: index → class name
    when a class list labelled them; notices: unmatched class folders, files missing from a ground truth.
    """

    root: Path
    files: list[Path]
    labels: list[int]
    folders: list[str]
    skipped: list[tuple[str, str]]
    label_names: list[str] | None
    notices: list[str]
    label_files: list[str] = field(default_factory=list)  # FolderLabels.describe: which files, found where

    def class_keys(self) -> list[str | None]:
        """The class of each file for per-class subsets and the class factor: its label, else its folder, else None."""
        return [f"label:{label}" if label >= 0 else (f"folder:{folder}" if folder else None)
                for label, folder in zip(self.labels, self.folders)]


def _folder_class(parts: tuple[str, ...], classes: ClassList | None) -> tuple[int, str, bool]:
    """(label, folder key, out of range) of a file whose parent folders below the root are ``parts``.

    The longest match wins. A top folder named by an integer is that class index; an index past the
    class list (``1243`` for a 1000-class model) leaves the file unlabelled with ``out of range`` set.
    Only ASCII digits count ("²" or a full-width "９" are matched as names, like any other folder).
    """
    for k in range(len(parts), 0, -1):
        key = "/".join(parts[:k])
        if k == 1 and key.isascii() and key.isdecimal():
            index = int(key)
            if classes is not None and index >= len(classes.names):
                return -1, key, True
            return index, key, False
        if classes is not None:
            index = classes.lookup(key)
            if index is not None:
                return index, key, False
    return -1, "/".join(parts), False


def list_folder(root: str | Path, *, class_names: Sequence[str] | None = None,
                label_files: Sequence[str] = ()) -> FolderListing:
    """The image files under ``root`` and their labels (see :mod:`augsense.io.labels` for the layouts read).

    Class folders that name no class are kept without a label and reported in ``notices``; so are
    files of a flat folder that its ground-truth file does not list.
    """
    root = Path(root)
    if not root.exists():
        raise AugsenseError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise AugsenseError(f"{str(root)!r} is not a folder of images")
    labelling = folder_labels(root, label_files, class_names)
    label_paths = {p.name for p in find_label_files(root, label_files)} | {"meta.mat"}
    files, skipped, parts_of = [], [], []
    for path, refusal, parts in _walk(root):
        if refusal is not None:
            skipped.append((str(path), refusal))
        elif os.path.splitext(path.name)[1].lower() not in IMAGE_SUFFIXES:
            if not (not parts and path.name in label_paths):
                skipped.append((str(path), "not an image file"))
        else:
            files.append(path)
            parts_of.append(parts)
    classes = labelling.classes
    tops = {parts[0] for parts in parts_of if parts}
    if tops and all(WNID.match(t) for t in tops) and (classes is None or classes.wnids is None):
        classes = wnid_classes(sorted(tops), root)
    labels, folders, unmatched, beyond, missing = [], [], {}, {}, 0
    for path, parts in zip(files, parts_of):
        if not parts:
            label = labelling.truth.get(file_key(path), -1) if labelling.truth is not None else -1
            missing += labelling.truth is not None and label < 0
            labels.append(label)
            folders.append("")
            continue
        label, key, out_of_range = _folder_class(parts, classes)
        if out_of_range:
            beyond[key] = beyond.get(key, 0) + 1
        elif label < 0:
            unmatched[key] = unmatched.get(key, 0) + 1
        labels.append(label)
        folders.append(key)
    notices = []
    if unmatched:
        names = sorted(unmatched)
        source = (f"of {classes.source}" if classes is not None else
                  "(no class list: the model has no class names and no mapping file was found)")
        notices.append(f"{len(names)} class folder(s) name no class {source}: {', '.join(names[:5])}"
                       f"{' …' if len(names) > 5 else ''}; their {sum(unmatched.values())} images are used without a "
                       "label (not in top-1); rename them or give a mapping file (--label-files)")
    if beyond:
        names = sorted(beyond, key=int)
        notices.append(f"{len(names)} class folder(s) name a class index past the {len(classes.names)} classes in "
                       f"{classes.source} (0 to {len(classes.names) - 1}): {', '.join(names[:5])}"
                       f"{' …' if len(names) > 5 else ''}; their {sum(beyond.values())} images are used without a "
                       "label (not in top-1); rename them or give a mapping file (--label-files)")
    if missing:
        notices.append(f"{missing} image(s) lying directly in {str(root)!r} are not in {labelling.truth_source}: used "
                       "without a label (not in top-1)")
    used = labelling.describe(root)
    return FolderListing(root, files, labels, folders, skipped, classes.names if classes is not None else None, notices,
                         [used] if used else [])


# ---- seeded subsets --------------------------------------------------------------------------------------------------

@dataclass
class Selection:
    """Which files to decode: slots, each filled by the first readable file of its queue.

    queues: per class group (or one group), listing indices in the seeded random order; wanted: images wanted per group.
    """

    queues: list[list[int]]
    wanted: list[int]


def select(listing: FolderListing, *, per_class: int | None = None, limit: int | None = None, seed: int = 0,
           stream: int = 0) -> Selection:
    """A seeded subset: ``per_class`` images of every class (all of a smaller class), then ``limit`` of those.

    Deterministic given the listing and ``seed`` (``stream`` separates image pools). Without either
    option every file is kept in sorted order. With ``limit`` alone, a uniformly random subset of
    ``limit`` files; with both, ``per_class`` per class first, then a random ``limit`` of the result.
    A file that cannot be decoded is replaced by the next of its class's (or the folder's) random order.
    """
    n = len(listing.files)
    rng = np.random.default_rng([int(seed), 0x5E1EC7, int(stream)])
    if per_class is None:
        if limit is None or limit >= n:
            return Selection([list(range(n))], [n])
        return Selection([_head_sorted(rng.permutation(n).tolist(), int(limit))], [int(limit)])
    keys = listing.class_keys()
    if any(key is None for key in keys):
        count = sum(key is None for key in keys)
        raise AugsenseError(f"per_class needs a class for every image, but {count} image(s) of {str(listing.root)!r} lie "
                            "directly in the folder with no ground-truth label: use class folders or a ground-truth "
                            "file (LOC_val_solution.csv, places365_val.txt, 'filename label' via --label-files)")
    groups: dict[str, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)  # type: ignore[arg-type]
    queues = [[members[j] for j in rng.permutation(len(members))] for _, members in sorted(groups.items())]
    wanted = [min(int(per_class), len(queue)) for queue in queues]
    if limit is not None and limit < sum(wanted):
        slots = np.repeat(np.arange(len(queues)), wanted)
        chosen = slots[rng.permutation(len(slots))[:int(limit)]]
        wanted = np.bincount(chosen, minlength=len(queues)).tolist()
    return Selection([_head_sorted(queue, w) for queue, w in zip(queues, wanted)], wanted)


def _head_sorted(queue: list[int], head: int) -> list[int]:
    """The queue with its first ``head`` entries (the chosen files) in listing order, the reserve after them."""
    return sorted(queue[:head]) + queue[head:]


# ---- decoding ----------------------------------------------------------------------------------------------------------

def decode_workers(requested: int | None = None) -> int:
    """Decoding threads: ``requested``, or (0/None) the CPU cores this process may use, at most 16."""
    if requested:
        return max(1, int(requested))
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(16, cores))


def _decode_one(path: Path, size: int, resize: int | None,
                interpolation: str = "bilinear") -> tuple[np.ndarray | None, str | None]:
    try:
        return _read(path, size, resize, interpolation).numpy(), None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return None, f"unreadable: {error}"


def decode_selection(paths: Sequence[Path], selection: Selection, sink: np.ndarray, size: int, resize: int | None,
                     workers: int = 1, interpolation: str = "bilinear") -> tuple[list[int], list[tuple[int, str]]]:
    """Decode the selected files into ``sink`` (rows, 3, S, S) uint8, in parallel threads.

    Slots are filled group by group in queue order; a file that fails is replaced by the next in its
    queue. Returns the listing index of each filled row (rows 0 … len-1, holes compacted away) and
    the (listing index, reason) of every file that failed. Pillow's decoders and torch's resize
    release the GIL, so threads share the cores without copying images between processes.
    """
    row_of: list[int | None] = [None] * int(sum(selection.wanted))
    failed: list[tuple[int, str]] = []
    # pending work: (slot, group, position in queue)
    heads = []
    slot = 0
    for g, count in enumerate(selection.wanted):
        for position in range(count):
            heads.append((slot, g, position))
            slot += 1
    next_position = list(selection.wanted)
    threads = torch.get_num_threads()
    if workers > 1:  # one torch thread per decoding thread: nested OpenMP teams oversubscribe the cores
        torch.set_num_threads(1)
    try:
        _fill(paths, selection, sink, size, resize, interpolation, workers, heads, row_of, failed, next_position)
    finally:
        torch.set_num_threads(threads)
    filled = [s for s, index in enumerate(row_of) if index is not None]
    for new, old in enumerate(filled):  # compact the holes left by files with no replacement (in place, forwards)
        if new != old:
            sink[new] = sink[old]
    return [row_of[s] for s in filled], failed  # type: ignore[misc]


def _fill(paths: Sequence[Path], selection: Selection, sink: np.ndarray, size: int, resize: int | None,
          interpolation: str, workers: int,
          heads: list[tuple[int, int, int]], row_of: list[int | None], failed: list[tuple[int, str]],
          next_position: list[int]) -> None:
    """Decode the pending (slot, group, queue position) items in a thread pool, retrying failed slots."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        while heads:
            def work(item: tuple[int, int, int]) -> tuple[int, int, str | None]:
                s, g, position = item
                index = selection.queues[g][position]
                array, error = _decode_one(paths[index], size, resize, interpolation)
                if array is not None:
                    sink[s] = array
                return s, index, error
            retry = []
            for (s, index, error), (_, g, _) in zip(pool.map(work, heads), heads):
                if error is None:
                    row_of[s] = index
                    continue
                failed.append((index, error))
                if next_position[g] < len(selection.queues[g]):  # the next file of the same class takes the slot
                    retry.append((s, g, next_position[g]))
                    next_position[g] += 1
            heads = retry


@dataclass
class Pool:
    """One image folder of a load: its listing and selection."""

    listing: FolderListing
    selection: Selection


def load_folder(root: str | Path, size: int, resize: int | None = None, *, class_names: Sequence[str] | None = None,
                limit: int | None = None, per_class: int | None = None, seed: int = 0,
                label_files: Sequence[str] = (), cache: str | None = "off", workers: int | None = None,
                partition: str | Path | None = None, interpolation: str = "bilinear") -> ImageSet:
    """Images from a folder (and a second pool ``partition``): class sub-folders or a ground-truth file give labels.

    A sub-folder name is read as a class index when it is an integer, or matched against the class
    list of a mapping file or ``class_names`` (the model's); see :mod:`augsense.io.labels`. Unreadable
    and non-image files, images too large to decode or outside [0, 1] (float), and symlinks leading
    out of the folder are skipped and listed with the reason. ``per_class`` and ``limit`` pick a
    seeded subset (:func:`select`). Decoding runs in ``workers`` threads (default: the cores); with
    ``cache`` (``"auto"``, a folder, or ``"off"``) the pixels go to a memory-mapped file that later
    runs and other ranks reuse (:mod:`augsense.io.image_cache`). ``interpolation`` is the model's
    resampling for the shorter-side resize (bilinear, bicubic or nearest).
    """
    resampling(interpolation)  # an unknown name fails before anything is listed
    roots = [Path(root)] + ([Path(partition)] if partition is not None else [])
    pools = []
    for stream, folder in enumerate(roots):
        listing = list_folder(folder, class_names=class_names, label_files=label_files)
        if not listing.files:
            detail = (f" ({len(listing.skipped)} files skipped, e.g. {listing.skipped[0][0]}: {listing.skipped[0][1]})"
                      if listing.skipped else "")
            raise AugsenseError(f"no readable images in {str(folder)!r}{detail}")
        pools.append(Pool(listing, select(listing, per_class=per_class, limit=limit, seed=seed, stream=stream)))
    paths = [path for pool in pools for path in pool.listing.files]
    offsets = np.cumsum([0] + [len(pool.listing.files) for pool in pools])
    selection = Selection([[int(offsets[p]) + i for i in queue] for p, pool in enumerate(pools)
                           for queue in pool.selection.queues],
                          [w for pool in pools for w in pool.selection.wanted])
    key_files = [str(path) for path in paths]
    workers = decode_workers(workers)
    from augsense.io import image_cache

    directory = image_cache.cache_folder(roots[0], cache)
    if directory is not None:
        decoded = image_cache.load_or_build(
            directory, image_cache.cache_key(key_files, _preprocessing_key(size, resize, interpolation),
                                             [[q, w] for q, w in zip(selection.queues, selection.wanted)]),
            paths, lambda sink: decode_selection(paths, selection, sink, size, resize, workers, interpolation),
            rows=int(sum(selection.wanted)), size=size)
        pixels, rows, failed, digest = decoded.pixels, decoded.rows, decoded.failed, decoded.digest
    else:
        sink = np.empty((int(sum(selection.wanted)), 3, size, size), dtype=np.uint8)
        rows, failed = decode_selection(paths, selection, sink, size, resize, workers, interpolation)
        pixels, digest = torch.from_numpy(sink[:len(rows)]), None
    if not rows:
        skipped = [item for pool in pools for item in pool.listing.skipped] + [(str(paths[i]), r) for i, r in failed]
        detail = f" ({len(skipped)} files skipped, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise AugsenseError(f"no readable images in {str(roots[0])!r}{detail}")
    pool_of = np.repeat(np.arange(len(pools)), [len(pool.listing.files) for pool in pools])
    labels_all = [label for pool in pools for label in pool.listing.labels]
    folders_all = [folder for pool in pools for folder in pool.listing.folders]
    labels = [labels_all[i] for i in rows]
    skipped = [item for pool in pools for item in pool.listing.skipped] + [(str(paths[i]), reason) for i, reason in failed]
    notices = [note for pool in pools for note in pool.listing.notices]
    for p, pool in enumerate(pools):
        short = [g for g, queue in enumerate(pool.selection.queues) if per_class is not None
                 and len(queue) < per_class]
        if short:
            notices.append(f"{len(short)} class(es) of {str(pool.listing.root)!r} have fewer than per_class = "
                           f"{per_class} images: all of theirs are used")
    has_labels = any(label >= 0 for label in labels)
    names = pools[0].listing.label_names
    return ImageSet(pixels, torch.tensor(labels) if has_labels else None, [str(paths[i]) for i in rows], skipped,
                    names, [folders_all[i] for i in rows],
                    torch.from_numpy(pool_of[rows].astype(np.int64)) if len(pools) > 1 else None, notices, digest,
                    [line for pool in pools for line in pool.listing.label_files])


def _preprocessing_key(size: int, resize: int | None, interpolation: str = "bilinear") -> dict[str, object]:
    """What decides a file's decoded pixels besides its bytes (the cache is rebuilt when it changes)."""
    key: dict[str, object] = {"decoder": DECODER_VERSION, "size": int(size), "resize": int(resize or size),
                              "max_aspect": MAX_ASPECT, "max_source_pixels": MAX_SOURCE_PIXELS,
                              "pillow": Image.__version__, "torchvision": _torchvision_version()}
    if interpolation != "bilinear":  # named only when not the default, so caches of bilinear runs stay valid
        key["interpolation"] = interpolation
    return key


def _torchvision_version() -> str:
    import torchvision

    return str(torchvision.__version__)


def _package_folder(package: str, sub: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / sub
    return folder if folder.is_dir() else None


def load_bundled(size: int, resize: int | None = None, *, include_unlabelled: bool = True,
                 interpolation: str = "bilinear") -> ImageSet:
    """The sample photos bundled with installed packages, read in place (nothing is downloaded).

    20 ImageNet validation-style photos with labels from the ``foolbox`` wheel
    (``imagenet_<i>_<label>.jpg``), plus CC0 photos from ``scikit-image`` (label -1).
    """
    pixels, labels, sources = [], [], []
    foolbox = _package_folder("foolbox", "data")
    if foolbox is not None:
        for path in sorted(foolbox.glob("imagenet_*.jpg")):
            pixels.append(_read(path, size, resize, interpolation))
            labels.append(int(path.stem.split("_")[2]))
            sources.append(f"foolbox:{path.name}")
    skimage = _package_folder("skimage", "data")
    if include_unlabelled and skimage is not None:
        for name in SKIMAGE_PHOTOS:
            if (skimage / name).exists():
                pixels.append(_read(skimage / name, size, resize, interpolation))
                labels.append(-1)
                sources.append(f"skimage:{name}")
    if not pixels:
        raise AugsenseError("no bundled photos found: install the 'foolbox==3.3.4' and 'scikit-image' packages")
    return ImageSet(torch.stack(pixels), torch.tensor(labels), sources)


def load_dataset(dataset: torch.utils.data.Dataset, size: int, resize: int | None = None,
                 limit: int | None = None, interpolation: str = "bilinear") -> ImageSet:
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
            tensor = TF.center_crop(_resize(tensor, resize or size, interpolation), [size, size])
        else:
            tensor = prepare(image, size, resize, interpolation)
        pixels.append(tensor)
        labels.append(int(label))
        sources.append(f"dataset[{i}]")
    if not pixels:
        raise AugsenseError("the dataset is empty")
    has_labels = any(label >= 0 for label in labels)
    return ImageSet(torch.stack(pixels), torch.tensor(labels) if has_labels else None, sources)


def load_images(source: str | Path | torch.utils.data.Dataset | None, size: int, resize: int | None = None, *,
                class_names: Sequence[str] | None = None, limit: int | None = None, per_class: int | None = None,
                seed: int = 0, label_files: Sequence[str] = (), cache: str | None = "off", workers: int | None = None,
                partition: str | Path | None = None, interpolation: str = "bilinear") -> ImageSet:
    """Images from ``"bundled"`` (or None), a folder path, or a torch Dataset.

    Folders take every option of :func:`load_folder`. The bundled photos and a Dataset take ``limit``
    only (their first images); ``per_class`` and ``partition`` need folders.
    """
    if not isinstance(source, (str, Path)) or source == "bundled":
        if partition is not None:
            raise AugsenseError("images_partition (a second image pool) needs images to be a folder too")
        if per_class is not None:
            raise AugsenseError("per_class picks images from class folders: set images to a folder")
    if source is None or (isinstance(source, str) and source == "bundled"):
        images = load_bundled(size, resize, interpolation=interpolation)
        if limit is not None:
            images = ImageSet(images.pixels[:limit], images.labels[:limit] if images.labels is not None else None,
                              images.sources[:limit])
        return images
    if isinstance(source, (str, Path)):
        return load_folder(source, size, resize, class_names=class_names, limit=limit, per_class=per_class, seed=seed,
                           label_files=label_files, cache=cache, workers=workers, partition=partition,
                           interpolation=interpolation)
    return load_dataset(source, size, resize, limit, interpolation)


def images_for(config: Any, bundle: Any, source: Any = None) -> ImageSet:
    """The images of a run: ``source`` (default ``config.images``) with the config's subset, labels and cache options.

    config: a SensitivityConfig; bundle: the ModelBundle (input size, resize, interpolation, class names).
    """
    return load_images(source if source is not None else config.images, bundle.input_size, bundle.resize_size,
                       class_names=bundle.class_names, limit=config.limit_images, per_class=config.per_class,
                       seed=config.seed, label_files=config.label_files, cache=config.image_cache,
                       workers=config.decode_workers, partition=config.images_partition,
                       interpolation=getattr(bundle, "interpolation", "bilinear"))
