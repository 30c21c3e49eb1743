"""`augsense paper`: every step on a small planted run folder, and the report's section of the paper's figures."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from augsense.analyses.segments import top_neurons
from augsense.analyses.sensitivity import run_sensitivity
from augsense.cli import main
from augsense.commands.paper import PaperOptions, run_paper
from augsense.config import SensitivityConfig
from augsense.io.models import ModelBundle
from augsense.io.results import load_run
from planted import PLANTED_CONFIG, planted_images


class SmallConvNet(nn.Module):
    """conv (3 → 6, 3×3) → ReLU → pool → fc (3 classes); seeded weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def small_bundle() -> ModelBundle:
    return ModelBundle(SmallConvNet().eval(), "small", 16, 16, (0.0,) * 3, (1.0,) * 3, ["a", "b", "c"])


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images", "layers")}
    out = tmp_path_factory.mktemp("paper")
    run_sensitivity(SensitivityConfig(**values, layers=["act", "fc"], n=16), model=small_bundle(),
                    images=planted_images(12, size=16), out_dir=out, progress=False)
    return out


def test_every_step_writes_its_tables_and_the_report_shows_the_figures(small_run):
    options = PaperOptions(spatial_layers=["act"], spatial_n=16, lda_repeats=2, segment="conv,act",
                           segment_channels="h,hsv", segment_n=16, limit_images=None, device="cpu", k=1)
    timings = run_paper(small_run, options, model=small_bundle(), images=planted_images(12, size=16))
    assert set(timings) == {"maps", "masking", "single-class", "segments", "report"}
    lda = pd.read_parquet(small_run / "map_lda_paper.parquet")
    assert lda.loc[0, "n_samples"] + lda.loc[0, "n_dropped_samples"] == 6 * 3  # (factor, channel) maps
    assert lda.loc[0, "n_features"] == 16 * 16 and lda.loc[0, "n_repeats"] == 2
    assert len(pd.read_parquet(small_run / "map_pixel_correlations.parquet")) == 3
    pairs = pd.read_parquet(small_run / "masking_pairs.parquet")
    assert len(pd.read_parquet(small_run / "masking_linkage.parquet")) == len(pairs) - 1
    decay = pd.read_parquet(small_run / "class_decay.parquet")
    assert set(decay.kind) == {"none", "guided", "random"}
    indices = pd.read_parquet(small_run / "segments" / "segments_indices.parquet")
    assert set(indices.channel) == {"h", "hsv"}
    # the segments ran on the paper's selected units: each factor's 2 most sensitive channels of `act` in the run
    run = load_run(small_run)
    expected = top_neurons(run.map("act", "total_order"), run.players, 2)
    neurons = pd.read_parquet(small_run / "segments" / "segments_neurons.parquet")
    assert sorted(neurons.neuron.unique()) == sorted(expected) and len(expected) < 6
    reasons = neurons.drop_duplicates("neuron").set_index("neuron").selected_for
    assert all(reasons[n] == ",".join(f) for n, f in expected.items())
    from augsense.io.provenance import result_set_of, table_stamp

    assert table_stamp(small_run / "segments" / "segments_neurons.parquet") == result_set_of(run.info)  # shown
    page = (small_run / "report.html").read_text()
    assert "The paper&#x27;s figures" in page or "The paper's figures" in page
    for figure in ("paper-lda", "paper-pixel-correlations", "paper-masking-dendrogram", "paper-class-decay",
                   "paper-segment-indices", "paper-segment-neurons"):
        assert f'id="fig-{figure}"' in page, figure
    assert "could not be drawn" not in page


def test_bad_steps_are_one_line(small_run, capsys):
    assert main(["paper", str(small_run), "--steps", "maps,nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown step 'nope'" in err and err.count("\n") == 1


def test_segment_neurons_all_and_explicit(small_run):
    """--neurons all runs every channel; an explicit spec runs those."""
    for choice, expected in (("all", list(range(6))), ("act:4,1", [1, 4])):
        options = PaperOptions(steps=("segments",), segment="conv,act", segment_channels="v", segment_n=8,
                               segment_neurons=choice, limit_images=4, device="cpu")
        run_paper(small_run, options, model=small_bundle(), images=planted_images(12, size=16), report=False)
        neurons = pd.read_parquet(small_run / "segments" / "segments_neurons.parquet")
        assert sorted(neurons.neuron.unique()) == expected, choice
