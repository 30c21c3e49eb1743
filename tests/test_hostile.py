"""Hostile input gets a defined behaviour: odd images are converted, broken ones skipped and listed,
loops terminate, NaN/Inf layers and out-of-memory are reported with advice, never a traceback."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from augsense.analyses import sensitivity
from augsense.analyses.sensitivity import is_out_of_memory, run_sensitivity
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.io.images import load_folder
from augsense.probe.hooks import ActivationProbe
from planted import PLANTED_CONFIG, planted_bundle, planted_images

SIZE = 32


def photo(mode: str = "RGB", size: tuple[int, int] = (40, 48), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (size[1], size[0]), dtype=np.uint16))
    return rgb.convert(mode)


def encoded(image: Image.Image, format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


GOOD = {
    "grey.png": lambda: encoded(photo("L"), "PNG"),
    "cmyk.jpg": lambda: encoded(photo("CMYK"), "JPEG"),
    "rgba.png": lambda: encoded(photo("RGBA"), "PNG"),
    "sixteen.png": lambda: encoded(photo("I;16"), "PNG"),
    "palette.gif": lambda: encoded(photo("P"), "GIF"),
    "binary.bmp": lambda: encoded(photo("1"), "BMP"),
    "wide.png": lambda: encoded(photo("RGB", (300, 9)), "PNG"),
}
BROKEN = {
    "truncated.jpg": lambda: encoded(photo(), "JPEG")[:200],
    "garbage.png": lambda: b"\x89PNG\r\n\x1a\n" + os.urandom(64),
    "empty.jpg": lambda: b"",
    "tiny.png": lambda: encoded(photo("RGB", (4, 4)), "PNG"),
    "bomb.png": lambda: png_claiming(30000, 30000),
    "text.jpg": lambda: b"this is not a photo",
}


def test_odd_images_are_converted_and_broken_ones_skipped_with_a_reason(tmp_path):
    for name, make in {**GOOD, **BROKEN}.items():
        (tmp_path / name).write_bytes(make())
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_folder(tmp_path, SIZE)
    assert sorted(Path(s).name for s in images.sources) == sorted(GOOD)
    assert images.pixels.shape == (len(GOOD), 3, SIZE, SIZE) and images.pixels.dtype == torch.uint8
    sixteen = images.pixels[[Path(s).name for s in images.sources].index("sixteen.png")]
    assert int(sixteen.max()) > 200  # 16-bit scaled to 8 bits, not clipped to black or white
    reasons = {Path(path).name: reason for path, reason in images.skipped}
    assert set(reasons) == set(BROKEN) | {"notes.txt"}
    assert "too small" in reasons["tiny.png"] and reasons["notes.txt"] == "not an image file"
    assert all(reason.startswith("unreadable") for name, reason in reasons.items() if name not in ("notes.txt",))


def test_a_folder_of_only_broken_files_is_refused_naming_one(tmp_path):
    for name, make in BROKEN.items():
        (tmp_path / name).write_bytes(make())
    with pytest.raises(AugsenseError, match="no readable images.*skipped"):
        load_folder(tmp_path, SIZE)


def test_symlink_loops_terminate_without_duplicates(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.png").write_bytes(encoded(photo(), "PNG"))
    (tmp_path / "a" / "b" / "loop").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "a" / "self").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "a" / "dangling.png").symlink_to(tmp_path / "missing.png")
    images = load_folder(tmp_path, SIZE)
    assert len(images) == 1
    assert [Path(p).name for p, _ in images.skipped] == ["dangling.png"]


def many_files(root: Path, count: int, broken_every: int) -> int:
    """Write count tiny PNGs in 10 class folders, every broken_every-th truncated; return the broken count."""
    good = encoded(photo("RGB", (10, 10)), "PNG")
    broken = 0
    for i in range(count):
        folder = root / str(i % 10)
        folder.mkdir(exist_ok=True)
        bad = i % broken_every == broken_every - 1
        broken += bad
        (folder / f"{i:05d}.png").write_bytes(good[: len(good) // 2] if bad else good)
    return broken


@pytest.mark.parametrize("count", [2_000, pytest.param(10_000, marks=pytest.mark.slow)])
def test_a_large_folder_with_one_percent_broken_loads_the_rest(tmp_path, count):
    broken = many_files(tmp_path, count, broken_every=100)
    images = load_folder(tmp_path, 16)
    assert len(images) == count - broken and len(images.skipped) == broken == count // 100
    assert images.labels is not None and set(images.labels.tolist()) == set(range(10))
    assert images.pixels.shape[1:] == (3, 16, 16)


# ---- the run ----------------------------------------------------------------------------------------------------

def planted_config(**changes) -> SensitivityConfig:
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(n=32, batch_size=20, checkpoint_every=0)
    values.update(changes)
    return SensitivityConfig(**values)


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_layer_that_outputs_nan_or_inf_is_named(bad):
    bundle = planted_bundle()

    def poison(module, args, output):
        output = output.clone()
        output[:, 2] = torch.where(output[:, 2] > 0, torch.full_like(output[:, 2], bad), output[:, 2])
        return output

    bundle.module.readout.register_forward_hook(poison)
    with pytest.raises(AugsenseError, match=r"layer 'readout' .*NaN or Inf"):
        run_sensitivity(planted_config(), model=bundle, images=planted_images(), progress=False)


def record_forwards(monkeypatch, fits: int | None = None) -> list[int]:
    """Patch the probe to record the images of each forward pass; passes above ``fits`` run out of CUDA memory."""
    original = ActivationProbe.__call__
    seen: list[int] = []

    def recorded(self, inputs):
        seen.append(inputs.shape[0])
        if fits is not None and inputs.shape[0] > fits:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, inputs)

    monkeypatch.setattr(ActivationProbe, "__call__", recorded)
    return seen


def assert_same_indices(run, reference) -> None:
    for quantity in ("first_order", "total_order"):
        np.testing.assert_allclose(getattr(run.result, quantity), getattr(reference.result, quantity), rtol=1e-10,
                                   atol=1e-12, equal_nan=True)


def test_out_of_memory_halves_the_forward_chunk_and_gives_the_same_indices(monkeypatch):
    # n = 128: blocks of 4 rows × 5 = 20 images, the batch size, also where designs keep >= 32 blocks
    reference = run_sensitivity(planted_config(n=128), model=planted_bundle(), images=planted_images(), progress=False)
    seen = record_forwards(monkeypatch, fits=5)
    run = run_sensitivity(planted_config(n=128), model=planted_bundle(), images=planted_images(), progress=False)
    assert seen[:3] == [20, 10, 5] and max(seen[3:]) <= 5  # halved once, then kept small
    assert_same_indices(run, reference)


def test_the_cpu_forward_takes_at_most_cpu_forward_images_and_gives_the_same_indices(monkeypatch):
    # batch 20 below the cap: one 20-image pass per group; with the cap at 8, passes of 8, 8, 4 and the same design
    reference = run_sensitivity(planted_config(n=128), model=planted_bundle(), images=planted_images(), progress=False)
    seen = record_forwards(monkeypatch)
    monkeypatch.setattr(sensitivity, "CPU_FORWARD_IMAGES", 8)
    run = run_sensitivity(planted_config(n=128), model=planted_bundle(), images=planted_images(), progress=False)
    assert max(seen) == 8 and seen[:3] == [8, 8, 4] and sum(seen) == 128 * 5
    assert run.design == reference.design
    assert sensitivity.forward_images(512, torch.device("cuda")) == 512  # the cap is the CPU's
    assert_same_indices(run, reference)


def test_out_of_memory_with_one_image_fails_with_advice(monkeypatch):
    def never_fits(self, inputs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 123456789 bytes")

    monkeypatch.setattr(ActivationProbe, "__call__", never_fits)
    with pytest.raises(AugsenseError, match="out of memory on cpu even with one image.*--reduction mean"):
        run_sensitivity(planted_config(), model=planted_bundle(), images=planted_images(), progress=False)


def test_other_runtime_errors_are_not_mistaken_for_out_of_memory(monkeypatch):
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))

    def broken(self, inputs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(ActivationProbe, "__call__", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        run_sensitivity(planted_config(), model=planted_bundle(), images=planted_images(), progress=False)


@pytest.mark.parametrize("n", [2 ** 27, 2 ** 30, 2 ** 40])
def test_a_huge_n_is_refused_before_any_work_with_the_reason(n):
    with pytest.raises(AugsenseError, match=r"^n = \d+ is beyond the largest base sample, 2\*\*26 = 67108864, which "
                                            r"already takes .*forward passes.*; n = 2\*\*14 gives"):
        planted_config(n=n)
    assert planted_config(n=2 ** 26).n == 2 ** 26  # the bound itself is accepted


@pytest.mark.parametrize("value", [-5, -1e-9, float("nan"), float("inf"), float("-inf")])
def test_checkpoint_every_that_would_silently_turn_checkpoints_off_is_refused(value):
    with pytest.raises(AugsenseError, match=r"^checkpoint_every = \S+ must be a finite number of seconds ≥ 0, e\.g\. "
                                            r"120; 0 turns checkpoints off$"):
        planted_config(checkpoint_every=value)


def test_checkpoint_every_zero_is_the_one_way_to_turn_checkpoints_off(tmp_path, capsys):
    assert planted_config(checkpoint_every=0).checkpoint_every == 0
    assert planted_config(checkpoint_every=1e-9).checkpoint_every == 1e-9
    (tmp_path / "run.toml").write_text("checkpoint_every = -5\n")
    with pytest.raises(AugsenseError, match="checkpoint_every = -5"):  # the same check from a TOML file
        SensitivityConfig.from_toml(tmp_path / "run.toml")
    from augsense.cli import main

    for value in ("-5", "nan", "inf"):  # and from the command line: one line, nothing run or written
        assert main(["run", f"--checkpoint-every={value}", "--out", str(tmp_path / "out")]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("augsense: error: checkpoint_every = ")
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())  # nothing written (the --out check may create the folder)
