"""Single-class analysis on the planted network: amplifying a factor's units biases towards its class."""

from __future__ import annotations

import pytest
import torch

from augsense.analyses.sensitivity import run_sensitivity
from augsense.analyses.single_class import (DECAY_COLUMNS, SINGLE_CLASS_COLUMNS, ClassDecayOptions, SingleClassOptions,
                                           class_decay, run_single_class)
from augsense.config import SensitivityConfig
from augsense.estimators.jaccard import jaccard_null_threshold
from augsense.errors import AugsenseError
from planted import PLANTED_CONFIG, planted_bundle, planted_images


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images", "layers")}
    out = tmp_path_factory.mktemp("planted_single")
    run_sensitivity(SensitivityConfig(**values, layers=["readout", "output"], n=128), model=planted_bundle(),
                    images=planted_images(), out_dir=out, progress=False)
    return out


def test_candidates_are_the_planted_classes_and_amplification_biases(planted_run):
    options = SingleClassOptions(k=1, alphas=(0.0, 1.5, 50.0))
    table = run_single_class(planted_run, options, model=planted_bundle(), images=planted_images())
    assert list(table.columns) == SINGLE_CLASS_COLUMNS
    assert (planted_run / "single_class.parquet").exists()
    candidates = {row.factor: list(row.candidates) for row in table.itertuples()}
    assert candidates == {"brightness": [0], "saturation": [1], "hflip": [2]}  # output i = 8 · planted unit i
    null = jaccard_null_threshold(3, 1, 16)
    assert table.threshold.eq(null.threshold).all() and (table.null_method == "exact").all()
    by = table.set_index(["factor", "alpha"])
    # chroma amplified 50×: images with positive chroma switch to class 1, from none unmasked
    assert by.loc[("saturation", 50.0), "mean_jaccard"] > by.loc[("saturation", 50.0), "unmasked_jaccard"] + 0.1
    # luminance damaged: class 0 loses its lead on most images
    assert by.loc[("brightness", 0.0), "mean_jaccard"] < by.loc[("brightness", 0.0), "unmasked_jaccard"] - 0.3
    assert bool(by.loc[("brightness", 1.5), "confirmed"]) and not bool(by.loc[("hflip", 1.5), "confirmed"])
    assert (table.confirmed == (table.mean_jaccard > table.threshold)).all()


def test_bad_options(planted_run):
    with pytest.raises(AugsenseError, match="k=4 exceeds the 3 classes"):
        run_single_class(planted_run, SingleClassOptions(k=4), model=planted_bundle(), images=planted_images())
    with pytest.raises(AugsenseError, match="factor 'hue' is not in the run"):
        run_single_class(planted_run, SingleClassOptions(factors=["hue"]), model=planted_bundle())
    with pytest.raises(AugsenseError, match="α must lie"):
        run_single_class(planted_run, SingleClassOptions(alphas=(-2.0,)), model=planted_bundle())


def _predictions_with_unit_scaled(unit: int, alpha: float) -> torch.Tensor:
    """Oracle: the planted model's top-1 on its images with readout unit ``unit`` multiplied by ``alpha``."""
    bundle, images = planted_bundle(), planted_images()
    handle = bundle.module.readout.register_forward_hook(
        lambda module, args, out: out * torch.tensor([alpha if i == unit else 1.0 for i in range(out.shape[1])]))
    try:
        with torch.inference_mode():
            return bundle.module(images.batch(torch.arange(len(images)))).argmax(1)
    finally:
        handle.remove()


def test_class_decay_matches_the_oracle_for_the_planted_units(planted_run):
    """q = 0.9 of the readout's three live units selects exactly the factor's planted unit: damaging it
    (α = 0) gives the class shares of the oracle forward pass; the unmasked row is the plain model."""
    options = ClassDecayOptions(k=1, quantiles=(0.5, 0.9), alphas=(0.0,), n_random=3, device="cpu")
    table = class_decay(planted_run, options, model=planted_bundle(), images=planted_images())
    assert list(table.columns) == DECAY_COLUMNS and (planted_run / "class_decay.parquet").exists()
    for factor, unit in (("brightness", 0), ("saturation", 1), ("hflip", 2)):
        rows = table[table.factor == factor].set_index(["kind", "q"], drop=False)
        assert set(rows["class"]) == {unit}  # candidate class of the factor: output i = 8 · planted unit i
        plain = _predictions_with_unit_scaled(unit, 1.0)
        damaged = _predictions_with_unit_scaled(unit, 0.0)
        none = rows[rows.kind == "none"].iloc[0]
        assert none.share == pytest.approx(float((plain == unit).float().mean()))
        assert none.masked_fraction == 0.0
        guided = rows.loc[("guided", 0.9)]
        assert guided.share == pytest.approx(float((damaged == unit).float().mean()))
        assert guided.masked_fraction == pytest.approx(1 / 5)  # one of the readout's five units
        labelled = planted_images().labels == unit
        assert guided.n_labelled == int(labelled.sum())
        assert guided.top1 == pytest.approx(float((damaged[labelled] == unit).float().mean()))
        random = rows.loc[("random", 0.9)]
        assert random.n_draws == 3 and random.masked_fraction == pytest.approx(1 / 5)
    brightness = table[(table.factor == "brightness")].set_index(["kind", "q"])
    assert brightness.loc[("guided", 0.9), "share"] < brightness.loc[("none", brightness.index[0][1]), "share"] - 0.3


def test_class_decay_refuses_an_empty_grid(planted_run):
    with pytest.raises(AugsenseError, match="at least one quantile"):
        class_decay(planted_run, ClassDecayOptions(quantiles=()), model=planted_bundle(), images=planted_images())


def test_class_decay_of_the_most_predicted_classes(planted_run):
    """classes="predicted": the k classes the unmasked model predicts most often, for every factor."""
    plain = _predictions_with_unit_scaled(0, 1.0)
    counts = torch.bincount(plain, minlength=3)
    expected = sorted(range(3), key=lambda c: (-int(counts[c]), c))[:2]
    options = ClassDecayOptions(k=2, quantiles=(0.9,), n_random=1, classes="predicted", device="cpu")
    table = class_decay(planted_run, options, model=planted_bundle(), images=planted_images(), write=False)
    for factor in ("brightness", "saturation", "hflip"):
        none = table[(table.factor == factor) & (table.kind == "none")].sort_values("rank")
        assert list(none["class"]) == expected
        assert list(none["share"]) == pytest.approx([float(counts[c]) / len(plain) for c in expected])
    assert (table.classes == "predicted").all()
    with pytest.raises(AugsenseError, match="classes must be"):
        class_decay(planted_run, ClassDecayOptions(classes="nope"), model=planted_bundle())
