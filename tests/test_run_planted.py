"""End to end on the planted network: the right sensitivity map is known in advance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from augsense.analyses.sensitivity import run_sensitivity
from augsense.config import SensitivityConfig
from augsense.io.results import load_run
from planted import PLANTED, PLANTED_CONFIG, planted_bundle, planted_images

FACTORS = ["brightness", "saturation", "hflip"]


def config(**changes) -> SensitivityConfig:
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(changes)
    return SensitivityConfig(**values)


@pytest.fixture(scope="module")
def sobol_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted")
    return run_sensitivity(config(n=256), model=planted_bundle(), images=planted_images(), out_dir=out,
                           progress=False)


@pytest.mark.parametrize("estimator", ["sobol", "shapley-exact", "shapley-permutation"])
def test_planted_units_are_attributed_to_their_factor(estimator, sobol_run):
    run = sobol_run if estimator == "sobol" else run_sensitivity(
        config(n=128, estimator=estimator), model=planted_bundle(), images=planted_images(), progress=False)
    result = run.result
    quantity = "total_order" if estimator == "sobol" else "shapley"
    values, ci = getattr(result, quantity), getattr(result, quantity + "_ci")
    for unit, factor in PLANTED.items():
        j = FACTORS.index(factor)
        assert int(np.argmax(values[unit])) == j, (unit, values[unit])
        assert ci[0, unit, j] > 0.5, (unit, factor, ci[:, unit, j])
        for other in range(3):
            if other != j:
                # float32 rounding of the augmentations leaves ~1e-9 of variance: zero for our purpose
                assert ci[0, unit, other] <= 1e-6 and ci[1, unit, other] >= -1e-6, \
                    (unit, other, values[unit, other], ci[:, unit, other])


def test_dead_and_image_only_units_are_flagged_in_within_image_mode(sobol_run):
    result = sobol_run.result
    assert result.dead[3] and result.dead[4]
    assert np.isnan(result.first_order[3]).all() and np.isnan(result.total_order[4]).all()
    assert not result.dead[:3].any()


def test_joint_mode_gives_the_image_its_share():
    run = run_sensitivity(config(n=1024, image_mode="joint"), model=planted_bundle(), images=planted_images(),
                          progress=False)
    assert run.players == FACTORS + ["image"]
    first, ci = run.result.first_order, run.result.first_order_ci
    assert first[4, 3] == pytest.approx(1.0, abs=0.1)
    assert ci[0, 4, 3] < 1.0 < ci[1, 4, 3] or abs(first[4, 3] - 1) < 0.05
    assert np.abs(first[4, :3]).max() < 1e-6  # float32 rounding only
    # units planted on one factor still credit it, with the image mixed in as well
    assert run.result.total_order[0, 0] > 0.2


def test_run_folder_has_tidy_results_and_provenance(sobol_run):
    folder = load_run(sobol_run.out_dir)
    assert folder.info["status"] == "complete"
    assert folder.info["players"] == FACTORS
    table = folder.indices
    assert set(table.columns) >= {"layer", "unit", "factor", "factor2", "quantity", "estimate", "ci_low", "ci_high",
                                  "dead"}
    row = table[(table.unit == 0) & (table.factor == "brightness") & (table.quantity == "total_order")]
    assert len(row) == 1 and row.estimate.iloc[0] == pytest.approx(sobol_run.result.total_order[0, 0])
    assert folder.map("readout", "total_order").shape == (5, 3)
    assert set(folder.layers.quantity) >= {"first_order", "total_order"}
    assert (sobol_run.out_dir / "config.toml").exists()
    reread = SensitivityConfig.from_toml(sobol_run.out_dir / "config.toml")
    assert reread == sobol_run.config


def test_runs_are_reproducible_and_resume_gives_the_same_indices(tmp_path):
    kwargs = dict(model=planted_bundle(), images=planted_images(), progress=False)
    full = run_sensitivity(config(n=64, batch_size=20), **kwargs)
    again = run_sensitivity(config(n=64, batch_size=20), **kwargs)
    np.testing.assert_array_equal(full.result.total_order, again.result.total_order)
    partial = run_sensitivity(config(n=64, batch_size=20), out_dir=tmp_path, stop_after_blocks=3, **kwargs)
    assert not partial.complete and list(tmp_path.glob("checkpoint.pt"))
    resumed = run_sensitivity(config(n=64, batch_size=20), out_dir=tmp_path, resume=True, **kwargs)
    assert resumed.complete
    np.testing.assert_allclose(resumed.result.total_order, full.result.total_order, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(resumed.result.first_order, full.result.first_order, rtol=1e-12, atol=1e-15)
    assert not list(tmp_path.glob("checkpoint.pt"))


def test_clean_accuracy_is_measured_on_labelled_images(sobol_run):
    assert sobol_run.clean_accuracy is not None and 0.0 <= sobol_run.clean_accuracy <= 1.0
    assert math.isfinite(sobol_run.timings["images_per_s"])
