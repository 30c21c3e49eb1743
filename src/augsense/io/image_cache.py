"""A decoded image set on disk: one uint8 file of (n, 3, S, S) pixels that every process memory-maps.

Decoding 50 000 JPEGs takes minutes and holds 7.5 GB at 224 px; with the cache a folder is decoded
once (in parallel threads), written to disk, and every later run and every torchrun rank maps the
same file: the pages live once in the page cache, shared, and no rank holds a private copy.

A cache folder (config ``image_cache``: ``"auto"``, a folder, or ``"off"``; ``"auto"`` is
``<images>/.augsense-cache`` when that folder is writable, else
``$XDG_CACHE_HOME/augsense/images/<hash of the folder path>``) holds per image set:

- ``<key>.json``, the index: format, shape, the data file's name and its identity (size,
  modification and status-change times in ns, inode), every file decoded or tried (its listing index,
  size, modification and status-change times in ns, and inode), the row of each image, the failures with their reasons, and the
  SHA-256 of the pixels (so the run plan need not read 7.5 GB to hash them);
- ``<key>-<build>.u8``, the pixels, raw C-order uint8;
- ``<key>.lock``, taken (``fcntl.flock``) by a builder, so concurrent ranks or runs decode once.

``key`` hashes the format, the preprocessing (size, resize, decoder version, Pillow and torchvision
versions), the file list and the subset chosen: another subset or size is another cache. An index
whose files changed (size, modification or status-change time, inode) is stale and rebuilt: an image
replaced by other pixels of the same size and modification time (``cp -p``, ``touch -r``) still
changes its ctime (which users cannot set) or inode. An index of an older augsense, which recorded
size and modification time only, no longer matches and is rebuilt once. A build writes the pixels to a
fresh file, fsyncs it and the index, and then replaces the index atomically (``os.replace``), so a
reader sees the old set or the new one, never a half-written one, and a process still mapping the old
pixels keeps them. Delete the folder to reclaim the space.

The stored SHA-256 is trusted, not recomputed (hashing runs at about 0.5 GB/s per core: 15 s for
the 7.5 GB of ImageNet's validation set at 224 px, at every start), so the pixel file itself must be
the one the index describes: one whose size, modification time, status-change time (ctime) or inode
differs from the index's record (edited in place, replaced, copied) makes the set stale, and it is
rebuilt. Not detected: an edit that keeps all four, which needs the system clock set back (ctime
cannot be set otherwise) or a raw write to the disk below the file system; delete the cache folder
(or set ``image_cache = "off"``) if someone may have done that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from augsense.errors import AugsenseError

FORMAT = "augsense-image-cache/1"
#: The cache folder inside an image folder (hidden: the folder walk passes over it).
CACHE_NAME = ".augsense-cache"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


@dataclass
class Decoded:
    """A decoded set: pixels (n, 3, S, S) uint8 (a copy-on-write memory map), the listing index of each row,
    the (listing index, reason) of each file that failed, the pixels' SHA-256, and whether it was reused."""

    pixels: torch.Tensor
    rows: list[int]
    failed: list[tuple[int, str]]
    digest: str
    reused: bool


def user_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "augsense" / "images"


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
        return True
    except OSError:
        return False


def cache_folder(root: Path, setting: str | None) -> Path | None:
    """Where the decoded cache of the images in ``root`` lives; None when caching is off."""
    if setting is None or setting == "off":
        return None
    if setting == "auto":
        inside = Path(root) / CACHE_NAME
        if _writable(inside):
            return inside
        folder = user_cache_root() / hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:16]
        if _writable(folder):
            return folder
        return None  # nowhere to write: decode into memory as without a cache
    folder = Path(setting)
    if not _writable(folder):
        raise AugsenseError(f"image cache folder {setting!r} cannot be created or written; choose another or 'off'")
    return folder


def cache_key(files: Sequence[str], preprocessing: dict[str, Any], selection: Any) -> str:
    """The name of one decoded set: SHA-256 of the format, preprocessing, file list and chosen subset."""
    text = json.dumps({"format": FORMAT, "preprocessing": preprocessing, "files": list(files), "selection": selection},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _stat(path: Path) -> list[int]:
    """What the index records of a source image: size, mtime_ns, ctime_ns and inode (any change: stale).

    Size and mtime alone miss a file replaced by other pixels of the same size with its mtime kept
    (``cp -p``, ``touch -r``); the ctime cannot be set by users and the inode changes on a replace.
    """
    try:
        info = os.stat(path)
    except OSError:
        return [-1, -1, -1, -1]
    return [int(info.st_size), int(info.st_mtime_ns), int(info.st_ctime_ns), int(info.st_ino)]


def _identity(path: Path) -> dict[str, int]:
    """What the index records of its pixel file: size, mtime_ns, ctime_ns and inode (any change: stale)."""
    info = os.stat(path)
    return {"size": int(info.st_size), "mtime_ns": int(info.st_mtime_ns), "ctime_ns": int(info.st_ctime_ns),
            "inode": int(info.st_ino)}


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` for the block (waits for another builder; dropped by the kernel if we die)."""
    handle = open(path, "a+b")
    try:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            except OSError:  # a file system without flock: builders may race, each still writes whole files
                pass
        yield
    finally:
        handle.close()


def _map(path: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """The pixels file as a tensor backed by a copy-on-write memory map (pages shared until written)."""
    if shape[0] == 0:
        return torch.empty(shape, dtype=torch.uint8)
    array = np.memmap(path, dtype=np.uint8, mode="c", shape=shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.from_numpy(array)


def _open(directory: Path, key: str, paths: Sequence[Path]) -> Decoded | None:
    """The cached set named ``key`` when it exists and its files are unchanged, else None."""
    try:
        index = json.loads((directory / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("format") != FORMAT or index.get("key") != key:
        return None
    try:
        shape = tuple(int(s) for s in index["shape"])
        name = str(index["data"])
        if Path(name).name != name or not (name.startswith(f"{key}-") and name.endswith(".u8")):
            return None  # only a pixel file of this key, inside the cache folder (a crafted index names others)
        data = directory / name
        if not data.is_file():
            return None  # a folder (or nothing) where the pixel file should be
        if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3] or min(shape) < 0 \
                or len(index["rows"]) != shape[0] or (shape[0] and data.stat().st_size != int(np.prod(shape))):
            return None
        if index["pixels"] != _identity(data):
            return None  # the pixel file was edited in place, replaced or copied since the build: stale
        for i, *recorded in index["files"]:
            if not 0 <= i < len(paths) or _stat(paths[i]) != recorded:
                return None  # a file changed (or an older index recorded less of it): stale
        rows = [int(i) for i in index["rows"]]
        failed = [(int(i), str(reason)) for i, reason in index["failed"]]
        digest = str(index["sha256"])
        pixels = _map(data, shape)  # inside the try: a concurrent rebuild may just have removed this file
    except (KeyError, TypeError, ValueError, OSError):
        return None
    return Decoded(pixels, rows, failed, digest, reused=True)


def load_or_build(directory: Path, key: str, paths: Sequence[Path],
                  decode: Callable[[np.ndarray], tuple[list[int], list[tuple[int, str]]]], *, rows: int,
                  size: int) -> Decoded:
    """The decoded set ``key`` from ``directory``, built first (under its lock) when missing or stale.

    ``decode(sink)`` fills ``sink`` (rows, 3, size, size) uint8 and returns the listing index of each
    filled row and the failures (see :func:`augsense.io.images.decode_selection`).
    """
    from augsense.io.images import pixels_sha256

    found = _open(directory, key, paths)
    if found is not None:
        return found
    with _locked(directory / f"{key}.lock"):
        found = _open(directory, key, paths)  # another builder may have finished while we waited
        if found is not None:
            return found
        for left in directory.glob(f".{key}-*.tmp"):  # files of a builder killed mid-way (we hold the lock)
            _remove(left)
        stats = [_stat(path) for path in paths]  # before decoding: a file changed meanwhile makes the cache stale
        build = f"{os.getpid()}-{os.urandom(4).hex()}"
        data = directory / f"{key}-{build}.u8"
        temporary = directory / f".{key}-{build}.u8.tmp"
        shape = (rows, 3, size, size)
        committed = False
        try:
            if rows:
                sink = np.memmap(temporary, dtype=np.uint8, mode="w+", shape=shape)
                filled, failed = decode(sink)
                sink.flush()
                del sink
                os.truncate(temporary, len(filled) * 3 * size * size)
            else:
                filled, failed = [], []
                temporary.write_bytes(b"")
            final = (len(filled), 3, size, size)
            pixels = _map(temporary, final)
            digest = pixels_sha256(pixels)
            _fsync(temporary)
            os.replace(temporary, data)
            touched = sorted(set(filled) | {i for i, _ in failed})
            index = {"format": FORMAT, "key": key, "shape": list(final), "data": data.name,
                     "pixels": _identity(data), "files": [[i, *stats[i]] for i in touched], "rows": filled,
                     "failed": [[i, reason] for i, reason in failed], "sha256": digest}
            staged = directory / f".{key}-{build}.json.tmp"
            staged.write_text(json.dumps(index), encoding="utf-8")
            _fsync(staged)
            previous = _previous_data(directory / f"{key}.json")
            os.replace(staged, directory / f"{key}.json")  # the commit: readers now see the new set
            committed = True
        except OSError as error:
            raise AugsenseError(f"cannot write the decoded image cache in {str(directory)!r}: {error}; free space, "
                                "choose another image_cache folder, or set image_cache = 'off'") from None
        finally:  # interrupted or failed: no half-written or uncommitted file stays behind
            temporary.unlink(missing_ok=True)
            if not committed:
                data.unlink(missing_ok=True)
                (directory / f".{key}-{build}.json.tmp").unlink(missing_ok=True)
        if previous is not None and previous != data.name:
            _remove(directory / previous)  # processes still mapping it keep its pages
        return Decoded(_map(data, final), filled, failed, digest, reused=False)


def _previous_data(index: Path) -> str | None:
    """The pixel file named by the index being replaced: only a ``<key>-….u8`` name inside the cache folder."""
    try:
        value = json.loads(index.read_text(encoding="utf-8")).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    key = index.name[:-len(".json")]
    if not isinstance(value, str) or Path(value).name != value or not (value.startswith(f"{key}-")
                                                                        and value.endswith(".u8")):
        return None
    return value


def _remove(path: Path) -> None:
    """Delete a leftover file; a folder or anything else that cannot be removed is left alone, silently."""
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
    except OSError:
        pass
