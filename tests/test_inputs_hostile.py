"""Inputs a careless or hostile user may hand over (class folders, cache files, weights, seeds, dead maps):
each gives the right result or one clear line, never a silent wrong number or a traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from augsense.io.images import list_folder


def _image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)
    return path


# ---- class folders named by an integer -------------------------------------------------------------------------------

def test_an_integer_class_folder_past_the_models_classes_is_unlabelled_with_a_notice(tmp_path):
    _image(tmp_path / "3" / "a.png")
    _image(tmp_path / "1243" / "b.png")
    listing = list_folder(tmp_path, class_names=[f"class{i}" for i in range(1000)])
    labels = {Path(f).name: label for f, label in zip(listing.files, listing.labels)}
    assert labels == {"a.png": 3, "b.png": -1}
    [notice] = listing.notices
    assert "1243" in notice and "1000 classes" in notice and "without a label" in notice


def test_without_a_class_list_an_integer_folder_is_still_its_index(tmp_path):
    _image(tmp_path / "1243" / "b.png")
    listing = list_folder(tmp_path)
    assert listing.labels == [1243] and listing.notices == []


@pytest.mark.parametrize("name", ["²", "９", "1²"])
def test_non_ascii_digits_are_not_class_indices(tmp_path, name):
    _image(tmp_path / name / "a.png")
    listing = list_folder(tmp_path, class_names=[f"class{i}" for i in range(10)])
    assert listing.labels == [-1]
    assert any("name no class" in notice and name in notice for notice in listing.notices)
