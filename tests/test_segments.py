"""HSV single-channel segments: a planted hue-tuned unit is attributed to H, a luminance unit to V.

The planted block (1×1 conv + ReLU on three input channels, as a network's first layer) has

- unit 0 = relu(0.3 − x): tuned to low values. Fed H (reddish images, hue ≈ 0.03 turn, moved to
  0.2–0.35 by the hue factor) it moves; fed V (≥ 0.4 for every brightness in [0.6, 0.9]) it is 0;
- unit 1 = relu(x − 0.4): tuned to high values. Fed V it follows brightness; fed H (< 0.4) it is 0.

S is kept by both factors (hue rotation and multiplicative brightness), so no unit moves
under the S input (beyond float rounding).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from augsense.analyses.segments import (HSVSegment, attribute_channels, parse_neurons, parse_segment, run_segments,
                                        top_neurons)
from augsense.cli import main
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.io.images import ImageSet
from augsense.io.models import ModelBundle


class BandNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 2, kernel_size=1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[-1 / 3] * 3, [1 / 3] * 3]).view(2, 3, 1, 1))
            conv.bias.copy_(torch.tensor([0.3, -0.4]))
        self.features = nn.Sequential(conv, nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def band_bundle() -> ModelBundle:
    return ModelBundle(BandNet().eval(), "band", 16, 16, (0.0,) * 3, (1.0,) * 3)


def orange_images(n: int = 8, size: int = 16) -> ImageSet:
    generator = torch.Generator().manual_seed(0)
    base = torch.tensor([0.8, 0.45, 0.2]).view(1, 3, 1, 1)
    images = (base + 0.06 * (torch.rand(n, 3, size, size, generator=generator) - 0.5)).clamp(0, 1)
    return ImageSet((images * 255).round().to(torch.uint8), torch.zeros(n, dtype=torch.long),
                    [f"orange:{i}" for i in range(n)])


def segment_config(**changes) -> SensitivityConfig:
    values = dict(layers=["features.1"], factors=["hue", "brightness"], n=32, batch_size=64, device="cpu",
                  report=False, bounds={"hue": {"shift": [0.2, 0.35]}, "brightness": {"factor": [0.6, 0.9]}})
    values.update(changes)
    return SensitivityConfig(**values)


@pytest.fixture(scope="module")
def segment_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("segments")
    return run_segments(segment_config(), "features.0-1", model=band_bundle(), images=orange_images(), out_dir=out,
                        progress=False)


def attributed(table: pd.DataFrame, unit: int, factor: str) -> str:
    rows = table[(table.unit == unit) & (table.factor == factor) & table.attributed]
    assert len(rows) == 1, table[(table.unit == unit) & (table.factor == factor)]
    return str(rows.channel.iloc[0])


def test_hue_unit_is_attributed_to_h_and_luminance_unit_to_v(segment_runs):
    table = segment_runs.attribution
    assert attributed(table, 0, "all") == "h" and attributed(table, 0, "hue") == "h"
    assert attributed(table, 1, "all") == "v" and attributed(table, 1, "brightness") == "v"
    shares = table.set_index(["unit", "factor", "channel"]).share
    assert shares[(0, "all", "h")] > 0.99 and shares[(1, "all", "v")] > 0.99
    # within the channel's own run the indices name the factor that moves that channel
    h_run, v_run = segment_runs.runs["h"].result, segment_runs.runs["v"].result
    assert h_run.total_order[0, 0] > 0.95 and v_run.total_order[1, 1] > 0.95
    assert np.nanmax(segment_runs.runs["s"].result.variance) < 1e-12  # S is unmoved (float rounding only)


def test_segment_runs_write_run_folders_and_the_attribution(segment_runs):
    out = segment_runs.out_dir
    for channel in "hsv":
        assert (out / channel / "run.json").exists() and (out / channel / "maps.npz").exists()
    stored = pd.read_parquet(out / "segments.parquet")
    assert set(stored.columns) == {"layer", "unit", "factor", "channel", "variance", "share", "attributed", "neuron"}
    assert len(stored) == 3 * 2 * 3  # channels × units × (all + 2 factors)
    assert set(stored.layer) == {"features.1"} and (stored.neuron == stored.unit).all()  # no selection: itself
    neurons = pd.read_parquet(out / "segments_neurons.parquet")
    assert len(neurons) == len(stored) and set(neurons.selected_for) == {""}


def test_channel_input_is_the_hsv_channel_replicated_and_resized():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 4, 1))
    segment = parse_segment(model, "3", input_size=16)
    assert segment.modules == ("3",) and segment.input_shape == (4, 8, 8)
    images = torch.rand(2, 3, 16, 16)
    block = HSVSegment(model, segment, "v", resize=True)
    x = block.channel_input(images)
    assert x.shape == (2, 4, 8, 8)
    expected = nn.functional.avg_pool2d(images.amax(dim=1, keepdim=True), 2)
    torch.testing.assert_close(x[:, 2:3], expected)
    hue = HSVSegment(model, segment, "h", resize=True).channel_input(torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 16, 16))
    torch.testing.assert_close(hue, torch.full((1, 4, 8, 8), 1 / 3))  # pure green: a third of a turn
    assert [name for name, _ in block.named_modules() if name] == ["3"]


def test_resnet_stem_and_stage_segments_resolve():
    import torchvision

    model = torchvision.models.resnet18(weights=None).eval()
    stem = parse_segment(model, "conv1,bn1,relu,maxpool", input_size=64)
    assert stem.input_shape == (3, 64, 64)
    stage = parse_segment(model, "layer1", input_size=64)
    assert stage.input_shape == (64, 16, 16)
    out = HSVSegment(model, stage, "s", resize=True)(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 64, 16, 16)
    out = HSVSegment(model, stage, "s")(torch.rand(2, 3, 64, 64))  # the paper's: fed at the input size
    assert out.shape == (2, 64, 64, 64)


def test_attribution_needs_runs_and_bad_segments_are_refused():
    with pytest.raises(AugsenseError, match="no segment runs"):
        attribute_channels({})
    model = BandNet()
    with pytest.raises(AugsenseError, match="no module 'features.2'"):
        parse_segment(model, "features.0-7", input_size=16)
    with pytest.raises(AugsenseError, match="before its start"):
        parse_segment(model, "features.1-0", input_size=16)
    with pytest.raises(AugsenseError, match="image-like"):
        parse_segment(model, "fc", input_size=16)
    with pytest.raises(AugsenseError, match="h, s, v"):
        run_segments(segment_config(), "features.0-1", channels="x", model=band_bundle(), images=orange_images())
    with pytest.raises(AugsenseError, match="not inside segment"):
        run_segments(segment_config(layers=["fc"]), "features.0-1", model=band_bundle(), images=orange_images(),
                     layers=["fc"])


@pytest.mark.parametrize("args, message", [
    ([], "--segment"),
    (["--segment", "nope"], "no module 'nope'"),
    (["--segment", "layer1", "--channel", "q"], "h, s, v"),
    (["--segment", "layer1", "--layers", "fc"], "not inside segment"),
])
def test_cli_bad_input_exits_2_with_one_line(args, message, tmp_path, capsys):
    code = main(["segments", "--model", "resnet18", "--weights", "random", "--limit-images", "2", "--device", "cpu", "--quiet",
                 "--out", str(tmp_path / "s"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_channel_subsets_are_tiled_over_the_input_width_at_the_input_size():
    import kornia

    model = nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, padding=1), nn.Conv2d(5, 2, 1))
    segment = parse_segment(model, "1", input_size=8)
    assert segment.input_shape == (5, 4, 4)
    images = torch.rand(2, 3, 8, 8)
    hsv = kornia.color.rgb_to_hsv(images)
    h, s, v = hsv[:, 0] / (2 * torch.pi), hsv[:, 1], hsv[:, 2]
    block = HSVSegment(model, segment, "vh")  # canonical name: hv
    assert block.channel == "hv"
    torch.testing.assert_close(block.channel_input(images), torch.stack([h, v, h, v, h], dim=1))
    three = HSVSegment(nn.Sequential(nn.Conv2d(3, 2, 1)), parse_segment(nn.Sequential(nn.Conv2d(3, 2, 1)), "0", 8), "hsv")
    torch.testing.assert_close(three.channel_input(images), torch.stack([h, s, v], dim=1))
    for bad in ("hx", "hh", ""):
        with pytest.raises(AugsenseError, match="subset"):
            HSVSegment(model, segment, bad)


def test_segment_indices_per_channel_name_the_planted_factor(segment_runs):
    """Under H only the hue-tuned unit moves, and only with hue; under V only the luminance unit, with brightness."""
    table = segment_runs.indices
    assert set(table.channel) == {"h", "s", "v"} and set(table.quantity) >= {"first_order", "total_order"}
    total = table[table.quantity == "total_order"].set_index(["channel", "factor"])
    assert total.loc[("h", "hue"), "mean"] > 0.95 and total.loc[("h", "brightness"), "mean"] < 0.05
    assert total.loc[("v", "brightness"), "mean"] > 0.95 and total.loc[("v", "hue"), "mean"] < 0.05
    expected = np.nanmean(segment_runs.runs["h"].result.total_order[:, 0])
    assert total.loc[("h", "hue"), "mean"] == pytest.approx(expected)
    stored = pd.read_parquet(segment_runs.out_dir / "segments_indices.parquet")
    assert len(stored) == len(table)


def test_subset_runs_write_one_folder_per_subset(tmp_path):
    result = run_segments(segment_config(n=16), "features.0-1", channels=["sh", "hsv"], model=band_bundle(),
                          images=orange_images(4), out_dir=tmp_path, progress=False)
    assert list(result.runs) == ["hs", "hsv"]
    assert (tmp_path / "hs" / "run.json").exists() and (tmp_path / "hsv" / "maps.npz").exists()
    assert set(pd.read_parquet(tmp_path / "segments_indices.parquet").channel) == {"hs", "hsv"}


def test_the_run_warnings_are_printed_once_not_once_per_channel(tmp_path, capsys):
    code = main(["segments", "--model", "resnet18", "--weights", "random", "--limit-images", "2", "--device", "cpu",
                 "--quiet", "--segment", "conv1,bn1", "--n", "4", "--factors", "hue,brightness",
                 "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("augsense: warning:")]
    assert any("few images" in line for line in warnings)
    assert len(warnings) == len(set(warnings)), err  # the h, s and v runs share them: said once


# -- neuron (output-channel) subsets, as the paper's selected units --------------------------------------------


class FourBandNet(BandNet):
    """BandNet widened to 4 channels: 0 hue-tuned relu(0.3 − x), 1 luminance relu(x − 0.4), 2 dead (relu(−1)),
    3 hue-tuned twice as steep (relu(0.6 − 2x))."""

    def __init__(self) -> None:
        super().__init__()
        conv = nn.Conv2d(3, 4, kernel_size=1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[-1 / 3] * 3, [1 / 3] * 3, [0.0] * 3, [-2 / 3] * 3]).view(4, 3, 1, 1))
            conv.bias.copy_(torch.tensor([0.3, -0.4, -1.0, 0.6]))
        self.features = nn.Sequential(conv, nn.ReLU())
        self.fc = nn.Linear(4, 2)


def four_bundle() -> ModelBundle:
    return ModelBundle(FourBandNet().eval(), "four", 16, 16, (0.0,) * 3, (1.0,) * 3)


@pytest.fixture(scope="module")
def neuron_runs(tmp_path_factory):
    """The same segment, design and images, all channels and the selection 3, 1, 2 (out of order)."""
    bundle = four_bundle()
    full = run_segments(segment_config(), "features.0-1", model=bundle, images=orange_images(), progress=False)
    out = tmp_path_factory.mktemp("neurons")
    chosen = run_segments(segment_config(), "features.0-1", model=bundle, images=orange_images(), out_dir=out,
                          progress=False, neurons="features.0:3,1,2", selected_for={3: ["hue"], 1: ["brightness"]})
    return bundle, full, chosen


def test_selected_neurons_are_the_full_segments_channels(neuron_runs):
    """Unit j of the selected run is channel indices[j] of the full one: same variances and indices (same design),
    and the tables name it by that channel."""
    bundle, full, chosen = neuron_runs
    assert chosen.neurons == {"features.0": (3, 1, 2)}
    for channel in "hsv":
        np.testing.assert_allclose(chosen.runs[channel].result.variance, full.runs[channel].result.variance[[3, 1, 2]],
                                   rtol=1e-6, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(chosen.runs[channel].result.total_order, full.runs[channel].result.total_order[[3, 1, 2]],
                                   rtol=1e-6, atol=1e-9, equal_nan=True)
    table = chosen.attribution
    whole = table[(table.factor == "all") & table.attributed].set_index("neuron").channel
    assert whole.to_dict() == {3: "h", 1: "v"}  # the dead channel 2 moves under no input
    assert sorted(table.neuron.unique()) == [1, 2, 3] and set(table.unit) == {0, 1, 2}
    summary = pd.read_parquet(chosen.out_dir / "segments_neurons.parquet")
    by_neuron = summary[(summary.factor == "all") & summary.attributed].set_index("neuron")
    assert by_neuron.channel.to_dict() == {3: "h", 1: "v"} and by_neuron.loc[3, "share"] > 0.99
    assert by_neuron.loc[3, "selected_for"] == "hue" and by_neuron.loc[1, "selected_for"] == "brightness"
    assert summary[summary.neuron == 2].share.isna().all()
    assert not dict(bundle.module.named_modules())["features.0"]._forward_hooks  # the network is untouched


def test_output_selection_equals_the_papers_subset_convolution():
    """The reference code's subset_conv2d_module (weight rows) and SelectSubsetOutput (output[:, idx]) give the
    same numbers; the segment's output is the full segment's channels idx, and a layer inside the selected
    module keeps its own channels."""
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)).eval()
    segment = parse_segment(model, "0,1,2", input_size=8)
    images = torch.rand(2, 3, 8, 8)
    idx = [4, 0, 5]
    block = HSVSegment(model, segment, "v", neurons={"0": idx})
    whole = HSVSegment(model, segment, "v")
    with torch.no_grad():
        torch.testing.assert_close(block(images), whole(images)[:, idx])
        conv = nn.Conv2d(3, 3, 3, padding=1)
        conv.weight.copy_(model[0].weight[idx])
        conv.bias.copy_(model[0].bias[idx])
        paper = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2))(block.channel_input(images))
    torch.testing.assert_close(block(images), paper)
    np.testing.assert_array_equal(block.neuron_of("2", (3,)), idx)
    np.testing.assert_array_equal(block.neuron_of("0", (3, 2, 2)), np.repeat(idx, 4))
    np.testing.assert_array_equal(HSVSegment(model, segment, "v", neurons={"2": idx}).neuron_of("0", (6,)), range(6))


def test_neuron_specs_json_and_refusals(tmp_path):
    model = FourBandNet()
    segment = parse_segment(model, "features.0-1", input_size=16)
    assert parse_neurons(model, segment, "features.0:0,2-3", 16) == {"features.0": (0, 2, 3)}
    assert parse_neurons(model, segment, {"features.1": [1]}, 16) == {"features.1": (1,)}
    assert parse_neurons(model, segment, None, 16) == {} and parse_neurons(model, segment, "all", 16) == {}
    paper = tmp_path / "four_single_units.json"  # the reference code's format (notebook/*_single_units.json)
    paper.write_text(json.dumps([{"modules_names": ["features.5"], "neurons": {"features.5": {"9": []}}},
                                 {"modules_names": ["features.0", "features.1"], "module_type": "sequential",
                                  "neurons": {"features.0": {"1": [["hue", "si", 1]], "3": [["hue", "shpv", 2]]}}}]))
    assert parse_neurons(model, segment, str(paper), 16) == {"features.0": (1, 3)}
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"features.0": [2]}))
    assert parse_neurons(model, segment, str(plain), 16) == {"features.0": (2,)}
    for spec, message in (("fc:1", "not a module of segment"), ("features.0:4", "has 4 channels"),
                          ("features.0:1,1", "repeat"), ("features.0:1;features.1:2", "one module"),
                          ("features.0:x", "MODULE:INDICES"), ("features.0:3-1", "range"),
                          (str(tmp_path / "none.json"), "cannot read")):
        with pytest.raises(AugsenseError, match=message):
            parse_neurons(model, segment, spec, 16)
    other = parse_segment(model, "features.1", input_size=16)
    with pytest.raises(AugsenseError, match="no entry has modules_names"):
        parse_neurons(model, other, str(paper), 16)


def test_top_neurons_per_factor():
    maps = np.array([[0.1, 0.9], [0.8, 0.2], [np.nan, np.nan], [0.7, 0.6]])
    assert top_neurons(maps, ["hue", "brightness"], k=1) == {0: ["brightness"], 1: ["hue"]}
    assert top_neurons(maps, ["hue", "brightness"], k=2) == {0: ["brightness"], 1: ["hue"], 3: ["hue", "brightness"]}
    spatial = np.repeat(maps[:, None, None, :], 2, axis=1)
    assert top_neurons(spatial, ["hue", "brightness"], k=1) == {0: ["brightness"], 1: ["hue"]}


def test_cli_neurons_option(tmp_path, capsys):
    code = main(["segments", "--model", "resnet18", "--weights", "random", "--limit-images", "2", "--device", "cpu",
                 "--quiet", "--segment", "conv1,bn1", "--n", "4", "--factors", "hue,brightness", "--channel", "v",
                 "--neurons", "bn1:5,7", "--out", str(tmp_path / "s")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "neurons bn1: 5, 7" in out
    table = pd.read_parquet(tmp_path / "s" / "segments_neurons.parquet")
    assert sorted(table.neuron.unique()) == [5, 7]
    code = main(["segments", "--model", "resnet18", "--weights", "random", "--limit-images", "2", "--device", "cpu",
                 "--quiet", "--segment", "conv1,bn1", "--neurons", "bn1:64", "--out", str(tmp_path / "t")])
    err = capsys.readouterr().err
    assert code == 2 and "64 channels" in err and err.count("\n") == 1, err


def test_neuron_table_sums_a_neurons_units_per_input_channel():
    """Per-unit maps: a neuron has several units (positions); its variance per input channel is their sum."""
    from augsense.analyses.segments import neuron_table

    attribution = pd.DataFrame({
        "layer": ["L"] * 8, "unit": [0, 1, 2, 3] * 2, "factor": ["all"] * 8, "channel": ["h"] * 4 + ["v"] * 4,
        "variance": [1.0, 2.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0], "share": np.nan, "attributed": False,
        "neuron": [5, 5, 9, 9] * 2})
    table = neuron_table(attribution, {5: ["hue", "brightness"]}).set_index(["neuron", "channel"])
    assert table.loc[(5, "h"), "variance"] == 3.0 and table.loc[(5, "v"), "variance"] == 3.0
    assert table.loc[(5, "h"), "share"] == 0.5 and table.loc[(5, "h"), "n_units"] == 2
    assert table.loc[(5, "h"), "attributed"] and not table.loc[(5, "v"), "attributed"]  # a tie: the first channel
    assert np.isnan(table.loc[(9, "h"), "share"]) and not table.loc[(9, "h"), "attributed"]  # moves under none
    assert table.loc[(5, "h"), "selected_for"] == "hue,brightness" and table.loc[(9, "h"), "selected_for"] == ""


def test_segment_tables_at_a_run_folders_top_are_shown_only_for_the_runs_network(tmp_path):
    """augsense segments --out RUN: its tables describe whatever network it was given; the report checks the weights."""
    from augsense.analyses.sensitivity import run_sensitivity
    from augsense.report.html import write_report

    run, bundle = tmp_path / "run", band_bundle()  # one instance: BandNet's fc is drawn afresh in every one
    run_sensitivity(segment_config(), model=bundle, images=orange_images(), out_dir=run, progress=False)
    run_segments(segment_config(), "features.0-1", model=bundle, images=orange_images(), out_dir=run,
                 progress=False)
    assert json.loads((run / "segments.json").read_text())["model"]["weights_sha256"]
    page = write_report(run).read_text(encoding="utf-8")
    assert 'id="fig-paper-segment-indices"' in page and "not shown" not in page
    other = band_bundle()  # the same architecture, other weights (fc)
    run_segments(segment_config(), "features.0-1", model=other, images=orange_images(), out_dir=run,
                 progress=False, overwrite=True)
    page = write_report(run).read_text(encoding="utf-8")
    assert 'id="fig-paper-segment-indices"' not in page
    assert "segments_indices.parquet not shown: it was computed with other weights" in page
    (run / "segments.json").unlink()  # written before the weights were recorded: shown, with a notice
    page = write_report(run).read_text(encoding="utf-8")
    assert 'id="fig-paper-segment-indices"' in page and "has no segments.json beside it" in page
