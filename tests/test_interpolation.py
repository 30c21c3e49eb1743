"""The model's interpolation (timm's pretrained_cfg) decides the images' resize, in every loader and in the cache key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from augsense.errors import AugsenseError
from augsense.io.images import _preprocessing_key, load_images


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(3):
        (tmp_path / "0").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)).save(tmp_path / "0" / f"{k}.png")
    return tmp_path


def reference(path, size: int, resize: int, mode: TF.InterpolationMode) -> torch.Tensor:
    """One image the plain torchvision way: shorter side to ``resize`` (antialiased), centre crop."""
    tensor = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    return TF.center_crop(TF.resize(tensor, [resize], interpolation=mode, antialias=True), [size, size])


@pytest.mark.parametrize("name,mode", [("bilinear", TF.InterpolationMode.BILINEAR),
                                       ("bicubic", TF.InterpolationMode.BICUBIC)])
@pytest.mark.parametrize("cache", ["off", "auto"])
def test_folder_images_are_resized_with_the_models_interpolation(folder, name, mode, cache):
    images = load_images(str(folder), 32, 40, interpolation=name, cache=cache)
    for source, pixels in zip(images.sources, images.pixels):
        assert torch.equal(torch.as_tensor(pixels), reference(source, 32, 40, mode))


def test_bicubic_and_bilinear_differ_and_are_cached_apart(folder):
    bilinear = load_images(str(folder), 32, 40, cache="auto")
    bicubic = load_images(str(folder), 32, 40, interpolation="bicubic", cache="auto")
    assert not torch.equal(torch.as_tensor(bilinear.pixels), torch.as_tensor(bicubic.pixels))
    again = load_images(str(folder), 32, 40, cache="auto")  # the bilinear entry is still there and right
    assert torch.equal(torch.as_tensor(again.pixels), torch.as_tensor(bilinear.pixels))
    assert "interpolation" not in _preprocessing_key(32, 40)  # bilinear caches of earlier runs stay valid
    assert _preprocessing_key(32, 40, "bicubic")["interpolation"] == "bicubic"


def test_the_bundled_photos_follow_it_too():
    bilinear = load_images("bundled", 32, 36, limit=2)
    bicubic = load_images("bundled", 32, 36, limit=2, interpolation="bicubic")
    assert not torch.equal(bilinear.pixels, bicubic.pixels)


def test_an_unknown_interpolation_is_one_clear_error(folder):
    with pytest.raises(AugsenseError, match="unknown interpolation 'lanczos'"):
        load_images(str(folder), 32, interpolation="lanczos")


def test_a_run_uses_its_bundles_interpolation(folder):
    from types import SimpleNamespace

    from augsense.config import SensitivityConfig
    from augsense.io.images import images_for

    config = SensitivityConfig(images=str(folder), image_cache="off")
    bundle = SimpleNamespace(input_size=32, resize_size=40, class_names=None, interpolation="bicubic")
    images = images_for(config, bundle)
    assert torch.equal(torch.as_tensor(images.pixels[0]),
                       reference(images.sources[0], 32, 40, TF.InterpolationMode.BICUBIC))
