"""The decoded image cache: built once, reused, rebuilt when stale, safe under concurrent builders,
and shared between processes (a second rank maps the pixels instead of holding a private copy)."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from augsense.analyses.plan import pixels_digest
from augsense.errors import AugsenseError
from augsense.io import image_cache, images as images_module
from augsense.io.images import load_folder


def write_set(root: Path, count: int, side: int = 40, classes: int = 4, fmt: str = "png") -> None:
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / str(i % classes)
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((side, side + 8), Image.BILINEAR).save(folder / f"{i:05d}.{fmt}")


def test_the_cache_is_built_once_then_reused_with_the_same_pixels_and_hash(tmp_path, monkeypatch):
    write_set(tmp_path, 24)
    built = load_folder(tmp_path, 16, cache="auto", per_class=5, seed=1)
    plain = load_folder(tmp_path, 16, cache="off", per_class=5, seed=1)
    assert torch.equal(built.pixels, plain.pixels) and built.sources == plain.sources
    assert built.digest == pixels_digest(plain.pixels) == plain.pixels_sha256()  # the plan's hash, stored
    assert len(list((tmp_path / image_cache.CACHE_NAME).glob("*.json"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("a reused cache decodes nothing")

    monkeypatch.setattr(images_module, "_decode_one", no_decoding)
    again = load_folder(tmp_path, 16, cache="auto", per_class=5, seed=1)
    assert torch.equal(again.pixels, built.pixels) and again.labels.tolist() == built.labels.tolist()
    with pytest.raises(AssertionError, match="decodes nothing"):  # another size is another cache
        load_folder(tmp_path, 20, cache="auto", per_class=5, seed=1)


def test_a_changed_file_makes_the_cache_stale_and_it_is_rebuilt(tmp_path):
    write_set(tmp_path, 8)
    first = load_folder(tmp_path, 16, cache="auto")
    target = Path(first.sources[0])
    time.sleep(0.01)
    Image.new("RGB", (40, 48), (255, 0, 0)).save(target)
    second = load_folder(tmp_path, 16, cache="auto")
    assert second.pixels[0, 0].float().mean() > 250 and not torch.equal(first.pixels[0], second.pixels[0])
    assert torch.equal(first.pixels[1:], second.pixels[1:])
    assert len(list((tmp_path / image_cache.CACHE_NAME).glob("*.u8"))) == 1  # the stale pixels file is gone


def test_broken_files_are_remembered_by_the_cache(tmp_path):
    write_set(tmp_path, 6)
    (tmp_path / "0" / "00000.png").write_bytes(b"\x89PNG broken")
    first = load_folder(tmp_path, 16, cache="auto")
    again = load_folder(tmp_path, 16, cache="auto")
    assert len(first) == len(again) == 5 and dict(again.skipped) == dict(first.skipped)
    assert str(tmp_path / "0" / "00000.png") in dict(again.skipped)


def test_an_unwritable_cache_folder_is_refused_and_auto_falls_back(tmp_path, monkeypatch):
    write_set(tmp_path / "images", 4)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(AugsenseError, match="image cache folder"):
        load_folder(tmp_path / "images", 16, cache=str(blocker / "cache"))
    monkeypatch.setattr(image_cache, "_writable", lambda folder: "user" in str(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user"))
    folder = image_cache.cache_folder(tmp_path / "images", "auto")
    assert folder is not None and folder.parent == tmp_path / "user" / "augsense" / "images"


def _build(root: str, queue) -> None:  # a concurrent builder (a forked process): counts the files it decodes
    from augsense.io import images as module

    decode, calls = module._decode_one, []

    def counted(*args, **kwargs):
        calls.append(1)
        return decode(*args, **kwargs)

    module._decode_one = counted
    images = module.load_folder(root, 16, cache="auto", workers=1)
    queue.put((images.digest, len(images), len(calls)))


def test_concurrent_builders_decode_once_and_agree(tmp_path):
    write_set(tmp_path, 60)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [context.Process(target=_build, args=(str(tmp_path), queue)) for _ in range(3)]
    for worker in workers:
        worker.start()
    results = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert len({(digest, count) for digest, count, _ in results}) == 1 and results[0][1] == 60
    assert sorted(calls for _, _, calls in results) == [0, 0, 60]  # one built it, the others waited and mapped it
    cache = tmp_path / image_cache.CACHE_NAME
    assert len(list(cache.glob("*.u8"))) == 1 and not list(cache.glob(".*tmp"))
    index = json.loads(next(cache.glob("*.json")).read_text())
    assert index["sha256"] == results[0][0] and index["shape"][0] == 60


SECOND_RANK = textwrap.dedent("""
    import json, sys
    def status():
        fields = {}
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) * 1024
        return fields
    def touch(images):  # read every pixel, as a run's batches do over time
        return sum(int(images.pixels[i:i + 256].sum(dtype=torch.int64)) for i in range(0, len(images), 256))
    import torch
    from augsense.io.images import load_folder
    root, size = sys.argv[1], int(sys.argv[2])
    stages = {"before": status()}
    shared = load_folder(root, size, cache="auto", workers=2)
    stages["loaded"] = status()
    touch(shared)
    stages["touched"] = status()
    private = load_folder(root, size, cache="off", workers=2)  # the same set decoded into this process's memory
    touch(private)
    stages["private"] = status()
    print(json.dumps({"bytes": shared.pixels.numel(), **stages}))
""")


def second_rank(root: Path, size: int) -> dict:
    """Memory of a second process (a second rank): before, after mapping the cache, after reading every pixel,
    and after decoding the same set again without the cache (bytes of /proc/self/status)."""
    done = subprocess.run([sys.executable, "-c", SECOND_RANK, str(root), str(size)], capture_output=True, text=True,
                          check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_two_ranks_share_one_decoded_cache(tmp_path):
    """75 MB of pixels: a second process mapping the cache holds no private copy of them."""
    write_set(tmp_path, 500, side=128, classes=8, fmt="jpg")
    size = 224
    load_folder(tmp_path, size, cache="auto")  # the first rank builds the cache
    memory = second_rank(tmp_path, size)
    set_bytes = memory["bytes"]
    assert set_bytes == 500 * 3 * size * size

    def growth(key: str, stage: str, since: str = "before") -> int:
        return memory[stage][key] - memory[since][key]

    assert growth("VmRSS", "loaded") < 0.1 * set_bytes, memory  # mapping reads nothing yet
    assert growth("RssAnon", "touched") < 0.1 * set_bytes, memory  # read in full: file-backed shared pages only
    # without the cache the same process holds the whole set privately: the measurement tells the two apart
    assert growth("RssAnon", "private", since="touched") > 0.9 * set_bytes, memory


def test_an_interrupted_build_leaves_no_file_and_the_next_run_builds(tmp_path, monkeypatch):
    write_set(tmp_path, 6)
    decode = images_module._decode_one
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return decode(*args, **kwargs)

    monkeypatch.setattr(images_module, "_decode_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_folder(tmp_path, 16, cache="auto", workers=1)
    cache = tmp_path / image_cache.CACHE_NAME
    assert sorted(p.suffix for p in cache.iterdir()) == [".lock"]  # no pixels, no index, no temporary file
    monkeypatch.setattr(images_module, "_decode_one", decode)
    assert len(load_folder(tmp_path, 16, cache="auto")) == 6


@pytest.mark.parametrize("craft", ["outside file", "absolute path", "other key", "wrong shape", "rows mismatch"])
def test_a_crafted_index_is_never_mapped_and_the_cache_is_rebuilt(tmp_path, craft):
    """An index naming a file outside the cache folder, another key's file, or a shape that does not fit is stale."""
    import json

    images = tmp_path / "images"
    write_set(images, 6)
    first = load_folder(images, 16, cache="auto")
    folder = images / image_cache.CACHE_NAME
    index_path = next(folder.glob("*.json"))
    index = json.loads(index_path.read_text())
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(256)) * (int(np.prod(index["shape"])) // 256 + 1))
    secret.write_bytes(secret.read_bytes()[:int(np.prod(index["shape"]))])  # the size the index claims
    if craft == "outside file":
        index["data"] = "../../secret.bin"
    elif craft == "absolute path":
        index["data"] = str(secret)
    elif craft == "other key":
        other = folder / ("0" * 32 + "-1-2.u8")
        other.write_bytes(secret.read_bytes())
        index["data"] = other.name
    elif craft == "wrong shape":
        n, c, h, w = index["shape"]
        index["shape"] = [n, c, h * w, 1]
    else:
        index["rows"] = index["rows"][:-1]
    index_path.write_text(json.dumps(index))
    again = load_folder(images, 16, cache="auto")
    assert torch.equal(again.pixels, first.pixels)  # rebuilt from the images, not read from the crafted file


@pytest.mark.parametrize("edit", ["in place", "in place, mtime restored", "replaced by a copy", "index of an older format"])
def test_a_pixel_file_changed_behind_the_index_is_stale_and_rebuilt(tmp_path, monkeypatch, edit):
    """The stored SHA-256 is not recomputed: the index's record of the pixel file (size, mtime, ctime, inode)
    must match, so an edit of the same size is caught even with its modification time put back."""
    import os

    write_set(tmp_path, 8)
    first = load_folder(tmp_path, 16, cache="auto")
    expected = first.pixels.clone()  # first.pixels maps the file: an edit in place shows through it
    assert torch.equal(expected, load_folder(tmp_path, 16, cache="off").pixels)
    folder = tmp_path / image_cache.CACHE_NAME
    index_path = next(folder.glob("*.json"))
    index = json.loads(index_path.read_text())
    data = folder / index["data"]
    before = os.stat(data)
    time.sleep(0.01)
    if edit == "index of an older format":
        del index["pixels"]
        index_path.write_text(json.dumps(index))
    elif edit == "replaced by a copy":
        copy = data.with_name(data.name + ".copy")
        copy.write_bytes(bytes(255 - b for b in data.read_bytes()))
        os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(copy, data)
    else:
        with open(data, "r+b") as handle:  # same size: the old check (size only) passed this
            head = handle.read(4096)
            handle.seek(0)
            handle.write(bytes(255 - b for b in head))
        if edit == "in place, mtime restored":
            os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(data).st_size == before.st_size
    decoded = []
    decode = images_module._decode_one
    monkeypatch.setattr(images_module, "_decode_one", lambda *a, **k: decoded.append(1) or decode(*a, **k))
    again = load_folder(tmp_path, 16, cache="auto")
    assert decoded and torch.equal(again.pixels, expected)  # rebuilt from the images, not the edited pixels
    assert again.digest == pixels_digest(expected)
    decoded.clear()
    assert torch.equal(load_folder(tmp_path, 16, cache="auto").pixels, expected) and not decoded  # reused again


@pytest.mark.parametrize("how", ["cp -p", "touch -r"])
def test_an_image_replaced_with_its_size_and_mtime_kept_is_decoded_again(tmp_path, how):
    """Size and mtime are not enough: the ctime (users cannot set it) and inode of every source image are recorded."""
    import os
    import shutil

    images = tmp_path / "images"
    write_set(images, 8)
    first = load_folder(images, 16, cache="auto")
    target = Path(first.sources[0])
    before = target.stat()
    # other pixels, the same byte count: a plain red PNG padded to the old length (bytes after IEND are ignored)
    replacement = tmp_path / "replacement.png"
    Image.new("RGB", (40, 48), (255, 0, 0)).save(replacement)
    data = replacement.read_bytes()
    assert len(data) <= before.st_size
    replacement.write_bytes(data + b"\0" * (before.st_size - len(data)))
    time.sleep(0.01)
    if how == "cp -p":
        os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
        shutil.copy2(replacement, target)
    else:
        target.write_bytes(replacement.read_bytes())
        os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = target.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    second = load_folder(images, 16, cache="auto")
    assert second.pixels[0, 0].float().mean() > 250  # the new pixels, not the cached old ones
    assert second.digest != first.digest and torch.equal(second.pixels[1:], first.pixels[1:])


def test_an_index_of_the_older_file_record_is_rebuilt_once(tmp_path, monkeypatch):
    write_set(tmp_path, 6)
    first = load_folder(tmp_path, 16, cache="auto")
    index_path = next((tmp_path / image_cache.CACHE_NAME).glob("*.json"))
    index = json.loads(index_path.read_text())
    index["files"] = [entry[:3] for entry in index["files"]]  # [i, size, mtime] as older versions wrote
    index_path.write_text(json.dumps(index))
    decoded = []
    decode = images_module._decode_one
    monkeypatch.setattr(images_module, "_decode_one", lambda *a, **k: decoded.append(1) or decode(*a, **k))
    assert torch.equal(load_folder(tmp_path, 16, cache="auto").pixels, first.pixels) and decoded
    decoded.clear()
    assert torch.equal(load_folder(tmp_path, 16, cache="auto").pixels, first.pixels) and not decoded


@pytest.mark.parametrize("where", ["data names a folder", "a folder at the data file's name", "leftover tmp folder",
                                   "data names the index"])
def test_folders_in_the_cache_are_passed_over_without_a_traceback(tmp_path, where):
    write_set(tmp_path, 6)
    first = load_folder(tmp_path, 16, cache="auto")
    folder = tmp_path / image_cache.CACHE_NAME
    index_path = next(folder.glob("*.json"))
    key = index_path.stem
    index = json.loads(index_path.read_text())
    if where == "data names a folder":
        (folder / f"{key}-dir.u8").mkdir()
        (folder / f"{key}-dir.u8" / "keep").write_bytes(b"")
        index["data"] = f"{key}-dir.u8"
        index["files"] = []  # stale, so the build replaces this index and removes its "previous" data
    elif where == "a folder at the data file's name":
        data = folder / index["data"]
        data.unlink()
        data.mkdir()
    elif where == "leftover tmp folder":
        (folder / f".{key}-1-x.u8.tmp").mkdir()
        index["files"] = []
        index["rows"] = []
    else:
        index["data"] = index_path.name
        index["rows"] = []
    index_path.write_text(json.dumps(index))
    again = load_folder(tmp_path, 16, cache="auto")
    assert torch.equal(again.pixels, first.pixels)
    assert index_path.is_file()
    assert torch.equal(load_folder(tmp_path, 16, cache="auto").pixels, first.pixels)
