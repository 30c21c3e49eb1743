"""Console: every progress bar reaches its total (the work counted is the work announced); resume messages.

The issue seen was a bar stopping at 384/390 (48/60, 64/72): a total announced for work that
is never counted. A recorder stands in for ``Progress`` in each analysis and checks both ends.
"""

from __future__ import annotations

import pytest

from augsense.config import SensitivityConfig
from augsense.progress import Progress
from planted import PLANTED_CONFIG, planted_bundle, planted_images


class Recorder:
    bars: list["Recorder"] = []

    def __init__(self, total: int, *, initial: int = 0, unit: str = "it", description: str = "",
                 enabled: bool = True) -> None:
        self.total, self.count, self.description, self.closed = total, initial, description, False
        Recorder.bars.append(self)

    def update(self, n: int = 1) -> None:
        assert not self.closed
        self.count += n

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def recorder(monkeypatch):
    import augsense.analyses.contrast as contrast
    import augsense.analyses.masking as masking
    import augsense.analyses.sensitivity as sensitivity

    Recorder.bars = []
    for module in (sensitivity, contrast, masking):
        monkeypatch.setattr(module, "Progress", Recorder)
    return Recorder


def _config(**changes) -> SensitivityConfig:
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    return SensitivityConfig(**{**values, **changes})


@pytest.mark.parametrize("n, batch_size", [(16, 32), (64, 7)])
def test_sensitivity_bar_reaches_its_total(recorder, tmp_path, n, batch_size):
    from augsense.analyses.sensitivity import run_sensitivity

    run_sensitivity(_config(n=n, batch_size=batch_size), model=planted_bundle(), images=planted_images(n=6),
                    out_dir=tmp_path / "run", progress=True)
    (bar,) = recorder.bars
    assert bar.closed and bar.count == bar.total == n * 5  # sobol: d + 2 = 5 evaluations per base row


def test_contrast_bar_counts_the_clean_forward_too(recorder):
    from augsense.analyses.contrast import run_contrast

    run_contrast(_config(), model=planted_bundle(), images=planted_images(n=6), draws=8, progress=True)
    (bar,) = recorder.bars
    assert bar.closed and bar.count == bar.total == 6 * (1 + 8 + 8 + 1)  # clean + 8 draws, 8 draws, hflip once


def test_progress_closes_cleanly_when_disabled():
    bar = Progress(10, enabled=False)
    bar.update(10)
    bar.close()


def test_resume_of_a_finished_run_says_it_is_finished_and_how_to_overwrite(tmp_path):
    import json

    from augsense.errors import AugsenseError
    from augsense.io.lock import inspect_run_folder

    (tmp_path / "run.json").write_text(json.dumps({"status": "complete"}))
    with pytest.raises(AugsenseError, match=r"finished run .*nothing to resume.*augsense report .*--overwrite"):
        inspect_run_folder(tmp_path, resume=True, overwrite=False)
    (tmp_path / "checkpoint.pt").write_bytes(b"")  # an --overwrite run that died: resuming it is right
    assert inspect_run_folder(tmp_path, resume=True, overwrite=False) == "complete"


@pytest.mark.parametrize("augmentations", ["own", "all"])
def test_masking_bar_reaches_its_total_with_on_off_factors_and_several_draws(recorder, tmp_path, augmentations):
    import torch

    from augsense.analyses.masking import MaskingOptions, run_masking
    from augsense.analyses.sensitivity import run_sensitivity
    from augsense.io.images import ImageSet

    run_sensitivity(_config(layers=["readout", "output"], n=32), model=planted_bundle(), images=planted_images(),
                    out_dir=tmp_path / "run", progress=False)
    bundle, base = planted_bundle(), planted_images(n=6)
    with torch.inference_mode():
        predicted = bundle.module(base.batch(torch.arange(len(base)))).argmax(1)
    recorder.bars.clear()
    run_masking(tmp_path / "run", MaskingOptions(quantiles=(0.9,), alphas=(0.0,), n_random=2, n_draws=3,
                                                 augmentations=augmentations),  # hflip: on/off, drawn 3 times
                model=bundle, images=ImageSet(base.pixels, predicted, base.sources), write=False, progress=True)
    (bar,) = recorder.bars
    assert bar.closed and bar.count == bar.total > 0


def test_single_class_says_when_no_configuration_is_confirmed(monkeypatch, capsys, tmp_path):
    import pandas as pd

    import augsense.analyses.single_class as single_class
    from augsense.cli import main

    table = pd.DataFrame({"factor": ["hue", "hflip"], "q": [0.9, 0.9], "alpha": [0.0, 1.5],
                          "mean_jaccard": [0.004, 0.0], "unmasked_jaccard": [0.004, 0.0], "threshold": 0.011,
                          "n_images": 25, "confirmed": [False, False], "candidate_names": [["a"], ["b"]]})
    monkeypatch.setattr(single_class, "run_single_class", lambda *args, **kwargs: table)
    assert main(["single-class", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "none of the 2 (factor, mask) configurations biases the network" in out
    assert "the highest: hue q=0.9 α=0, Jaccard 0.004" in out
    assert not out.rstrip().endswith(":")
