"""Image files a hostile or unlucky user may hand over, crafted here as real files: each gives the
right pixels or is skipped with a one-line reason (the rules are in augsense.io.images and docs/scale.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import augsense.io.images as images_module
from augsense.io.images import MAX_ASPECT, load_dataset, load_folder
from test_hostile import png_claiming  # a few hundred bytes of PNG claiming width × height pixels

SIZE = 32


def save(image: Image.Image, path: Path, **options) -> Path:
    image.save(path, **options)
    return path


def loaded(folder: Path, size: int = SIZE, resize: int | None = None) -> dict[str, torch.Tensor]:
    result = load_folder(folder, size, resize)
    return {Path(source).name: pixels for source, pixels in zip(result.sources, result.pixels)}


def reasons(folder: Path) -> dict[str, str]:
    return {Path(path).name: reason for path, reason in load_folder(folder, SIZE).skipped}


# ---- size: decoding and the resized copy are both bounded -------------------------------------------------------

def test_a_300000_by_8_png_loads_its_centre_without_a_huge_resized_copy(tmp_path, monkeypatch):
    strip = np.zeros((8, 300_000, 3), np.uint8)
    strip[:, :100_000] = (255, 0, 0)
    strip[:, 100_000:200_000] = (0, 200, 0)  # the centre, the only part a centre crop can show
    strip[:, 200_000:] = (0, 0, 255)
    path = save(Image.fromarray(strip), tmp_path / "strip.png")
    assert path.stat().st_size < 20_000  # a few KB on disk …
    resized: list[int] = []
    original = images_module.TF.resize

    def recording(tensor, *args, **kwargs):
        out = original(tensor, *args, **kwargs)
        resized.append(out.numel())
        return out

    monkeypatch.setattr(images_module.TF, "resize", recording)
    pixels = loaded(tmp_path, 224, 256)["strip.png"]
    assert pixels.shape == (3, 224, 224)
    assert (pixels[0] == 0).all() and (pixels[1] == 200).all() and (pixels[2] == 0).all()
    # … that used to be resized to 256 × 9 600 000 × 3 bytes (7.4 GB); now at most MAX_ASPECT × 256² pixels
    assert resized == [3 * 256 * MAX_ASPECT * 256]


def test_a_moderate_panorama_is_resized_whole_as_before(tmp_path, monkeypatch):
    """Images up to MAX_ASPECT:1 are not cropped before resizing (their pixels are as before)."""
    rng = np.random.default_rng(0)
    save(Image.fromarray(rng.integers(0, 256, (40, 160, 3), dtype=np.uint8)), tmp_path / "pano.png")
    shapes: list[tuple[int, ...]] = []
    original = images_module.TF.resize
    monkeypatch.setattr(images_module.TF, "resize",
                        lambda t, *a, **k: shapes.append(tuple(t.shape)) or original(t, *a, **k))
    loaded(tmp_path)
    assert shapes == [(3, 40, 160)]


@pytest.mark.parametrize("width, height", [(9000, 9000), (300_000, 300)])
def test_a_header_claiming_more_than_67_megapixels_is_skipped_before_decoding(tmp_path, width, height):
    (tmp_path / "bomb.png").write_bytes(png_claiming(width, height))
    save(Image.new("RGB", (16, 16), (10, 20, 30)), tmp_path / "ok.png")
    reason = reasons(tmp_path)["bomb.png"]
    megapixels = round(width * height / 1e6)
    assert reason == (f"unreadable: too large to decode: {width}×{height} = {megapixels} megapixels, over the limit of "
                      "67 (decompression bomb guard): downscale it first")


def test_a_header_beyond_pillows_own_limit_gets_the_same_kind_of_reason(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_claiming(30_000, 30_000))
    save(Image.new("RGB", (16, 16)), tmp_path / "ok.png")
    reason = reasons(tmp_path)["bomb.png"]
    assert reason.startswith("unreadable: too large to decode (") and "limit is 67 megapixels" in reason


def test_an_extreme_aspect_tensor_from_a_dataset_is_cropped_before_resizing(monkeypatch):
    strip = torch.zeros(3, 8, 100_000, dtype=torch.uint8)
    strip[1, :, 40_000:60_000] = 200
    shapes: list[tuple[int, ...]] = []
    original = images_module.TF.resize
    monkeypatch.setattr(images_module.TF, "resize",
                        lambda t, *a, **k: shapes.append(tuple(t.shape)) or original(t, *a, **k))
    result = load_dataset([strip], SIZE)
    assert result.pixels.shape == (1, 3, SIZE, SIZE) and (result.pixels[0, 1] == 200).all()
    assert shapes == [(3, 8, MAX_ASPECT * 8)]  # not the 8 × 100 000 strip


# ---- orientation ----------------------------------------------------------------------------------------------

def exif_jpeg(path: Path, orientation: int) -> Path:
    """A landscape 64×32 JPEG, left half red, right half blue, with an EXIF orientation tag."""
    array = np.zeros((32, 64, 3), np.uint8)
    array[:, :32] = (255, 0, 0)
    array[:, 32:] = (0, 0, 255)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    return save(image, path, exif=exif, quality=95)


@pytest.mark.parametrize("orientation, top, bottom", [
    (6, "red", "blue"),   # rotate 90° clockwise to display: the left edge becomes the top
    (8, "blue", "red"),   # rotate 90° counter-clockwise: the right edge becomes the top
])
def test_exif_orientation_is_applied(tmp_path, orientation, top, bottom):
    exif_jpeg(tmp_path / "rotated.jpg", orientation)
    pixels = loaded(tmp_path)["rotated.jpg"].int()
    colour = {"red": 0, "blue": 2}
    assert pixels[colour[top], 2].min() > 200 and pixels[colour[top], -3].max() < 50
    assert pixels[colour[bottom], -3].min() > 200 and pixels[colour[bottom], 2].max() < 50


def test_orientation_1_and_no_exif_leave_the_image_as_stored(tmp_path):
    exif_jpeg(tmp_path / "upright.jpg", 1)
    pixels = loaded(tmp_path)["upright.jpg"].int()
    assert pixels[0, :, 2].min() > 200 and pixels[2, :, -3].min() > 200  # red on the left, blue on the right


# ---- bit depth and floats ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["png", "tif"])
@pytest.mark.parametrize("value, expected", [(1000, 4), (0, 0), (32768, 128), (65535, 255)])
def test_16_bit_images_are_scaled_by_their_bit_depth_not_their_maximum(tmp_path, fmt, value, expected):
    save(Image.fromarray(np.full((24, 24), value, np.uint16)), tmp_path / f"sixteen.{fmt}")
    pixels = loaded(tmp_path)[f"sixteen.{fmt}"]
    assert Image.open(tmp_path / f"sixteen.{fmt}").mode.startswith("I;16")
    assert (pixels == expected).all(), pixels.unique()  # a uniform 1000 is dark (4), not white


def test_a_32_bit_integer_tiff_is_scaled_by_its_declared_depth(tmp_path):
    save(Image.fromarray(np.full((24, 24), 2 ** 30, np.int32)), tmp_path / "wide.tif")
    assert Image.open(tmp_path / "wide.tif").mode == "I"
    assert (loaded(tmp_path)["wide.tif"] == 128).all()  # 2**30 of 2**31 - 1


def test_a_float_tiff_in_0_1_keeps_its_values(tmp_path):
    ramp = np.tile(np.linspace(0.0, 1.0, 32, dtype=np.float32), (32, 1))
    ramp[:, :8] = 0.5
    save(Image.fromarray(ramp), tmp_path / "ramp.tif")
    save(Image.fromarray(np.full((32, 32), 0.25, np.float32)), tmp_path / "quarter.tif")
    result = loaded(tmp_path)
    assert (result["quarter.tif"] == 64).all()  # 0.25 · 255 = 63.75 → 64, not black
    ramp_pixels = result["ramp.tif"][0].int()
    assert (ramp_pixels[:, :8] == 128).all() and int(ramp_pixels[0, -1]) == 255
    expected = np.rint(np.linspace(0.0, 1.0, 32) * 255)[8:]
    assert np.abs(ramp_pixels[0, 8:].numpy() - expected).max() <= 1


def test_float_values_just_outside_0_1_are_clipped(tmp_path):
    almost = np.full((16, 16), 0.5, np.float32)
    almost[:, :8] = 1.0 + 0.5 / 255
    almost[:, 8:] = -0.5 / 255
    save(Image.fromarray(almost), tmp_path / "overshoot.tif")
    pixels = loaded(tmp_path, 16)["overshoot.tif"][0]
    assert (pixels[:, :7] == 255).all() and (pixels[:, 9:] == 0).all()


def test_float_images_far_outside_0_1_or_not_finite_are_skipped_with_their_range(tmp_path):
    save(Image.fromarray(np.full((16, 16), 200.0, np.float32)), tmp_path / "scaled255.tif")
    signed = np.full((16, 16), -0.5, np.float32)
    save(Image.fromarray(signed), tmp_path / "signed.tif")
    nan = np.full((16, 16), 0.5, np.float32)
    nan[3, 3] = np.nan
    save(Image.fromarray(nan), tmp_path / "nan.tif")
    save(Image.new("RGB", (16, 16)), tmp_path / "ok.png")
    found = reasons(tmp_path)
    assert found["scaled255.tif"] == ("unreadable: float pixels range over [200, 200], not [0, 1]: float images are "
                                      "read as intensities in [0, 1]; rescale it to [0, 1] or save it as 8- or 16-bit")
    assert "range over [-0.5, -0.5]" in found["signed.tif"]
    assert found["nan.tif"] == "unreadable: float pixels include NaN or Inf"


# ---- symlinks ----------------------------------------------------------------------------------------------------

def test_symlinks_leaving_the_image_folder_are_skipped_and_listed(tmp_path):
    folder, outside = tmp_path / "images", tmp_path / "private"
    (folder / "cats").mkdir(parents=True)
    (outside / "more").mkdir(parents=True)
    save(Image.new("RGB", (16, 16), (1, 2, 3)), folder / "cats" / "own.png")
    save(Image.new("RGB", (16, 16), (9, 9, 9)), outside / "secret.png")
    save(Image.new("RGB", (16, 16), (8, 8, 8)), outside / "more" / "other.png")
    (folder / "cats" / "leak.png").symlink_to(outside / "secret.png")
    (folder / "leaked_folder").symlink_to(outside / "more", target_is_directory=True)
    (folder / "cats" / "alias.png").symlink_to(folder / "cats" / "own.png")  # inside: followed
    (folder / "escape.png").symlink_to(Path("..") / "private" / "secret.png")  # relative, still outside
    result = load_folder(folder, SIZE)
    assert sorted(Path(s).name for s in result.sources) == ["alias.png", "own.png"]
    found = {Path(path).name: reason for path, reason in result.skipped}
    secret = str((outside / "secret.png").resolve())
    assert found == {
        "leak.png": f"symlink to a file outside the image folder ({secret}): not followed",
        "escape.png": f"symlink to a file outside the image folder ({secret}): not followed",
        "leaked_folder": f"symlink to a folder outside the image folder ({(outside / 'more').resolve()}): not followed",
    }


def test_an_image_folder_that_is_itself_a_symlink_still_loads(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    save(Image.new("RGB", (16, 16)), real / "a.png")
    (tmp_path / "link").symlink_to(real, target_is_directory=True)
    result = load_folder(tmp_path / "link", SIZE)
    assert len(result) == 1 and result.skipped == []
