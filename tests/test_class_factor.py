"""The class and partition players: the design picks a pool and a class, then an image within them.

Planted images carry their class in the red channel, their pool in the blue one and an image
value in green whose mean is the same in every class and pool; a planted network reads the three
channel means. So the red unit depends on the class alone (S_class = 1, S_image = 0), the green
unit on the image within its class alone and the blue one on the pool.

The image player is nested in the class player (the same image coordinate names another image in
another class), so the class's first-order index is the between-class share and the image's total
index the within-class share: red S1_class = 1, ST_image = 0; green S1_class = 0, ST_image = 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from augsense.analyses.sensitivity import run_sensitivity
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.factors import FactorSpace
from augsense.factors.strata import ImageStrata
from augsense.io.images import ImageSet
from augsense.io.models import ModelBundle

CLASSES = 4
GREEN = (40, 100, 160, 220)  # every class and pool holds one image of each: equal class means


class ChannelMeans(nn.Module):
    """(n, 3, H, W) → (n, 3) channel means, exposed as layer ``means``."""

    def __init__(self) -> None:
        super().__init__()
        self.means = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.means(x.mean(dim=(2, 3)))


def bundle() -> ModelBundle:
    return ModelBundle(ChannelMeans().eval(), "channel-means", 16, 16, (0.0,) * 3, (1.0,) * 3, None)


def images(pool: int = 0, order_seed: int = 0) -> ImageSet:
    """CLASSES × len(GREEN) flat images: red = class, green = image value, blue = pool; labels = class."""
    rng = np.random.default_rng(order_seed)
    rows = [(c, g) for c in range(CLASSES) for g in GREEN]
    rows = [rows[i] for i in rng.permutation(len(rows))]  # classes interleaved in the set
    pixels = torch.zeros(len(rows), 3, 16, 16, dtype=torch.uint8)
    for i, (c, g) in enumerate(rows):
        pixels[i, 0], pixels[i, 1], pixels[i, 2] = 30 + 50 * c, g, 60 + 120 * pool
    labels = torch.tensor([c for c, _ in rows])
    return ImageSet(pixels, labels, [f"planted:{pool}:{i}" for i in range(len(rows))])


def near(run, quantity: str, unit: int, player: int, value: float) -> None:
    """The estimate lies within 0.12 of ``value`` and its interval covers it (Sobol' estimates at N = 512)."""
    estimate = getattr(run.result, quantity)[unit, player]
    low, high = getattr(run.result, quantity + "_ci")[:, unit, player]
    assert abs(estimate - value) < 0.12 and low - 1e-9 <= value <= high + 1e-9, (quantity, unit, player, estimate,
                                                                                 low, high)


def config(**changes) -> SensitivityConfig:
    values = dict(model="channel-means", layers=["means"], factors=["hflip"], output="logits", report=False,
                  batch_size=256, device="cpu", image_mode="joint", n=512, image_cache="off")
    values.update(changes)
    return SensitivityConfig(**values)


def test_the_class_player_takes_the_variance_between_classes_and_the_image_player_the_rest():
    run = run_sensitivity(config(class_factor=True), model=bundle(), images=images(), progress=False)
    assert run.players == ["hflip", "class", "image"]
    total = run.result.total_order
    red, green = 0, 1
    near(run, "first_order", red, 1, 1.0)
    assert abs(total[red, 2]) < 1e-6  # no image within a class moves the red mean
    near(run, "first_order", green, 1, 0.0)
    near(run, "total_order", green, 2, 1.0)
    assert np.abs(total[:2, 0]).max() < 1e-6  # a flip moves no channel mean


def test_without_the_class_player_the_image_player_takes_everything():
    run = run_sensitivity(config(), model=bundle(), images=images(), progress=False)
    assert run.players == ["hflip", "image"]
    near(run, "first_order", 0, 1, 1.0)


def test_strata_choose_each_class_uniformly_then_each_image_within_it():
    pixels = torch.zeros(7, 3, 8, 8, dtype=torch.uint8)
    labels = torch.tensor([2, 0, 2, 2, 0, 5, 2])  # classes 0: 2 images, 2: 4 images, 5: 1 image
    strata = ImageSet(pixels, labels, [str(i) for i in range(7)]).strata()
    assert strata.classes == ["label:0", "label:2", "label:5"]
    grid = (torch.arange(12, dtype=torch.float64) + 0.5) / 12  # a 12 × 12 grid of (u_class, u_image)
    u_class, u_image = grid.repeat_interleave(12), grid.repeat(12)
    chosen = strata.choose(None, u_class, u_image)
    counts = np.bincount(chosen.numpy(), minlength=7)
    # each class gets 48 of the 144 rows, shared equally by its images
    assert counts.tolist() == [12, 24, 12, 12, 24, 48, 12]
    assert set(labels[chosen].tolist()) == {0, 2, 5}


def write_pool(root: Path, pool: int) -> None:
    pool_images = images(pool, order_seed=pool)
    for i in range(len(pool_images)):
        label = int(pool_images.labels[i])
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        array = pool_images.pixels[i].permute(1, 2, 0).numpy()
        Image.fromarray(array).save(folder / f"{pool}_{i:03d}.png")


def test_the_partition_player_chooses_the_pool_from_a_second_folder(tmp_path):
    write_pool(tmp_path / "val", 0)
    write_pool(tmp_path / "train", 1)
    run = run_sensitivity(config(class_factor=True, images_partition=str(tmp_path / "train"), image_cache="auto"),
                          model=bundle(), images=str(tmp_path / "val"), progress=False)
    assert run.players == ["hflip", "partition", "class", "image"]
    assert run.images.pools is not None and run.images.pools.tolist().count(1) == CLASSES * len(GREEN)
    total = run.result.total_order
    red, green, blue = 0, 1, 2
    near(run, "first_order", blue, 1, 1.0)
    assert np.abs(total[blue, 2:]).max() < 1e-6  # class and image leave the pool's blue alone
    near(run, "first_order", red, 2, 1.0)
    assert abs(total[red, 3]) < 1e-6
    near(run, "first_order", green, 2, 0.0)
    near(run, "total_order", green, 3, 1.0)
    assert "+partition+class" in run.plan.entries["image_mode"] and "strata" in run.plan.entries["images"]


def test_a_class_missing_from_one_pool_is_refused_by_name():
    one, two = images(0), images(1)
    keep = two.labels != 3
    pixels = torch.cat([one.pixels, two.pixels[keep]])
    labels = torch.cat([one.labels, two.labels[keep]])
    pools = torch.cat([torch.zeros(len(one), dtype=torch.long), torch.ones(int(keep.sum()), dtype=torch.long)])
    both = ImageSet(pixels, labels, [str(i) for i in range(len(labels))], pools=pools)
    space = FactorSpace(["hflip"], image_mode="joint", image_factors=["partition", "class"])
    u = torch.rand(8, space.n_coords)
    with pytest.raises(AugsenseError, match="pool 1 has no image of class 'label:3'"):
        space.image_index(u, both.strata())


def test_the_players_need_joint_mode_and_classes():
    with pytest.raises(AugsenseError, match="image_mode = 'joint'"):
        SensitivityConfig(class_factor=True)
    with pytest.raises(AugsenseError, match="image_mode='joint'"):
        FactorSpace(["hflip"], image_factors=["class"])
    space = FactorSpace(["hflip"], image_mode="joint", image_factors=["class"])
    unlabelled = ImageSet(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), None, ["a", "b", "c"])
    with pytest.raises(AugsenseError, match="class for every image"):
        space.image_index(torch.rand(4, space.n_coords), unlabelled.strata())
    with pytest.raises(AugsenseError, match="strata"):
        space.image_index(torch.rand(4, space.n_coords), 3)
    again = FactorSpace.from_dict(space.to_dict())
    assert again.players == ["hflip", "class", "image"] and again.image_factors == ("class",)
    assert ImageStrata.single(5).choose(None, None, torch.tensor([0.0, 0.99])).tolist() == [0, 4]
