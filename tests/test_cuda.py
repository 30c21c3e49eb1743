"""The run loop on CUDA: resident uint8 images, the pinned host path, and a run equal to the CPU's.

Skipped without a CUDA device; ``bench/bench_gpu.py`` runs these with the factors' CUDA tests.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augsense.analyses.feed import ImageFeed
from augsense.analyses.sensitivity import run_sensitivity
from augsense.config import SensitivityConfig
from planted import PLANTED_CONFIG, planted_bundle, planted_images

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def config(**changes) -> SensitivityConfig:
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(n=64, batch_size=80, checkpoint_every=0.0)
    values.update(changes)
    return SensitivityConfig(**values)


def test_cuda_resident_and_pinned_feeds_give_the_cpu_images():
    images, index = planted_images(), torch.tensor([5, 0, 5, 15])
    resident = ImageFeed(images, torch.device("cuda"))
    pinned = ImageFeed(images, torch.device("cuda"), resident_fraction=0.0)
    assert resident.resident is not None and resident.resident.dtype == torch.uint8 and pinned.resident is None
    expected = images.batch(index)
    for feed in (resident, pinned):
        batch = feed.batch(index.cuda())
        assert batch.device.type == "cuda"
        torch.testing.assert_close(batch.cpu(), expected, rtol=0, atol=0)


@pytest.mark.parametrize("estimator", ["sobol", "sobol2"])
def test_cuda_run_gives_the_cpu_indices(estimator):
    runs = {device: run_sensitivity(config(device=device, estimator=estimator), model=planted_bundle(),
                                    images=planted_images(), progress=False) for device in ("cpu", "cuda")}
    assert runs["cuda"].device.startswith("cuda")
    for q in ("first_order", "total_order", "mean", "variance"):
        np.testing.assert_allclose(getattr(runs["cuda"].result, q), getattr(runs["cpu"].result, q), rtol=1e-4,
                                   atol=1e-5, equal_nan=True, err_msg=q)


def test_cuda_alexnet_per_element_run_joint_images(tmp_path):
    cfg = SensitivityConfig(model="alexnet", weights="random", layers=["features.5", "output"], reduction="none",
                            factors=["paper-set1"], random_order=True, image_mode="joint", preprocessing="paper",
                            estimator="sobol2", n=32, batch_size=256, device="cuda", report=False,
                            checkpoint_every=0.0, limit_images=8)
    run = run_sensitivity(cfg, out_dir=tmp_path, progress=False)
    assert run.result.first_order.shape == (192 * 13 * 13 + 1000, len(run.players))
    assert np.isfinite(run.result.total_order[~run.result.dead]).all()
    assert (tmp_path / "maps.npz").exists()
