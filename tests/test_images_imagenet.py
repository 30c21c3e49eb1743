"""ImageNet and Places365 folders as distributed give labels, a clean top-1, and seeded balanced subsets.

A synthetic Kaggle-style ImageNet tree (``LOC_synset_mapping.txt`` and ``LOC_val_solution.csv`` beside
``ILSVRC/Data/CLS-LOC/{train,val}``), the devkit's ground truth with ``meta.mat``, and a Places365
tree; images of class c are coloured by c, and a planted model reads the colour, so top-1 is 100 %
exactly when every label is right.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from augsense.analyses.sensitivity import run_sensitivity
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.io.images import list_folder, load_folder, select
from augsense.io.models import ModelBundle

WNIDS = ["n01440764", "n01443537", "n01484850"]  # tench, goldfish, great white shark: indices 0, 1, 2
COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]


def photo(c: int, i: int) -> Image.Image:
    """A class-c photo: its colour plus a little per-image noise."""
    rng = np.random.default_rng(100 * c + i)
    array = np.clip(np.array(COLOURS[c])[None, None] + rng.integers(-20, 20, (30, 40, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def kaggle_tree(root: Path, per_class: int = 4, val: int = 6) -> Path:
    """root/LOC_synset_mapping.txt, root/LOC_val_solution.csv, root/ILSVRC/Data/CLS-LOC/{train/<wnid>,val}."""
    (root / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius "
                                                 "auratus\nn01484850 great white shark, white shark\n")
    data = root / "ILSVRC" / "Data" / "CLS-LOC"
    for c, wnid in enumerate(WNIDS):
        (data / "train" / wnid).mkdir(parents=True)
        for i in range(per_class):
            photo(c, i).save(data / "train" / wnid / f"{wnid}_{i}.JPEG")
    (data / "val").mkdir(parents=True)
    rows = ["ImageId,PredictionString"]
    for i in range(1, val + 1):
        c = (i * 2) % 3
        photo(c, 50 + i).save(data / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
        rows.append(f"ILSVRC2012_val_{i:08d},{WNIDS[c]} 10 20 30 40 {WNIDS[c]} 1 2 3 4")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")
    return data


class ColourNet(nn.Module):
    """Logits = the channel means: the class of the dominant colour (layer ``pool``)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = self.pool(x).flatten(1)
        return torch.cat([means, torch.zeros(len(x), self.classes - 3, device=x.device)], dim=1)


def colour_bundle(names: list[str] | None = None) -> ModelBundle:
    return ModelBundle(ColourNet().eval(), "colour", 16, 18, (0.0,) * 3, (1.0,) * 3, names)


def test_wordnet_folders_are_labelled_by_the_mapping_file_four_folders_up(tmp_path):
    data = kaggle_tree(tmp_path)
    images = load_folder(data / "train", 16)
    assert images.labels is not None and images.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert images.label_names[0] == "tench, Tinca tinca" and not images.notices


def test_the_flat_val_folder_is_labelled_by_loc_val_solution(tmp_path):
    data = kaggle_tree(tmp_path)
    images = load_folder(data / "val", 16)
    expected = [(i * 2) % 3 for i in range(1, 7)]
    assert images.labels.tolist() == expected and images.skipped == []


def test_a_run_on_imagenet_layouts_prints_a_clean_top1_line(tmp_path):
    from augsense.commands.run import print_summary

    data = kaggle_tree(tmp_path)
    for folder in ("train", "val"):
        config = SensitivityConfig(model="colour", layers=["pool"], factors=["hflip"], n=32, batch_size=64,
                                   device="cpu", report=False, image_cache="off")
        run = run_sensitivity(config, model=colour_bundle(), images=str(data / folder), progress=False)
        assert run.clean_accuracy == 1.0  # every label right: the colour model gets them all
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            print_summary(run, None)
        assert "top-1 accuracy on the unaugmented labelled images: 100.0%" in printed.getvalue()


def test_a_plain_filename_label_file_and_the_devkit_ground_truth(tmp_path):
    from scipy.io import savemat

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(1, 5):
        photo(i % 3, i).save(flat / f"ILSVRC2012_val_{i:08d}.JPEG")
    (tmp_path / "val.txt").write_text("".join(f"ILSVRC2012_val_{i:08d}.JPEG {i % 3}\n" for i in range(1, 5)))
    images = load_folder(flat, 16, label_files=[str(tmp_path / "val.txt")])
    assert images.labels.tolist() == [1, 2, 0, 1]
    # the devkit: ILSVRC2012 ids are not the class indices; meta.mat maps them to WordNet IDs (sorted = index)
    devkit = tmp_path / "devkit" / "data"
    devkit.mkdir(parents=True)
    ilsvrc_ids = {"n01484850": 1, "n01440764": 2, "n01443537": 3}
    synsets = np.array([(ilsvrc_ids[w], w, 0) for w in WNIDS],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    savemat(str(devkit / "meta.mat"), {"synsets": synsets})
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(
        f"{ilsvrc_ids[WNIDS[i % 3]]}\n" for i in range(1, 5)))
    images = load_folder(flat, 16, label_files=[str(devkit / "ILSVRC2012_validation_ground_truth.txt")])
    assert images.labels.tolist() == [1, 2, 0, 1]


def test_places365_class_folders_and_flat_val(tmp_path):
    categories = ["/a/airfield", "/a/apartment_building/outdoor", "/b/bakery/shop"]
    (tmp_path / "categories_places365.txt").write_text("".join(f"{c} {i}\n" for i, c in enumerate(categories)))
    train = tmp_path / "data_256"
    for i, category in enumerate(categories):
        folder = train / category.strip("/")
        folder.mkdir(parents=True)
        photo(i, 0).save(folder / "00000001.jpg")
    (train / "z" / "zoo").mkdir(parents=True)
    photo(0, 9).save(train / "z" / "zoo" / "00000001.jpg")
    images = load_folder(train, 16)
    labels = dict(zip((Path(s).parent.name for s in images.sources), images.labels.tolist()))
    assert labels == {"airfield": 0, "outdoor": 1, "shop": 2, "zoo": -1}
    assert len(images.notices) == 1 and "z/zoo" in images.notices[0] and "not in top-1" in images.notices[0]
    val = tmp_path / "val_256"
    val.mkdir()
    for i in range(1, 4):
        photo(i - 1, 5).save(val / f"Places365_val_{i:08d}.jpg")
    (tmp_path / "places365_val.txt").write_text("".join(f"Places365_val_{i:08d}.jpg {i - 1}\n" for i in range(1, 4)))
    assert load_folder(val, 16).labels.tolist() == [0, 1, 2]
    # a folder of just the leaf names (airfield/) is matched too
    leaf = tmp_path / "leaf"
    (leaf / "airfield").mkdir(parents=True)
    photo(0, 1).save(leaf / "airfield" / "x.jpg")
    assert load_folder(leaf, 16, label_files=[str(tmp_path / "categories_places365.txt")]).labels.tolist() == [0]


def test_wordnet_folders_without_a_mapping_file_are_refused_saying_what_is_needed(tmp_path):
    for c, wnid in enumerate(WNIDS):
        (tmp_path / "train" / wnid).mkdir(parents=True)
        photo(c, 0).save(tmp_path / "train" / wnid / "a.JPEG")
    with pytest.raises(AugsenseError, match="LOC_synset_mapping.txt.*torchvision ships ImageNet's class names"):
        load_folder(tmp_path / "train", 16)


def test_unmatched_class_folders_are_reported_not_dropped(tmp_path):
    for name in ("tench", "cats", "dogs"):
        (tmp_path / name).mkdir()
        photo(0, 0).save(tmp_path / name / "a.png")
    images = load_folder(tmp_path, 16, class_names=["tench", "goldfish"])
    assert len(images) == 3 and images.labels.tolist() == [-1, -1, 0]
    assert "2 class folder(s)" in images.notices[0] and "cats, dogs" in images.notices[0]


def per_class_folder(root: Path, sizes: dict[str, int]) -> None:
    for c, (name, count) in enumerate(sizes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            photo(c % 3, i).save(root / name / f"{i:03d}.png")


def test_per_class_is_balanced_seeded_and_replaces_broken_files(tmp_path):
    per_class_folder(tmp_path, {"0": 9, "1": 7, "2": 2})
    (tmp_path / "1" / "003.png").write_bytes(b"\x89PNG broken")
    listing = list_folder(tmp_path)
    first = load_folder(tmp_path, 16, per_class=5, seed=3)
    again = load_folder(tmp_path, 16, per_class=5, seed=3)
    other = load_folder(tmp_path, 16, per_class=5, seed=4)
    assert first.sources == again.sources and torch.equal(first.pixels, again.pixels)
    assert first.sources != other.sources
    assert np.bincount(first.labels.numpy()).tolist() == [5, 5, 2]  # class 2 has only 2: all of them
    assert any("fewer than per_class" in note for note in first.notices)
    broken = listing.files.index(tmp_path / "1" / "003.png")
    seed = next(seed for seed in range(50) if broken in _chosen(select(listing, per_class=5, seed=seed)))
    drawn = load_folder(tmp_path, 16, per_class=5, seed=seed)  # the broken file was drawn: skipped and replaced
    assert str(listing.files[broken]) in dict(drawn.skipped) and np.bincount(drawn.labels.numpy()).tolist() == [5, 5, 2]
    # with limit too: a random limit of the per-class subset
    limited = load_folder(tmp_path, 16, per_class=5, limit=6, seed=3)
    assert len(limited) == 6 and set(limited.sources) <= set(first.sources)


def _chosen(selection) -> set[int]:
    return {index for queue, wanted in zip(selection.queues, selection.wanted) for index in queue[:wanted]}


def test_limit_images_is_a_seeded_random_subset_not_the_first_files(tmp_path):
    per_class_folder(tmp_path, {"0": 10, "1": 10})
    picks = [load_folder(tmp_path, 16, limit=5, seed=seed).sources for seed in range(4)]
    assert all(len(p) == 5 for p in picks) and len({tuple(p) for p in picks}) > 1
    assert load_folder(tmp_path, 16, limit=5, seed=1).sources == picks[1]
    assert any(Path(s).parent.name == "1" for p in picks for s in p)  # not just the first files in sorted order


def test_per_class_needs_classes(tmp_path):
    photo(0, 0).save(tmp_path / "a.png")
    with pytest.raises(AugsenseError, match="per_class needs a class"):
        load_folder(tmp_path, 16, per_class=2)
    with pytest.raises(AugsenseError, match="per_class must be"):
        SensitivityConfig(per_class=0)


def test_stimulus_export_draws_the_same_subset_as_the_run(tmp_path):
    from augsense.analyses.stimuli import StimulusDesign
    from augsense.io.images import images_for

    per_class_folder(tmp_path / "images", {"0": 6, "1": 6, "2": 6})
    config = SensitivityConfig(images=str(tmp_path / "images"), per_class=2, limit_images=5, seed=7, factors=["hflip"],
                               n=8, image_cache="off")
    stimuli = StimulusDesign.from_config(config, size=16, resize=18)
    run_images = images_for(config, colour_bundle())
    assert stimuli.image_sources == run_images.sources and len(run_images) == 5


def test_all_1000_wordnet_folders_without_a_mapping_are_numbered_in_sorted_order(tmp_path):
    wnids = [f"n{10_000_000 + 37 * i:08d}" for i in range(1000)]
    for wnid in reversed(wnids):
        (tmp_path / wnid).mkdir()
        (tmp_path / wnid / "a.JPEG").write_bytes(b"")  # listing reads no pixels
    listing = list_folder(tmp_path)
    assert listing.labels == list(range(1000)) and listing.label_names[:2] == wnids[:2]


@pytest.mark.parametrize("content, message", [
    (b"garbage,,,\n", "expected the header 'ImageId,PredictionString'"),
    (b"ImageId,PredictionString\nILSVRC2012_val_00000001,\xff\xfe\n", "cannot read label file"),
])
def test_a_malformed_ground_truth_file_is_one_clear_error(tmp_path, content, message):
    data = kaggle_tree(tmp_path)
    (tmp_path / "LOC_val_solution.csv").write_bytes(content)
    with pytest.raises(AugsenseError, match=message):
        load_folder(data / "val", 16)


# --- which label file labels a folder: the nearest, said aloud ----------------------------------------------


def test_a_stray_label_file_higher_up_is_not_mixed_with_the_folders_own(tmp_path, capsys):
    """The nearest folder with a label file wins; a file further up (another data set's) is not used with it."""
    from augsense.io import labels as labels_module

    labels_module._SAID.clear()
    (tmp_path / "imagenet").mkdir()
    data = kaggle_tree(tmp_path / "imagenet")
    val = data / "val"
    # the folder's own class list, one level above val, in another class order; no ground truth beside it
    (data / "LOC_synset_mapping.txt").write_text("n01484850 great white shark\nn01443537 goldfish\nn01440764 tench\n")
    listing = list_folder(val)
    # before: the ground truth 3 folders up was combined with this class list, labelling every flat file;
    # now the search stops at CLS-LOC, which has no ground truth, so the flat files are unlabelled (and said so)
    assert listing.labels == [-1] * 6
    assert listing.label_files == [f"labels from {data / 'LOC_synset_mapping.txt'} (found 1 folder above the image "
                                   f"folder {str(val)!r})"]
    err = capsys.readouterr().err
    assert f"augsense: labels from {data / 'LOC_synset_mapping.txt'} (found 1 folder above" in err
    assert "--label-files" in err and str(tmp_path / "imagenet" / "LOC_val_solution.csv") not in err


def test_the_label_files_used_are_printed_once_and_recorded_in_run_json(tmp_path, capsys):
    from augsense.io import labels as labels_module
    from augsense.io.results import load_run

    labels_module._SAID.clear()
    data = kaggle_tree(tmp_path)
    config = SensitivityConfig(model="colour", layers=["pool"], factors=["hflip"], n=32, batch_size=64,
                               device="cpu", report=False, image_cache="off")
    run_sensitivity(config, model=colour_bundle(), images=str(data / "val"), progress=False, out_dir=tmp_path / "run")
    line = (f"labels from {tmp_path / 'LOC_synset_mapping.txt'}, {tmp_path / 'LOC_val_solution.csv'} (found 4 "
            f"folders above the image folder {str(data / 'val')!r})")
    err = capsys.readouterr().err
    assert err.count(f"augsense: {line}") == 1, err
    assert load_run(tmp_path / "run").info["images"]["label_files"] == [line]
    explicit = load_folder(data / "val", 16, label_files=[str(tmp_path / "LOC_synset_mapping.txt"),
                                                          str(tmp_path / "LOC_val_solution.csv")])
    assert explicit.label_files[0].endswith("(given in label_files)") and explicit.labels is not None


def test_clean_top1_counts_only_labelled_images_and_does_not_copy_them(monkeypatch):
    """A partially labelled set: accuracy over the labelled images, read from the whole set batch by batch
    (``ImageSet.labelled`` would copy the pixels of a memory-mapped cache)."""
    from augsense.analyses.sensitivity import clean_top1
    from augsense.io.images import ImageSet

    pixels = torch.stack([torch.full((3, 4, 4), 40 * i, dtype=torch.uint8) for i in range(5)])
    images = ImageSet(pixels, torch.tensor([0, -1, 2, -1, 0]), [f"img{i}" for i in range(5)])

    class ImageIndexModulo3(nn.Module):  # predicts class (image number mod 3), read from the grey level
        def forward(self, x):
            number = torch.round(x[:, 0].mean((1, 2)) * 255 / 40).long()
            return nn.functional.one_hot(number % 3, 3).float()

    bundle = ModelBundle(ImageIndexModulo3(), "mod3", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    monkeypatch.setattr(ImageSet, "labelled", lambda self: pytest.fail("clean_top1 copied the labelled images"))
    # image 0: predicted 0, label 0; image 2: 2 vs 2; image 4: 1 vs 0 -> 2 of 3, in batches of 1, 2 and 5
    for batch_size in (1, 2, 5):
        assert clean_top1(bundle, images, torch.device("cpu"), batch_size) == pytest.approx(2 / 3)
    assert clean_top1(bundle, ImageSet(pixels, torch.full((5,), -1), images.sources), torch.device("cpu"), 2) is None
