"""``augsense maps``: correlations and replicate-labelled LDA on run folders.

A wide planted network (30 units, ten per factor, each also leaking a little of the other two
factors) is run twice with different design seeds: LDA labelled by the replicate separates the
planted factors. Maps of pure noise with an independent noise replicate stay at chance.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from augsense.analyses.sensitivity import run_sensitivity
from augsense.cli import main
from augsense.commands.maps import map_statistics_of_run
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.io.models import ModelBundle
from test_contrast_run import OneWayReadout, reddish_images

FACTORS = ["brightness", "hue", "hflip"]
TRUTH = np.arange(30) % 3


class WidePlanted(nn.Module):
    """(n, 3, H, W) → 30 units: unit k follows factor k mod 3, plus small leaks of the others."""

    def __init__(self) -> None:
        super().__init__()
        self.signals = OneWayReadout()
        generator = torch.Generator().manual_seed(3)
        scale = torch.tensor([1 / 0.2, 1 / 0.1, 1 / 0.04], dtype=torch.float64)  # rough spread of each signal
        mixing = 0.25 * torch.rand(30, 3, generator=generator, dtype=torch.float64)
        mixing[torch.arange(30), torch.from_numpy(TRUTH)] = 0.6 + 0.4 * torch.rand(30, generator=generator,
                                                                                   dtype=torch.float64)
        self.register_buffer("weights", mixing * scale)
        self.units = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.units((self.signals(x)[:, :3] @ self.weights.T).float())


def wide_run(out, seed: int):
    config = SensitivityConfig(layers=["units"], factors=FACTORS, output="logits", report=False, batch_size=128,
                               device="cpu", n=64, seed=seed,
                               bounds={"brightness": {"factor": [0.1, 0.9]}, "hue": {"shift": [0.2, 0.35]}})
    bundle = ModelBundle(WidePlanted().eval(), "wide", 24, 24, (0.0,) * 3, (1.0,) * 3)
    return run_sensitivity(config, model=bundle, images=reddish_images(12), out_dir=out, progress=False)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    first, second = tmp_path_factory.mktemp("wide0"), tmp_path_factory.mktemp("wide1")
    wide_run(first, 0)
    wide_run(second, 1)
    return first, second


def fake_run(path, maps, cv=None):
    """A minimal run folder holding only maps (as `load_run` reads it)."""
    path.mkdir(parents=True, exist_ok=True)
    units = maps.shape[:-1]
    info = {"players": FACTORS, "layers": {"L": {"unit_shape": list(units), "units": int(np.prod(units))}}}
    (path / "run.json").write_text(json.dumps(info))
    arrays = {"L/total_order": maps}
    if cv is not None:
        arrays["L/cv"] = cv
    np.savez(path / "maps.npz", **arrays)
    return path


def test_planted_maps_separate_by_factor_with_replicate_labels(replicated):
    first, second = replicated
    tables = map_statistics_of_run(first, replicate_dir=second, quantities=["total_order"], n_repeats=4)
    row = tables.lda.iloc[0]
    assert row.accuracy > 0.9 and row.chance == pytest.approx(1 / 3)
    confusion = tables.confusion.pivot(index="true", columns="predicted", values="fraction")
    assert np.all(np.diag(confusion.loc[FACTORS, FACTORS].to_numpy()) > 0.8)
    assert set(tables.projection.columns) >= {"layer", "quantity", "ld1", "ld2", "factor"}
    assert len(tables.projection) == 30


def test_planted_correlations_are_negative_between_specialised_factors(replicated):
    tables = map_statistics_of_run(replicated[0])
    corr = tables.correlations
    units = corr[(corr.scope == "units") & (corr.quantity == "first_order")]
    # additive units: shares sum to ≈ 1, so a unit strong on one factor is weak on the others
    assert len(units) == 3 and units.rho.mean() < -0.2 and units.rho.min() < -0.4
    assert set(corr.scope) == {"units", "cv"}
    assert set(corr.quantity) == {"first_order", "total_order"}
    assert tables.lda.empty and any("replicate" in note for note in tables.notes)


def test_noise_maps_are_at_chance(tmp_path):
    rng = np.random.default_rng(0)
    run = fake_run(tmp_path / "a", rng.uniform(size=(90, 3)), cv=rng.uniform(size=90))
    replicate = fake_run(tmp_path / "b", rng.uniform(size=(90, 3)))
    tables = map_statistics_of_run(run, replicate_dir=replicate)
    row = tables.lda.iloc[0]
    assert abs(row.accuracy - 1 / 3) < 0.15 and row.chance < 0.45
    cv = tables.correlations[tables.correlations.scope == "cv"]
    assert len(cv) == 3 and (cv.p_value > 0.001).all()


def test_per_unit_maps_get_pixelwise_correlations(tmp_path):
    rng = np.random.default_rng(1)
    maps = rng.uniform(size=(12, 4, 4, 3))
    maps[..., 1] = maps[..., 0] + 0.01 * rng.uniform(size=(12, 4, 4))  # factor 2 copies factor 1 pixel by pixel
    tables = map_statistics_of_run(fake_run(tmp_path / "a", maps))
    pixelwise = tables.correlations[tables.correlations.scope == "pixelwise"].set_index(["factor_a", "factor_b"])
    assert pixelwise.loc[("brightness", "hue"), "rho"] > 0.9
    assert abs(pixelwise.loc[("brightness", "hflip"), "rho"]) < 0.3


def test_cli_writes_tables_and_refuses_circular_or_bad_input(replicated, tmp_path, capsys):
    first, second = replicated
    code = main(["maps", str(first), "--replicate", str(second), "--repeats", "2"])
    out = capsys.readouterr().out
    assert code == 0 and "LDA" in out
    for name in ("map_statistics", "map_lda", "map_lda_confusion", "map_lda_projection"):
        assert len(pd.read_parquet(first / f"{name}.parquet"))
    for args, message in [
        ([str(tmp_path)], "not a run folder"),
        ([str(first), "--replicate", str(first)], "independent"),
        ([str(first), "--quantities", "shapley"], "no 'shapley' maps"),
        ([str(first), "--layers", "nope"], "no layer 'nope'"),
        ([str(first), "--replicate", str(second), "--folds", "1"], "--folds ≥ 2"),
    ]:
        code = main(["maps", *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err and err.count("\n") == 1, (args, err)


def test_identical_replicate_is_refused(tmp_path):
    maps = np.random.default_rng(2).uniform(size=(30, 3))
    with pytest.raises(AugsenseError, match="not an independent estimate"):
        map_statistics_of_run(fake_run(tmp_path / "a", maps), replicate_dir=fake_run(tmp_path / "b", maps.copy()))


def test_paper_tables_are_written_beside_ours(tmp_path, capsys):
    """Per-unit maps whose factors have their blob at distinct pixels: the paper LDA separates them (1.0) and
    the per-pixel table is pixel_correlations' own; `--no-paper` writes neither."""
    from augsense.analyses.map_statistics import pixel_correlations

    rng = np.random.default_rng(4)
    maps = 0.05 * rng.uniform(size=(10, 3, 3, 3))
    for j in range(3):
        maps[:, j, j, j] += 1.0
    run = fake_run(tmp_path / "a", maps)
    assert main(["maps", str(run), "--paper-repeats", "2"]) == 0
    assert "paper LDA" in capsys.readouterr().out
    lda = pd.read_parquet(run / "map_lda_paper.parquet")
    assert lda.loc[0, "accuracy"] == 1.0 and lda.loc[0, "n_repeats"] == 2 and lda.loc[0, "n_features"] == 9
    pixel = pd.read_parquet(run / "map_pixel_correlations.parquet").set_index(["factor_a", "factor_b"])
    expected = pixel_correlations(maps, FACTORS)
    assert pixel.loc[("brightness", "hflip"), "rho_mean"] == pytest.approx(expected.rho_mean[0, 2])
    assert pixel.loc[("brightness", "hflip"), "rho_sd"] == pytest.approx(expected.rho_sd[0, 2])
    assert len(pd.read_parquet(run / "map_lda_paper_confusion.parquet")) == 9
    other = fake_run(tmp_path / "b", maps)
    assert main(["maps", str(other), "--no-paper"]) == 0
    assert not (other / "map_lda_paper.parquet").exists() and not (other / "map_pixel_correlations.parquet").exists()
