"""Real transformer backbones with random weights (no download): channel units, finite indices, a report.

Slow (a minute or more each on two CPU cores): `make test-slow`.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from augsense.analyses.sensitivity import run_sensitivity
from augsense.cli import main
from augsense.config import SensitivityConfig
from augsense.io.models import load_model
from augsense.probe.hooks import list_layers

pytestmark = pytest.mark.slow

# issue #13: the layer, its layout and its channel units with reduction = "mean"
CASES = [("vit_b_16", "encoder.layers.encoder_layer_5", "tokens 1+14×14", 768),
         ("swin_t", "features.1", "nhwc", 96),
         ("convnext_tiny", "features.3", "nchw", 192)]


@pytest.mark.parametrize("model, layer, layout, units", CASES)
def test_torchvision_transformers_give_channel_units_finite_indices_and_a_report(tmp_path, model, layer, layout,
                                                                                  units):
    from augsense.report.html import write_report

    out = tmp_path / model
    config = SensitivityConfig(model=model, weights="random", layers=[layer], reduction="mean", factors=["hflip",
                               "brightness"], n=4, limit_images=2, batch_size=16, device="cpu", report=False)
    run = run_sensitivity(config, out_dir=out, progress=False)
    assert run.unit_shapes[layer] == (units,)
    info = json.loads((out / "run.json").read_text())
    assert info["layers"][layer]["units"] == units
    table = pd.read_parquet(out / "indices.parquet")
    assert table.estimate.notna().all() and np.isfinite(table.estimate).all()
    html = write_report(out).read_text(encoding="utf-8")
    assert layer in html
    layers = {entry.name: entry for entry in list_layers(run.bundle.module, 224)}
    assert layers[layer].layout.label == layout


def test_maxvit_stages_are_channels_first():
    layers = {entry.name: entry for entry in list_layers(load_model("maxvit_t", weights="random").module, 224)}
    assert layers["blocks.1"].layout.kind == "nchw" and math.prod(layers["blocks.1"].layout.unit_shape("mean")) == 128
    # window partitions fold windows into the batch axis: refused with a reason, not probed wrongly
    folded = layers["blocks.1.layers.0.layers.grid_attention.partition_op"].layout
    assert folded.kind in ("batched", "unknown")


def test_timm_vit_by_name_from_the_command_line_on_the_bundled_photos(tmp_path, capsys):
    out = tmp_path / "timm"
    code = main(["run", "--model", "timm:vit_tiny_patch16_224", "--weights", "random", "--layers", "blocks.5,head",
                 "--reduction", "cls", "--factors", "hflip,brightness", "--n", "4", "--limit-images", "3",
                 "--out", str(out), "--device", "cpu", "--quiet", "--no-report"])
    assert code == 0
    info = json.loads((out / "run.json").read_text())
    assert info["layers"]["blocks.5"]["units"] == 192 and info["layers"]["head"]["units"] == 1000
    table = pd.read_parquet(out / "indices.parquet")
    assert np.isfinite(table[table.layer == "blocks.5"].estimate).all()
    assert "weights: random, seed 0" in capsys.readouterr().out
