"""Warnings before trust: small N, few images, skipped files, unlabelled class folders, wide intervals.

A real planted run on an image folder whose one class folder names no class and which holds a
file that is not an image: the console summary and the report's banner must both say so, and the
top-1 line must say why it is missing.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from augsense.analyses.sensitivity import run_sensitivity
from augsense.commands.run import print_summary
from augsense.config import SensitivityConfig
from augsense.io.images import load_images
from augsense.report.html import write_report
from augsense.report.trust import input_warnings, skipped_warning, wide_interval_warning
from planted import PLANTED_CONFIG, planted_bundle, planted_images


@pytest.fixture(scope="module")
def unlabelled_run(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("images") / "not_a_class"
    folder.mkdir()
    for i, pixels in enumerate(planted_images(n=6).pixels):
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"image_{i}.png")
    (folder / "broken.png").write_bytes(b"not an image")
    bundle = planted_bundle()
    images = load_images(str(folder.parent), 32, class_names=bundle.class_names)
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    out = tmp_path_factory.mktemp("run")
    run = run_sensitivity(SensitivityConfig(**{**values, "n": 16}), model=bundle, images=images, out_dir=out,
                          progress=False)
    console = io.StringIO()
    with contextlib.redirect_stdout(console):
        print_summary(run, out)
    return out, console.getvalue()


EXPECTED = ("small N: 16 base rows", "few images: 6 images", "1 image file was skipped", "broken.png",
            "class folder(s) name no class", "not_a_class", "very wide intervals")


def test_console_summary_lists_every_warning_and_why_top1_is_missing(unlabelled_run):
    _, console = unlabelled_run
    block = console[console.index("before trusting these numbers:"):]
    for text in EXPECTED:
        assert text in block, text
    top1 = next(line for line in console.splitlines() if line.startswith("top-1 accuracy"))
    assert "not measured" in top1 and "not_a_class" in top1


def test_report_banner_is_at_the_top_with_every_warning(unlabelled_run):
    out, _ = unlabelled_run
    page = write_report(out).read_text(encoding="utf-8")
    banner = re.search(r'<div class="banner" id="warnings".*?</div>', page, re.S)
    assert banner and page.index('id="warnings"') < page.index("<nav>")
    for text in EXPECTED:
        assert text in banner.group(0), text
    header = re.search(r'<section id="run">(.*?)</section>', page, re.S).group(1)
    assert re.search(r"<th>clean top-1</th><td>not measured: 1 class folder", header)


def test_a_large_run_of_enough_images_raises_no_input_warning():
    assert input_warnings(256, 25) == []
    assert [w.split(":")[0] for w in input_warnings(64, 8)] == ["small N", "few images"]
    assert skipped_warning([]) is None
    assert "and 2 more" in skipped_warning([("a", "x")] * 5)
    assert wide_interval_warning([("L", "f", "total_order", 0.1, 0.35)]) is None
    line = wide_interval_warning([("L", "f", "total_order", 0.1, 0.5), ("L", "g", "total_order", 0.0, 0.2)])
    assert line is not None and "f at L" in line and "g at L" not in line


def test_report_command_prints_the_banner_on_the_console(unlabelled_run, capsys):
    from augsense.cli import main

    out, _ = unlabelled_run
    assert main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    for text in EXPECTED:
        assert text in err, text


def test_wide_layer_second_order_intervals_are_warned_on_the_console():
    """A sobol2 run's layer-level S2 intervals count among the very wide ones (named as a factor pair)."""
    import types

    import numpy as np

    from augsense.commands.run import summary_warnings

    narrow = np.zeros((2, 1, 3))
    s2 = np.full((2, 1, 3, 3), np.nan)
    s2[0, 0, 0, 2], s2[1, 0, 0, 2] = -0.3, 0.4  # hue×blur only: width 0.7
    aggregated = types.SimpleNamespace(first_order_ci=narrow, total_order_ci=narrow, second_order_ci=s2)
    run = types.SimpleNamespace(warnings=[], images=types.SimpleNamespace(skipped=[]), layers=["L"],
                                players=["hue", "sharpness", "blur"],
                                result=types.SimpleNamespace(aggregated=aggregated))
    (line,) = summary_warnings(run)
    assert "very wide intervals: 1 layer-aggregated" in line and "hue×blur at L (second order, width 0.70)" in line


def test_the_report_banner_counts_wide_layer_second_order_intervals(tmp_path):
    """The banner reads layers.parquet's second_order rows too (the planted network is additive, so one
    pair's interval is widened by hand), naming the pair."""
    import pandas as pd

    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    out = tmp_path / "run"
    run_sensitivity(SensitivityConfig(**{**values, "n": 16, "estimator": "sobol2"}), model=planted_bundle(),
                    images=planted_images(), out_dir=out, progress=False)
    layers = pd.read_parquet(out / "layers.parquet")
    pair = layers.index[layers["quantity"] == "second_order"][0]
    layers.loc[pair, ["ci_low", "ci_high"]] = [-0.45, 0.54]
    layers.to_parquet(out / "layers.parquet")
    rows = layers[layers["factor"].notna() & layers["quantity"].isin(["first_order", "total_order", "second_order"])]
    wide = int(((rows["ci_high"] - rows["ci_low"]) > 0.3).sum())
    page = write_report(out).read_text(encoding="utf-8")
    name = f"{layers.loc[pair, 'factor']}×{layers.loc[pair, 'factor2']} at {layers.loc[pair, 'layer']}"
    assert f"very wide intervals: {wide} layer-aggregated" in page and f"{name} (second order, width 0.99)" in page
