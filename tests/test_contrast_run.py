"""The contrast run on a one-directional planted network: exactly the planted (factor, unit) pairs.

Factors: brightness with factor in [0.1, 0.9] (every draw darkens; no clipping), hue with a shift
in [0.2, 0.35] turn (every draw moves reddish images towards green), hflip (all images are
brighter on the left). Units of ``OneWayReadout``:

- 0, mean HSV value V = max(R, G, B): brightness lowers it; hue keeps V exactly; flips keep means;
- 1, mean chromaticity (R − G)/(R + G + B): hue lowers it on reddish images; brightness cancels;
- 2, left-minus-right share of V: hflip makes it negative; brightness cancels, hue keeps V;
- 3, a constant (dead: zero-variance flag, NaN effect size, never significant).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from statsmodels.stats.multitest import multipletests
from torch import nn

from augsense.analyses.contrast import CONTRAST_COLUMNS, draw_single_factor, run_contrast, summarise_contrast
from augsense.cli import main
from augsense.config import SensitivityConfig
from augsense.factors import get_factor
from augsense.io.images import ImageSet
from augsense.io.models import ModelBundle

PLANTED_PAIRS = {("brightness", 0), ("hue", 1), ("hflip", 2)}
FACTORS = ["brightness", "hue", "hflip"]


class OneWayReadout(nn.Module):
    """(n, 3, H, W) RGB → (n, 4) units that each move one way under exactly one factor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.double()  # float64 readout: only the augmentations' own float32 rounding remains
        value = x.amax(dim=1)
        width = x.shape[-1]
        side = torch.ones(width, dtype=x.dtype)
        side[width // 2:] = -1.0
        r, g, b = x.unbind(dim=1)
        chroma = ((r - g) / (r + g + b).clamp_min(1e-4)).mean(dim=(1, 2))
        asymmetry = (value * side).sum(dim=(1, 2)) / value.sum(dim=(1, 2)).clamp_min(1e-6)
        constant = torch.ones(len(x), dtype=x.dtype)
        return torch.stack([value.mean(dim=(1, 2)), chroma, asymmetry, constant], dim=1)


class OneWayNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.readout = OneWayReadout()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.readout(x).float())


def one_way_bundle() -> ModelBundle:
    return ModelBundle(OneWayNet().eval(), "one-way", 24, 24, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def reddish_images(n: int = 16, size: int = 24, seed: int = 0) -> ImageSet:
    """Reddish, smooth images, each brighter on its left half: (n, 3, size, size) uint8."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.tensor([0.75, 0.3, 0.25]).view(1, 3, 1, 1)
    noise = nn.functional.interpolate(torch.rand(n, 3, 3, 3, generator=generator), size=(size, size),
                                      mode="bilinear", align_corners=False)
    ramp = torch.linspace(0.15, -0.15, size).view(1, 1, 1, size)
    images = (base + 0.15 * (noise - 0.5) + ramp).clamp(0.05, 0.95)
    return ImageSet((images * 255).round().to(torch.uint8), None, [f"reddish:{i}" for i in range(n)])


def contrast_config(**changes) -> SensitivityConfig:
    values = dict(layers=["readout"], factors=FACTORS, output="logits", report=False, batch_size=64, device="cpu",
                  bounds={"brightness": {"factor": [0.1, 0.9]}, "hue": {"shift": [0.2, 0.35]}})
    values.update(changes)
    return SensitivityConfig(**values)


@pytest.fixture(scope="module")
def planted_contrast(tmp_path_factory):
    out = tmp_path_factory.mktemp("contrast")
    return run_contrast(contrast_config(), model=one_way_bundle(), images=reddish_images(), out_dir=out, draws=6,
                        progress=False)


def test_exactly_the_planted_pairs_are_significant_after_fdr(planted_contrast):
    table = planted_contrast.table
    flagged = {(row.factor, int(row.unit)) for row in table[table.significant].itertuples()}
    assert flagged == PLANTED_PAIRS
    for factor, unit in PLANTED_PAIRS:
        row = table[(table.factor == factor) & (table.unit == unit)].iloc[0]
        assert row.mean_difference < 0 and row.rank_biserial == pytest.approx(-1.0)
        assert row.effect_size_ci_high < 0 and row.test == "wilcoxon"
    dead = table[table.unit == 3]
    assert dead.zero_variance.all() and dead.effect_size.isna().all() and not dead.significant.any()
    assert (dead.p_value == 1.0).all()  # all differences zero: zsplit gives R+ = R−


def test_pairs_and_draws_per_factor(planted_contrast):
    assert planted_contrast.draws == {"brightness": 6, "hue": 6, "hflip": 1}  # on/off: one draw per image
    table = planted_contrast.table
    assert (table[table.factor == "hflip"].n_pairs == 16).all()
    assert (table[table.factor == "hue"].n_pairs == 96).all()
    assert list(table.columns) == CONTRAST_COLUMNS
    counts = summarise_contrast(table)
    assert counts.loc["readout"].to_dict() == {"brightness": 1, "hue": 1, "hflip": 1}


def test_fdr_is_benjamini_yekutieli_over_all_factors_and_units(planted_contrast):
    table = planted_contrast.table
    tested = table.p_value.notna()
    reject, q, _, _ = multipletests(table.p_value[tested], alpha=0.05, method="fdr_by")
    np.testing.assert_allclose(table.q_value[tested], q, rtol=1e-12)
    np.testing.assert_array_equal(table.significant[tested], reject)
    assert table.q_value[~tested].isna().all()


def test_wilcoxon_and_rank_biserial_match_scipy_and_a_direct_computation():
    """Recompute the hue contrast's differences by hand and compare every rank statistic."""
    bundle, images = one_way_bundle(), reddish_images()
    config = contrast_config(factors=["hue"], bounds={"hue": {"shift": [-0.3, 0.3]}})  # two-sided effects
    run = run_contrast(config, model=bundle, images=images, draws=3, progress=False)
    factor = get_factor("hue", shift=(-0.3, 0.3))
    u = draw_single_factor(factor, len(images), 3, config.seed).reshape(len(images) * 3, -1)
    clean = images.batch(torch.arange(len(images)))
    with torch.inference_mode():
        treated = bundle.module.readout(factor.apply_unit(clean.repeat_interleave(3, dim=0), u))
        control = bundle.module.readout(clean).repeat_interleave(3, dim=0)
    differences = (treated - control).double().numpy()
    result = run.results["hue"]["readout"]
    for unit in range(3):
        d = differences[:, unit].astype(np.float32).astype(np.float64)
        reference = scipy.stats.wilcoxon(d, zero_method="zsplit", method="asymptotic")
        assert result.wilcoxon_statistic[unit] == pytest.approx(reference.statistic, rel=1e-10)
        assert result.p_wilcoxon[unit] == pytest.approx(reference.pvalue, rel=1e-8, abs=1e-300)
        ranks = scipy.stats.rankdata(np.abs(d))
        r_plus = ranks[d > 0].sum() + 0.5 * ranks[d == 0].sum()
        r_minus = ranks[d < 0].sum() + 0.5 * ranks[d == 0].sum()
        assert result.rank_biserial[unit] == pytest.approx((r_plus - r_minus) / ranks.sum(), abs=1e-12)
        assert result.mean_difference[unit] == pytest.approx(differences[:, unit].mean(), rel=1e-5, abs=1e-9)


def test_contrast_folder_is_written_and_reproducible(planted_contrast):
    out = planted_contrast.out_dir
    stored = pd.read_parquet(out / "contrast.parquet")
    pd.testing.assert_frame_equal(stored, planted_contrast.table.reset_index(drop=True))
    assert (out / "contrast.json").exists()
    again = run_contrast(contrast_config(batch_size=7), model=one_way_bundle(), images=reddish_images(), draws=6,
                         progress=False)
    np.testing.assert_allclose(again.table.mean_difference, stored.mean_difference, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(again.table.significant, stored.significant)


def test_per_unit_maps_use_moment_statistics_only():
    class Spatial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, kernel_size=8, stride=8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).mean(dim=(2, 3))

    torch.manual_seed(0)
    bundle = ModelBundle(Spatial().eval(), "spatial", 24, 24, (0.0,) * 3, (1.0,) * 3)
    run = run_contrast(contrast_config(layers=["conv"], reduction="none", factors=["brightness"],
                                       bounds={"brightness": {"factor": [0.1, 0.9]}}), model=bundle,
                       images=reddish_images(8), draws=4, progress=False)
    assert run.rank_layers == [] and run.unit_shapes["conv"] == (2, 3, 3)
    table = run.table
    assert len(table) == 18 and (table.test == "t").all() and table.rank_biserial.isna().all()
    assert table.significant.all()  # darkening moves every linear unit with a non-zero weight sum


def test_bad_input_is_refused_with_a_message():
    from augsense.errors import AugsenseError

    with pytest.raises(AugsenseError, match="draws"):
        run_contrast(contrast_config(), model=one_way_bundle(), images=reddish_images(4), draws=0, progress=False)
    with pytest.raises(AugsenseError, match="max-difference-mib"):
        run_contrast(contrast_config(), model=one_way_bundle(), images=reddish_images(4), max_difference_bytes=100,
                     progress=False)
    with pytest.raises(AugsenseError, match="unknown layer"):
        run_contrast(contrast_config(layers=["nope"]), model=one_way_bundle(), images=reddish_images(4),
                     progress=False)


@pytest.mark.parametrize("args, message", [
    (["--draws", "0"], "draws"),
    (["--alpha", "1.5"], "alpha"),
    (["--layers", "nope"], "unknown layer"),
    (["--factors", "wobble"], "wobble"),
])
def test_cli_bad_input_exits_2_with_one_line(args, message, tmp_path, capsys):
    code = main(["contrast", "--model", "resnet18", "--weights", "random", "--layers", "layer1", "--limit-images", "2", "--device", "cpu",
                 "--quiet", "--out", str(tmp_path / "c"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_cli_contrast_writes_the_table(tmp_path, capsys):
    code = main(["contrast", "--model", "resnet18", "--weights", "random", "--layers", "layer1,fc", "--factors", "brightness,hflip",
                 "--limit-images", "3", "--draws", "2", "--batch-size", "8", "--device", "cpu", "--quiet",
                 "--output", "logits", "--out", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert code == 0
    table = pd.read_parquet(tmp_path / "c" / "contrast.parquet")
    assert set(table.layer) == {"layer1", "fc"} and set(table.factor) == {"brightness", "hflip"}
    assert len(table) == 2 * (64 + 1000)
    assert "layer1" in out and "significant" in out


def test_run_point_biserial_uses_distinct_clean_images(planted_contrast):
    """The run's control group is the 16 clean images, not their 6 repeats: compare with scipy directly."""
    bundle, images = one_way_bundle(), reddish_images()
    factor = get_factor("brightness", factor=(0.1, 0.9))
    u = draw_single_factor(factor, len(images), 6, 0).reshape(len(images) * 6, -1)
    clean = images.batch(torch.arange(len(images)))
    with torch.inference_mode():
        treated = bundle.module.readout(factor.apply_unit(clean.repeat_interleave(6, dim=0), u)).numpy()
        control = bundle.module.readout(clean).numpy()
    rows = planted_contrast.table.query("factor == 'brightness'").set_index("unit")
    groups = np.r_[np.zeros(len(control)), np.ones(len(treated))]
    for unit in range(3):
        reference = scipy.stats.pointbiserialr(groups, np.r_[control[:, unit], treated[:, unit]]).statistic
        assert rows.loc[unit, "point_biserial"] == pytest.approx(reference, abs=1e-6)
        assert rows.loc[unit, "point_biserial_ci_low"] <= reference <= rows.loc[unit, "point_biserial_ci_high"]
    assert rows.loc[0, "point_biserial"] < -0.5  # darkening lowers the mean V of every image
