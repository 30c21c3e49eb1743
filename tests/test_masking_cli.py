"""`augsense mask` and `augsense single-class` on a small real run; one clear error (exit 2) per bad input."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch
from PIL import Image

from augsense.cli import main


def write_images(root, labelled: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    for i in range(4):
        folder = root / ("1" if i % 2 else "7") if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        array = (torch.rand(40, 48, 3, generator=generator) * 255).to(torch.uint8).numpy()
        Image.fromarray(array).save(folder / f"img{i}.png")


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("mask_cli")
    write_images(root / "images", labelled=True)
    out = root / "run"
    code = main(["run", "--images", str(root / "images"), "--out", str(out), "--model", "resnet18", "--weights", "random", "--layers",
                 "layer1,fc", "--factors", "hue,hflip", "--n", "4", "--batch-size", "16", "--device", "cpu",
                 "--quiet", "--no-report", "--output", "logits"])
    assert code == 0
    return out


SMALL = ["--quantiles", "0.9", "--alphas", "0", "--random", "1", "--no-least", "--no-soft", "--device", "cpu", "--quiet"]


def test_mask_writes_tables(run_dir, capsys):
    code, stdout, _ = run(["mask", run_dir, *SMALL], capsys)
    assert code == 0, stdout
    table = pd.read_parquet(run_dir / "masking.parquet")
    assert set(table.augmentation) == {"clean", "hue", "hflip"}
    assert set(table.kind) == {"none", "guided", "random"}
    assert table[table.kind != "none"].n_units.gt(0).all()
    assert (run_dir / "masking_gap.parquet").exists() and "unmasked top-1" in stdout


def test_single_class_writes_its_table(run_dir, capsys):
    code, stdout, _ = run(["single-class", run_dir, "--device", "cpu"], capsys)
    assert code == 0, stdout
    table = pd.read_parquet(run_dir / "single_class.parquet")
    assert set(table.factor) == {"hue", "hflip"} and set(table.alpha) == {0.0, 1.5}
    assert (table.k == 5).all() and table.candidates.map(len).eq(5).all()
    assert table.threshold.ge(0).all() and "null fence" in stdout
    assert (table.confirmed == (table.mean_jaccard > table.threshold)).all()


def test_single_class_decay_from_the_command_line(run_dir, capsys):
    code, stdout, stderr = run(["single-class", run_dir, "--device", "cpu", "--k", "2", "--decay", "0.5,0.9",
                                "--decay-draws", "2", "--quiet"], capsys)
    assert code == 0, stderr
    decay = pd.read_parquet(run_dir / "class_decay.parquet")
    assert set(decay.factor) == {"hue", "hflip"} and set(decay.kind) == {"none", "guided", "random"}
    assert set(decay[decay.kind == "guided"].q) == {0.5, 0.9} and (decay[decay.kind == "random"].n_draws == 2).all()
    assert decay.share.between(0, 1).all() and "class_decay.parquet" in stdout
    code, _, stderr = run(["single-class", run_dir, "--device", "cpu", "--decay", "x"], capsys)
    assert code == 2 and "--decay expects comma-separated numbers" in stderr


@pytest.mark.parametrize("extra, message", [
    (["--factors", "rotation"], "factor 'rotation' is not in the run"),
    (["--alphas", "-1"], "α must lie in"),
    (["--quantiles", "1.5"], "quantile q must lie in [0, 1]"),
    (["--quantiles", "a,b"], "--quantiles expects comma-separated numbers"),
    (["--quantity", "shapley"], "no 'shapley' map"),
    (["--layers", "layer3"], "layer 'layer3' is not in the run"),
    (["--augmentations", "rotation"], "augmentation 'rotation' is not a factor of the run"),
])
def test_mask_bad_input_is_one_clear_error(run_dir, capsys, extra, message):
    code, _, stderr = run(["mask", run_dir, *SMALL, *extra], capsys)
    assert code == 2
    assert message in stderr and stderr.count("\n") == 1


def test_run_folder_without_maps(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "maps.npz").unlink()
    for command in ("mask", "single-class"):
        code, _, stderr = run([command, broken, "--device", "cpu"], capsys)
        assert code == 2 and "no sensitivity maps" in stderr


def test_images_without_labels(run_dir, tmp_path, capsys):
    write_images(tmp_path / "flat", labelled=False)
    code, _, stderr = run(["mask", run_dir, *SMALL, "--images", tmp_path / "flat"], capsys)
    assert code == 2 and "no labels" in stderr


def test_single_class_bad_k_and_candidates_layer(run_dir, capsys):
    code, _, stderr = run(["single-class", run_dir, "--k", "0"], capsys)
    assert code == 2 and "k must be a positive integer" in stderr
    code, _, stderr = run(["single-class", run_dir, "--candidates-layer", "layer1"], capsys)
    assert code == 2 and "must be the class outputs" in stderr


def test_classifier_output_layer_is_masked_only_when_named(run_dir, capsys):
    code, stdout, _ = run(["mask", run_dir, *SMALL], capsys)
    assert code == 0 and "masked layers: layer1\n" in stdout
    default = pd.read_parquet(run_dir / "masking.parquet")
    code, stdout, _ = run(["mask", run_dir, *SMALL, "--mask-layers", "layer1,fc"], capsys)
    assert code == 0 and "masked layers: layer1, fc\n" in stdout
    named = pd.read_parquet(run_dir / "masking.parquet")
    guided = (default.kind == "guided"), (named.kind == "guided")
    assert default[guided[0]].n_units.max() <= 64 < named[guided[1]].n_units.max()  # layer1 has 64 channels


@pytest.mark.parametrize("command", ["mask", "single-class"])
def test_a_negative_seed_is_one_clear_error(run_dir, capsys, command):
    code, _, stderr = run([command, run_dir, "--device", "cpu", "--seed", "-1"], capsys)
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith("augsense: error: ") and "seed must be a non-negative integer, got -1" in stderr


@pytest.mark.parametrize("command", ["mask", "single-class"])
def test_a_masked_layer_whose_map_is_all_nan_is_refused_naming_layer_and_factor(run_dir, tmp_path, capsys, command):
    """Every unit dead: the soft mask out·M would zero the whole layer (changed = 1.0) instead of masking nothing."""
    import numpy as np

    dead = tmp_path / "dead"
    shutil.copytree(run_dir, dead)
    with np.load(dead / "maps.npz") as stored:
        arrays = {key: stored[key] for key in stored.files}
    assert "layer1/total_order" in arrays
    arrays["layer1/total_order"] = np.full_like(arrays["layer1/total_order"], np.nan)
    np.savez(dead / "maps.npz", **arrays)
    extra = SMALL if command == "mask" else ["--device", "cpu", "--quiet", "--limit-images", "2"]
    code, _, stderr = run([command, dead, *extra], capsys)
    assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("augsense: error: ")
    assert "layer 'layer1'" in stderr and "factor 'hue'" in stderr and "no finite value" in stderr


def test_the_soft_multiplier_refuses_a_map_without_a_finite_value():
    import numpy as np

    from augsense.errors import AugsenseError
    from augsense.probe.masks import soft_multiplier

    with pytest.raises(AugsenseError, match="no finite value"):
        soft_multiplier(np.full((4,), np.nan))
    partly = soft_multiplier(np.array([np.nan, 0.5, 2.0]))
    assert partly.tolist() == [0.0, 0.5, 1.0]
