"""Modern backbones: layouts (NCHW, NHWC, tokens), cls reduction, masks along the right axis, softmax layers,
timm and Places365-style weights, and the console messages for a mistyped layer or mismatched weights.

The planted CNN, Swin-like and ViT-like networks (tests/planted_backbones.py) compute the same units in three
layouts, so their answers are known and their per-position maps must agree number for number.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from augsense.analyses.masking import MaskingOptions, run_masking
from augsense.analyses.sensitivity import run_sensitivity
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.io.models import load_model
from augsense.probe.hooks import ActivationProbe, list_layers
from augsense.probe.masks import MaskedForward
from planted import planted_images
from planted_backbones import CHANNELS, CLS_ANSWER, GRID, MEAN_ANSWER, SIZE, bundle

FACTORS = ["brightness", "saturation", "hflip"]
BASE = dict(layers=["block"], factors=FACTORS, output="logits", report=False, batch_size=64, device="cpu",
            bounds={"brightness": {"factor": [0.1, 1.0]}, "saturation": {"factor": [0.0, 1.0]}})


def run(kind: str, out=None, **changes):
    values = dict(BASE, n=128)
    values.update(changes)
    return run_sensitivity(SensitivityConfig(**values), model=bundle(kind), images=planted_images(), out_dir=out,
                           progress=False)


def assert_planted(result, answer: dict[int, str]) -> None:
    """Each planted unit's total index: its own factor's interval above 0.5, the others' around 0."""
    values, ci = result.total_order, result.total_order_ci
    for unit, factor in answer.items():
        j = FACTORS.index(factor)
        assert int(np.argmax(values[unit])) == j, (unit, values[unit])
        assert ci[0, unit, j] > 0.5, (unit, factor, ci[:, unit, j])
        for other in set(range(3)) - {j}:
            assert ci[0, unit, other] <= 1e-6 and ci[1, unit, other] >= -1e-6, (unit, other, ci[:, unit, other])
    assert result.dead[3]


def test_layouts_are_detected_from_the_modules_that_fix_the_channel_axis():
    expected = {"cnn": ("nchw", (5, 4, 4)), "swin": ("nhwc", (4, 4, 5)), "vit": ("tokens", (17, 5))}
    for kind, (layout, shape) in expected.items():
        layers = {layer.name: layer for layer in list_layers(bundle(kind).module, SIZE)}
        block = layers["block"]
        assert block.shape == shape and block.layout.kind == layout, (kind, block)
        assert block.layout.channels == CHANNELS and block.layout.grid == (GRID, GRID)
        assert "block.proj" in block.layout.how
    vit = {layer.name: layer.layout for layer in list_layers(bundle("vit").module, SIZE)}["block"]
    assert vit.prefix == 1 and vit.label == "tokens 1+4×4"


@pytest.mark.parametrize("kind", ["cnn", "swin", "vit"])
def test_mean_channel_units_have_the_planted_answers_in_every_layout(kind):
    result = run(kind).result
    assert result.total_order.shape == (CHANNELS, 3)
    assert_planted(result, MEAN_ANSWER)
    # unit 4 (R + G + B) never moves with hflip; on the ViT this fails if the class token joined the mean
    assert abs(result.total_order[4, 2]) < 1e-6


def test_cls_reduction_reads_the_class_token():
    assert_planted(run("vit", reduction="cls").result, CLS_ANSWER)


def test_per_position_maps_of_tokens_and_channels_last_match_the_cnn(tmp_path):
    from augsense.report.html import write_report

    results = {kind: run(kind, n=32, reduction="none", out=tmp_path / kind if kind == "vit" else None)
               for kind in ("cnn", "swin", "vit")}
    html = write_report(tmp_path / "vit").read_text(encoding="utf-8")
    assert "block" in html and 'id="spatial"' in html  # token maps on the 4×4 patch grid, drawn as a CNN's
    import json

    layers = json.loads((tmp_path / "vit" / "run.json").read_text())["layers"]
    assert layers["block"]["layout"] == f"tokens 1+{GRID}×{GRID}"  # run.json says how the units were read
    for kind, r in results.items():
        assert r.unit_shapes["block"] == (CHANNELS, GRID, GRID), kind
    reference = results["cnn"].result
    for kind in ("swin", "vit"):
        other = results[kind].result
        np.testing.assert_array_equal(other.dead, reference.dead)
        for quantity in ("first_order", "total_order"):
            np.testing.assert_allclose(getattr(other, quantity), getattr(reference, quantity), rtol=1e-4, atol=1e-5,
                                       equal_nan=True, err_msg=f"{kind} {quantity}")
    # the left–right share (channel 2) moves with hflip at every position; the constant (channel 3) is dead
    total = reference.total_order.reshape(CHANNELS, GRID, GRID, 3)
    assert (total[2, :, :, 2] > 0.5).all() and reference.dead.reshape(CHANNELS, GRID, GRID)[3].all()


def _captured(model: nn.Module, masks: dict, x: torch.Tensor, reduction: str) -> torch.Tensor:
    """The block output (K·n, …) under the masks, captured by a hook that runs after the mask."""
    seen = {}
    with MaskedForward(model, masks, reduction=reduction, expand_inside=False) as masked:
        handle = model.block.register_forward_hook(lambda m, a, out: seen.__setitem__("out", out))
        try:
            with torch.inference_mode():
                masked(x)
        finally:
            handle.remove()
    return seen["out"]


@pytest.mark.parametrize("reduction", ["mean", "cls", "none"])
def test_masks_scale_exactly_the_activations_the_units_summarise(reduction):
    generator = torch.Generator().manual_seed(1)
    x = planted_images(3).batch(torch.arange(3))
    per_unit = reduction == "none"
    shape = (2, CHANNELS, GRID, GRID) if per_unit else (2, CHANNELS)
    multiplier = torch.rand(shape, generator=generator) + 0.5
    kinds = ("cnn", "swin", "vit") if reduction != "cls" else ("vit",)
    for kind in kinds:
        model = bundle(kind).module
        with torch.inference_mode():
            plain = model.block(_inputs_of_block(model, x))
        got = _captured(model, {"block": multiplier}, x, reduction).reshape(2, 3, *plain.shape[1:])
        expected = plain.unsqueeze(0).repeat(2, 1, *([1] * (plain.ndim - 1)))
        for k in range(2):
            m = multiplier[k]
            if kind == "cnn":
                expected[k] = plain * (m.view(CHANNELS, 1, 1) if not per_unit else m)
            elif kind == "swin":
                expected[k] = plain * (m.view(1, 1, CHANNELS) if not per_unit else m.permute(1, 2, 0))
            elif reduction == "cls":
                expected[k, :, 0] = plain[:, 0] * m  # the class token only
            else:  # patch tokens only, row-major over the grid; the class token untouched
                scale = m.view(1, CHANNELS) if not per_unit else m.reshape(CHANNELS, -1).T
                expected[k, :, 1:] = plain[:, 1:] * scale
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6, msg=f"{kind} {reduction}")


def _inputs_of_block(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = {}
    handle = model.block.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    with torch.inference_mode():
        model(x)
    handle.remove()
    return seen["x"]


def test_masking_a_token_run_equals_masking_its_cnn_twin(tmp_path):
    """Through the whole pipeline (run folder, report, guided/random masks): the same masks on the same units
    give the same accuracies whether the layer is NCHW, NHWC or tokens."""
    from augsense.report.html import write_report

    options = MaskingOptions(quantiles=[0.75], alphas=[0.0], soft=False, n_random=1, least=False, device="cpu",
                             augmentations="clean", layers=["block"])
    tables = {}
    for kind in ("cnn", "swin", "vit"):
        out = tmp_path / kind
        r = run(kind, out=out, n=64)
        if kind == "vit":
            assert "block" in write_report(out).read_text(encoding="utf-8")
        result = run_masking(out, options, model=bundle(kind), images=planted_images(), write=False)
        tables[kind] = result.table.sort_values(list(result.table.columns[:6])).reset_index(drop=True)
        assert r.unit_shapes["block"] == (CHANNELS,)
    numeric = [c for c in tables["cnn"].columns if tables["cnn"][c].dtype.kind == "f"]
    assert len(tables["cnn"]) >= 3
    for kind in ("swin", "vit"):
        np.testing.assert_allclose(tables[kind][numeric].to_numpy(), tables["cnn"][numeric].to_numpy(), atol=1e-9,
                                   equal_nan=True, err_msg=kind)
    guided = tables["vit"][tables["vit"].kind == "guided"].set_index("factor")
    assert (guided.n_units == 1).all()  # the top quarter of the four live channel units
    assert guided.loc["hflip", "changed"] > 0  # the share channel zeroed: class 2 loses where it won


class Folded(nn.Module):
    """(n, 3, 32, 32) → (n, 4, 4, 4) with no module fixing the channel axis: an ambiguous layout."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.mix = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(x)
        return self.mix(torch.cat([y, y[:, :1]], dim=1).permute(0, 2, 3, 1))


def test_an_ambiguous_layout_must_be_declared():
    with pytest.raises(AugsenseError, match=r"'mix'.*ambiguous.*declare.*layouts"):
        ActivationProbe(Folded(), ["mix"], input_size=32)
    probe = ActivationProbe(Folded(), ["mix"], input_size=32, layouts={"mix": "nhwc"})
    x = torch.rand(2, 3, 32, 32)
    with probe, torch.inference_mode():
        units = probe(x)
    expected = torch.cat([x, x[:, :1]], dim=1).mean(dim=(2, 3))
    torch.testing.assert_close(units, expected)
    with pytest.raises(AugsenseError, match="no layer 'mixx'.*did you mean mix"):
        ActivationProbe(Folded(), ["mix"], input_size=32, layouts={"mixx": "nhwc"})
    with pytest.raises(AugsenseError, match="not one of"):
        SensitivityConfig(layouts={"mix": "hwc"})


def test_softmax_on_a_named_classifier_layer():
    model = bundle("cnn").module
    x = planted_images(4).batch(torch.arange(4))
    probe = ActivationProbe(model, ["block", "head"], input_size=SIZE, softmax_layers=["head"])
    with probe, torch.inference_mode():
        units = probe(x)
        logits = model(x)
    torch.testing.assert_close(units[:, probe.slices["head"]], logits.softmax(dim=1))
    assert torch.allclose(units[:, probe.slices["head"]].sum(dim=1), torch.ones(4))
    with pytest.raises(AugsenseError, match="softmax applies to a classifier layer"):
        ActivationProbe(model, ["block"], input_size=SIZE, softmax_layers=["block"])
    with pytest.raises(AugsenseError, match="not one of the run's layers"):
        ActivationProbe(model, ["block"], input_size=SIZE, softmax_layers=["head"])
    config = SensitivityConfig(**dict(BASE, n=8, layers=["block", "head"], softmax_layers=["head"]))
    r = run_sensitivity(config, model=bundle("cnn"), images=planted_images(4), progress=False)
    assert r.unit_shapes["head"] == (3,)


def test_a_mistyped_layer_lists_close_matches_not_every_layer():
    model = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(AugsenseError) as error:
        ActivationProbe(model, ["layer1.0.conv"], input_size=64)
    message = str(error.value)
    assert "did you mean" in message and "layer1.0.conv1," in message and "augsense layers MODEL" in message
    assert len(message) < 300 and "layer4.1.bn2" not in message


def test_places365_checkpoint_sets_the_class_count_and_names(tmp_path):
    places = torchvision.models.resnet18(num_classes=365)
    path = tmp_path / "resnet18_places365.pth.tar"
    torch.save({"epoch": 90, "arch": "resnet18",
                "state_dict": {"module." + k: v for k, v in places.state_dict().items()}}, path)
    categories = tmp_path / "categories_places365.txt"
    categories.write_text("".join(f"/{chr(97 + i % 26)}/place_{i} {i}\n" for i in range(365)))
    loaded = load_model("resnet18", weights=str(path), categories=str(categories))
    assert loaded.module.fc.out_features == 365 and loaded.class_names[:2] == ["place 0", "place 1"]
    torch.testing.assert_close(loaded.module.fc.weight, places.fc.weight)
    with pytest.raises(AugsenseError, match="names 365 classes but the model has 1000"):
        load_model("resnet18", weights="random", categories=str(categories))


def test_a_weights_mismatch_is_one_line_with_counts(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    with pytest.raises(AugsenseError) as error:
        load_model("resnet34", weights=str(path))
    message = str(error.value)
    assert "\n" not in message and "Error(s) in loading" not in message
    assert "missing (layer1.2." in message and "0 unexpected" in message and "of another shape" not in message.split(
        ";")[1]


def test_timm_model_by_name_with_its_pretrained_configuration(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file
    loaded = load_model("timm:vit_tiny_patch16_224", weights="random", seed=3)
    assert loaded.mean == (0.5, 0.5, 0.5) and loaded.input_size == 224 and loaded.resize_size == 248
    assert loaded.interpolation == "bicubic" and loaded.weights == "random, seed 3"
    assert len(loaded.class_names) == 1000
    layers = {layer.name: layer for layer in list_layers(loaded.module, loaded.input_size)}
    assert layers["blocks.5"].layout.label == "tokens 1+14×14" and layers["blocks.5"].layout.channels == 192
    with pytest.raises(AugsenseError, match="downloads nothing"):
        load_model("timm:vit_tiny_patch16_224", weights="augreg_in21k")
    with pytest.raises(AugsenseError, match="did you mean timm:vit_tiny_patch16_224"):
        load_model("timm:vit_tiny_patch16_22", weights="random")
    # a local .safetensors file with a 10-class head: the class count follows the file's classifier
    ten = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    save_file(ten.state_dict(), str(tmp_path / "vit_tiny_10.safetensors"))
    from_file = load_model("timm:vit_tiny_patch16_224", weights=str(tmp_path / "vit_tiny_10.safetensors"))
    assert from_file.module.head.out_features == 10 and from_file.class_names is None
    torch.testing.assert_close(from_file.module.head.weight, ten.head.weight)
    assert from_file.weights.startswith("vit_tiny_10.safetensors sha256:")


def test_the_run_plan_tells_layouts_and_softmax_apart():
    """A resume with another declared layout or softmax must be refused: both change the plan's fingerprint."""
    from augsense.analyses.plan import RunPlan
    from augsense.analyses.sensitivity import build_factor_space, design_for

    def fingerprint(layouts=None, softmax=()) -> str:
        config = SensitivityConfig(**dict(BASE, n=8, layers=["mix"], layouts=layouts or {}))
        space = build_factor_space(config)
        probe = ActivationProbe(Folded(), ["mix"], input_size=32, layouts=layouts, softmax_layers=softmax)
        return RunPlan.build(config, space=space, design=design_for(config, space), images=planted_images(4),
                             bundle=bundle("cnn"), probe=probe).fingerprint

    assert fingerprint({"mix": "nhwc"}) != fingerprint({"mix": "nchw"})
    cnn = SensitivityConfig(**dict(BASE, n=8, layers=["head"]))
    space = build_factor_space(cnn)
    plans = [RunPlan.build(cnn, space=space, design=design_for(cnn, space), images=planted_images(4),
                           bundle=bundle("cnn"), probe=ActivationProbe(bundle("cnn").module, ["head"], input_size=SIZE,
                                                                       softmax_layers=softmax)).fingerprint
             for softmax in ((), ["head"])]
    assert plans[0] != plans[1]


def test_layers_command_shows_layouts_and_takes_declarations(capsys):
    from augsense.cli import main

    assert main(["layers", "resnet18", "--depth", "1", "--layouts", "layer1=nhwc"]) == 0
    out = capsys.readouterr().out
    assert "layout" in out.splitlines()[0]
    row = next(line for line in out.splitlines() if line.startswith("layer1 "))
    assert row.split()[3:6] == ["nhwc", "56", "200704"]  # declared: 64×56×56 read as H=64, W=56, C=56
    assert next(line for line in out.splitlines() if line.startswith("layer2 ")).split()[3:5] == ["nchw", "128"]
    for flag, message in (("layer1=hwc", "not one of nchw, nhwc"), ("layer1", "write LAYER=LAYOUT")):
        assert main(["layers", "resnet18", "--depth", "1", "--layouts", flag]) == 2
        assert message in capsys.readouterr().err
