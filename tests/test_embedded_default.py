"""The embedded default works offline: real EfficientNet-Lite0 weights and the bundled photos."""

from __future__ import annotations

import torch

from augsense.cli import main
from augsense.io.images import load_bundled
from augsense.io.models import load_model


def test_default_model_and_photos_load_offline_and_classify_well():
    bundle = load_model()
    assert bundle.name == "efficientnet-lite0" and len(bundle.class_names) == 1000
    photos = load_bundled(bundle.input_size, bundle.resize_size)
    assert len(photos) == 25 and int((photos.labels >= 0).sum()) == 20
    labelled = photos.labelled()
    with torch.inference_mode():
        logits = bundle.module(bundle.normalise(labelled.batch(torch.arange(len(labelled)))))
    accuracy = float((logits.argmax(1) == labelled.labels).float().mean())
    assert accuracy >= 0.75  # 0.85 with the published weights and 0.498/0.502 normalisation


def test_demo_command_runs_end_to_end_at_a_tiny_size(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--n", "2", "--layers", "_blocks.2,_fc", "--factors", "hue,hflip",
                 "--limit-images", "4", "--quiet", "--no-report", "--device", "cpu"])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "dominant factors per layer" in stdout and "_blocks.2" in stdout
    assert (out / "indices.parquet").exists() and (out / "run.json").exists()


def test_default_forward_is_the_package_forward_and_batch_agnostic():
    from efficientnet_lite_pytorch import EfficientNet

    bundle = load_model()
    x = torch.rand(3, 3, 224, 224)
    with torch.inference_mode():
        ours = bundle.module(x)
        theirs = EfficientNet.forward(bundle.module, x)
        # a hook that repeats the batch inside (masks sharing the stem) must not break the head
        handle = bundle.module._blocks[2].register_forward_hook(lambda m, a, out: out.repeat(2, 1, 1, 1))
        try:
            doubled = bundle.module(x)
        finally:
            handle.remove()
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert doubled.shape == (6, 1000)
