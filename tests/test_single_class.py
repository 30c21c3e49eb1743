"""Single-class analysis on the planted network: amplifying a factor's units biases towards its class."""

from __future__ import annotations

import pytest

from augsense.analyses.sensitivity import run_sensitivity
from augsense.analyses.single_class import SINGLE_CLASS_COLUMNS, SingleClassOptions, run_single_class
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
