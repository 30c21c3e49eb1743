"""Weights are never random without being asked for, and every run says which weights it used."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

from augsense.cli import main
from augsense.errors import AugsenseError
from augsense.io.models import load_model


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    generator = torch.Generator().manual_seed(0)
    for i in range(3):
        array = (torch.rand(36, 36, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(array).save(root / f"img{i}.png")
    return root


RUN = ["--model", "resnet18", "--layers", "layer1", "--factors", "hue,hflip", "--n", "4", "--batch-size", "16",
       "--device", "cpu", "--quiet", "--no-report"]


def test_torchvision_name_without_weights_is_refused_in_one_line(folder, tmp_path, capsys):
    code = main(["run", "--images", str(folder), "--out", str(tmp_path / "r"), *RUN])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "needs weights" in err and "--weights random" in err
    assert not (tmp_path / "r" / "indices.parquet").exists()


def test_random_weights_come_from_the_run_seed():
    a = load_model("resnet18", weights="random", seed=3)
    b = load_model("resnet18", weights="random", seed=3)
    c = load_model("resnet18", weights="random", seed=4)
    wa, wb, wc = (m.module.conv1.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)
    assert a.weights == "random, seed 3" and a.random_weights


def test_random_weights_do_not_disturb_the_global_generator():
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    load_model("resnet18", weights="random", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_random_run_is_reproducible_recorded_and_warned(folder, tmp_path, capsys):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        code = main(["run", "--images", str(folder), "--out", str(out), *RUN, "--weights", "random", "--seed", "2"])
        err = capsys.readouterr().err
        assert code == 0 and "random weights (random, seed 2)" in err
        outs.append(out)
    first, second = (pd.read_parquet(o / "indices.parquet") for o in outs)
    pd.testing.assert_frame_equal(first, second)
    info = json.loads((outs[0] / "run.json").read_text())
    assert info["model"]["weights"] == "random, seed 2"
    assert any("random weights" in w for w in info["warnings"])


def test_weights_file_is_recorded_with_its_sha256(folder, tmp_path, capsys):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    out = tmp_path / "f"
    assert main(["run", "--images", str(folder), "--out", str(out), *RUN, "--weights", str(path)]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["model"]["weights"] == f"r18.pth sha256:{digest}"
    assert info["warnings"] == [] or not any("random" in w for w in info["warnings"])


def test_embedded_default_records_its_weights_and_refuses_others():
    bundle = load_model()
    assert bundle.weights.startswith("embedded ImageNet weights ") and "sha256:" in bundle.weights
    assert not bundle.random_weights
    with pytest.raises(AugsenseError, match="has its own ImageNet weights"):
        load_model("efficientnet-lite0", weights="random")


def test_few_base_rows_for_many_images_warn(folder, tmp_path, capsys):
    out = tmp_path / "few"
    code = main(["run", "--images", str(folder), "--out", str(out), *RUN, "--weights", "random", "--n", "2"])
    err = capsys.readouterr().err
    assert code == 0 and "n = 2 base rows for 3 images" in err
    info = json.loads((out / "run.json").read_text())
    assert any("only 2 images" in w for w in info["warnings"])


def test_report_shows_weights_warnings_and_out_of_range_indices(folder, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["run", "--images", str(folder), "--out", str(out), *RUN, "--weights", "random"]) == 0
    table = pd.read_parquet(out / "indices.parquet")
    shares = table["quantity"].isin(["first_order", "total_order"]) & ~table["dead"].astype(bool)
    row = table.index[shares][0]
    table.loc[row, ["estimate", "ci_low", "ci_high"]] = [1.3, 1.1, 1.5]  # as a noisy index near 1 might be
    table.to_parquet(out / "indices.parquet")
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "weights random, seed 0" in page
    assert "Warning: the model has random weights" in page
    assert "are estimated below 0 or above 1" in page and "intervals lie wholly outside [0, 1]" in page


def test_result_counts_shares_outside_the_unit_interval():
    from augsense.estimators.results import SensitivityResult

    first = np.array([[0.2, -0.05], [1.2, 0.0], [np.nan, np.nan]])
    result = SensitivityResult(n=8, dead=np.array([False, False, True]), first_order=first,
                               total_order=np.array([[0.3, 1e-9], [1.0 + 1e-9, 0.1], [np.nan, np.nan]]))
    assert result.outside_unit_interval() == (2, 8)


class _Marker:
    """A pickle that would create a file if it were ever unpickled with code allowed."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.path}",)


@pytest.mark.parametrize("kind", ["empty", "text", "whole module", "code", "garbage"])
def test_a_weights_file_that_is_not_a_state_dict_is_refused_in_one_line(folder, tmp_path, capsys, kind):
    import pickle

    path = tmp_path / "bad.pt"
    marker = tmp_path / "executed"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello world\nthese are not weights\n")
    elif kind == "whole module":
        torch.save(torchvision.models.resnet18(weights=None), path)
    elif kind == "code":
        path.write_bytes(pickle.dumps(_Marker(marker)))
    else:
        path.write_bytes(bytes(range(256)) * 3)
    code = main(["run", "--images", str(folder), "--out", str(tmp_path / "r"), *RUN, "--weights", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("augsense: error: cannot read weights file")
    assert "\x1b" not in err and "PyTorch 2.6" not in err and "Traceback" not in err
    if kind == "empty":
        assert "empty" in err
    else:
        assert "not a state dict of tensors" in err and "weights_only=True" in err and "state_dict()" in err
    assert not marker.exists()  # the pickled code never ran
