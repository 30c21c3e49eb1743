"""Stimulus export: files in presentation order, the design table, shuffling, repeats, metadata round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from augsense.analyses.stimuli import StimulusDesign, load_stimulus_design, read_stimulus, to_uint8
from augsense.cli import main
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from planted import PLANTED_CONFIG, planted_images

FACTORS = ["brightness", "saturation", "hflip"]


def config(**changes) -> SensitivityConfig:
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(n=8, **changes)
    return SensitivityConfig(**values)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("stimuli")
    design = StimulusDesign.from_config(config(), images=planted_images(4), size=32, repeats=2, shuffle_seed=5)
    design.export(out)
    return design, out


def test_export_writes_one_png_per_trial_and_a_table_in_presentation_order(exported):
    design, out = exported
    assert design.n_stimuli == 8 * 5 and design.n_trials == 80
    table = pd.read_parquet(out / "design.parquet")
    csv = pd.read_csv(out / "design.csv")
    assert list(csv.columns) == list(table.columns) and len(csv) == len(table)
    for column in ("trial", "file", "stimulus", "repeat", "role"):
        assert csv[column].tolist() == table[column].tolist()
    assert np.allclose(csv["brightness.factor"], table["brightness.factor"])
    assert list(table["trial"]) == list(range(80))
    assert sorted(p.name for p in (out / "stimuli").iterdir()) == [f"{t:06d}.png" for t in range(80)]
    # every stimulus twice, once per repeat, in a shuffled order
    counts = table.groupby("stimulus")["repeat"].agg(sorted)
    assert all(r == [0, 1] for r in counts)
    assert not np.array_equal(table["stimulus"].to_numpy(), np.tile(np.arange(40), 2))
    assert {"block", "base_row", "member", "role", "from_b", "image", "source", "brightness.factor",
            "brightness.active", "saturation.factor", "hflip.active", "order"} <= set(table.columns)


def test_table_rows_describe_the_pick_freeze_groups(exported):
    design, out = exported
    table = pd.read_parquet(out / "design.parquet").sort_values(["stimulus", "repeat"]).drop_duplicates("stimulus")
    assert list(table["role"][:5]) == ["A", "B", "AB_0", "AB_1", "AB_2"]
    assert list(table["from_b"].fillna("")[:5]) == ["", "brightness+saturation+hflip", "brightness", "saturation",
                                                    "hflip"]
    assert (table["stimulus"] == table["base_row"] * 5 + table["member"]).all()
    # within-image mode: a group shares its image; AB_0 takes brightness from B and the rest from A
    assert (table.groupby("base_row")["image"].nunique() == 1).all()
    group = table[table.base_row == 3].set_index("role")
    assert group.loc["AB_0", "brightness.factor"] == pytest.approx(group.loc["B", "brightness.factor"])
    assert group.loc["AB_0", "saturation.factor"] == pytest.approx(group.loc["A", "saturation.factor"])
    assert 0.1 <= table["brightness.factor"].min() and table["brightness.factor"].max() <= 1.0


def test_pngs_hold_the_rendered_stimuli(exported):
    design, out = exported
    table = pd.read_parquet(out / "design.parquet")
    for _, row in table.head(6).iterrows():
        png = read_stimulus(out / row["file"])
        assert torch.equal((png * 255).round().to(torch.uint8), to_uint8(design.render([row["stimulus"]]))[0])


def test_metadata_rebuilds_the_design(exported):
    design, out = exported
    loaded, table = load_stimulus_design(out / "design.csv")
    assert loaded.design == design.design and loaded.players == FACTORS
    assert loaded.repeats == 2 and loaded.shuffle_seed == 5 and loaded.images is None
    assert loaded.presentation().equals(design.presentation())
    with pytest.raises(AugsenseError, match="without its images"):
        loaded.render([0])


def test_damaged_or_mismatched_exports_are_refused(exported, tmp_path):
    design, out = exported
    (tmp_path / "design.csv").write_text(pd.read_csv(out / "design.csv").head(10).to_csv(index=False))
    with pytest.raises(AugsenseError, match="no design.json"):
        load_stimulus_design(tmp_path / "design.csv")
    meta = json.loads((out / "design.json").read_text())
    (tmp_path / "design.json").write_text(json.dumps(meta))
    with pytest.raises(AugsenseError, match="does not match design.json"):
        load_stimulus_design(tmp_path / "design.csv")
    meta["design"]["seed"] = 99
    (tmp_path / "design.json").write_text(json.dumps(meta))
    with pytest.raises(AugsenseError, match="fingerprint"):
        load_stimulus_design(tmp_path / "design.csv")
    with pytest.raises(AugsenseError, match="repeats"):
        StimulusDesign.from_config(config(), images=planted_images(4), size=32, repeats=0)
    with pytest.raises(AugsenseError, match="32 px"):
        StimulusDesign.from_config(config(), images=planted_images(4), size=64)


def test_joint_mode_draws_the_image_from_its_coordinate():
    design = StimulusDesign.from_config(config(image_mode="joint"), images=planted_images(4), size=32)
    table = design.stimulus_table()
    assert design.players == FACTORS + ["image"]
    assert table["image"].nunique() > 1
    a, ab = table[table.role == "A"], table[table.role == "AB_3"]  # AB_3 swaps the image only
    assert not np.array_equal(a["image"].to_numpy(), ab["image"].to_numpy())
    assert np.array_equal(a["brightness.factor"].to_numpy(), ab["brightness.factor"].to_numpy())


def test_cli_exports_from_a_config_and_an_image_folder(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(planted_images(3).pixels):
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    (tmp_path / "run.toml").write_text(f'images = "{folder}"\nfactors = ["brightness", "hflip"]\nn = 4\n'
                                       'estimator = "shapley-exact"\n')
    out = tmp_path / "export"
    assert main(["stimuli", str(tmp_path / "run.toml"), "--out", str(out), "--size", "32", "--resize", "32",
                 "--shuffle", "1"]) == 0
    table = pd.read_csv(out / "design.csv")
    assert len(table) == 4 * 4 and len(list((out / "stimuli").glob("*.png"))) == 16
    assert set(table["role"]) == {"H_0", "H_1", "H_2", "H_3"}
    assert "augsense responses" in capsys.readouterr().out
    assert main(["stimuli", str(tmp_path / "run.toml"), "--out", str(out), "--repeats", "zero"]) == 2
    assert "--repeats expects an integer" in capsys.readouterr().err
