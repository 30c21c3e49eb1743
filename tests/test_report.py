"""The HTML report: built from small planted runs, tolerant of partial folders, opened in Chromium."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from augsense.analyses.sensitivity import run_sensitivity
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.io.images import load_images
from augsense.report.aggregate import channel_view, pool
from augsense.report.data import read_report_data
from augsense.report.figures import _sorted_units
from augsense.report.html import write_report
from augsense.report.specialists import top_units, unit_label
from planted import PLANTED, PLANTED_CONFIG, planted_bundle, planted_images

IMG = re.compile(r'<img [^>]*src="([^"]*)"')


def _config(**changes) -> SensitivityConfig:
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(changes)
    return SensitivityConfig(**values)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """The planted images as PNG files, so the run records paths and the gallery can reread them."""
    folder = tmp_path_factory.mktemp("planted_images")
    for i, pixels in enumerate(planted_images(n=8).pixels):
        Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(folder / f"image_{i}.png")
    return folder


@pytest.fixture(scope="module")
def shapley_run(tmp_path_factory, image_folder) -> Path:
    """Per-position maps of the colour layer, Shapley effects and interactions."""
    out = tmp_path_factory.mktemp("report_shapley")
    images = load_images(str(image_folder), 32)
    run_sensitivity(_config(estimator="shapley-exact", n=32, reduction="none", layers=["colour", "readout"]),
                    model=planted_bundle(), images=images, out_dir=out, progress=False)
    return out


@pytest.fixture(scope="module")
def sobol_run(tmp_path_factory) -> Path:
    """Channel means of readout and fc, Sobol first/total/second order; images in memory (no gallery)."""
    out = tmp_path_factory.mktemp("report_sobol")
    run_sensitivity(_config(estimator="sobol2", n=128, layers=["readout", "fc"]), model=planted_bundle(),
                    images=planted_images(), out_dir=out, progress=False)
    return out


@pytest.fixture(scope="module")
def shapley_report(shapley_run) -> Path:
    return write_report(shapley_run)


@pytest.fixture(scope="module")
def sobol_report(sobol_run) -> Path:
    return write_report(sobol_run)


def _copy(run: Path, tmp_path: Path, *, drop: tuple[str, ...] = ()) -> Path:
    """A copy of a run folder without its report and without ``drop`` (to keep a test to its section)."""
    target = tmp_path / "run"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns("report.html", "figures", *drop))
    return target


def _section(page: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', page, re.S)
    assert match, f"section {key!r} missing"
    return match.group(1)


def test_report_is_self_contained_with_every_section(shapley_run, shapley_report):
    path = shapley_report
    assert path == shapley_run / "report.html"
    page = path.read_text(encoding="utf-8")
    sources = IMG.findall(page)
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must not reach the network"
    for key in ("run", "layers", "units", "spatial", "interactions", "specialists", "gallery"):
        assert "<img" in _section(page, key) or "<svg" in _section(page, key) or key in ("run", "specialists"), key
    assert 'class="notice"' not in page
    pngs = sorted(p.stem for p in (shapley_run / "figures").glob("*.png"))
    svgs = sorted(p.stem for p in (shapley_run / "figures").glob("*.svg"))
    inline = re.findall(r'<figure [^>]*id="fig-([^"]+)"><div class="svg"><svg', page)
    assert inline == ["layer-indices"]  # the layer bars are inline SVG: their whiskers are page elements
    assert len(pngs) == len(sources) + len(inline)
    assert set(svgs) == set(pngs) - {"gallery"}  # the photographic gallery is PNG only
    # the header names what was run
    header = _section(page, "run")
    for text in ("planted", "shapley-exact", "N = 32", "brightness", "factor ∈ [0.1, 1]", "colour (4×32×32 units)"):
        assert text in header, text


def test_sobol_report_shows_second_order_and_omits_the_unreachable_gallery(sobol_report):
    page = sobol_report.read_text(encoding="utf-8")
    assert "second-order S2" in _section(page, "interactions")
    assert 'id="spatial"' not in page  # channel means: no spatial maps
    gallery = _section(page, "gallery")
    assert "notice" in gallery and "in memory" in gallery
    assert "only interactions between factors explain" in _section(page, "layers")  # first-order remainder


def test_most_specialised_units_are_the_planted_ones(sobol_run):
    data = read_report_data(sobol_run)
    table = top_units(data.indices, "total_order", data.players, k=2)
    for unit, factor in PLANTED.items():
        best = table[(table.factor == factor)].iloc[0]
        # readout unit u and the fc logit 8·u carry the same planted dependence
        assert (best.layer, best.unit) in {("readout", str(unit)), ("fc", str(unit))}, (factor, best)
        assert best.estimate > 0.9 and best.ci_low > 0.5
    assert not ((table.layer == "readout") & (table.unit == "3")).any()  # the dead unit never ranks


def test_units_sort_by_dominant_factor_with_dead_units_last():
    values = np.array([[0.1, 0.9], [np.nan, np.nan], [0.8, 0.1], [0.2, 0.5], [0.95, 0.0]])
    dead = np.array([False, True, False, False, False])
    assert _sorted_units(values, dead).tolist() == [4, 2, 0, 3, 1]


def test_pooling_is_variance_weighted_and_skips_dead_units():
    index = np.array([[[0.2, 0.8], [0.6, 0.4]], [[np.nan, np.nan], [1.0, 0.0]]])  # (C=2, P=2, d=2)
    variance = np.array([[1.0, 3.0], [0.0, 2.0]])
    dead = np.array([[False, False], [True, False]])
    pooled, flags = channel_view(index, variance, dead, 2)
    np.testing.assert_allclose(pooled[0], (1.0 * index[0, 0] + 3.0 * index[0, 1]) / 4.0)
    np.testing.assert_allclose(pooled[1], index[1, 1])
    assert not flags.any()
    everything_dead = pool(index, variance, np.ones((2, 2), bool), 2, (0, 1))
    assert np.isnan(everything_dead).all()


def test_unit_labels_name_channel_and_position():
    assert unit_label(7, (5,)) == "7"
    assert unit_label(2 * 16 + 3 * 4 + 1, (4, 4, 4)) == "2 (3, 1)"


def test_partial_run_gets_a_visible_notice(tmp_path):
    out = tmp_path / "partial"
    run_sensitivity(_config(n=64, batch_size=20), model=planted_bundle(), images=planted_images(), out_dir=out,
                    stop_after_blocks=2, progress=False)
    assert json.loads((out / "run.json").read_text())["status"] == "partial"
    page = write_report(out).read_text(encoding="utf-8")
    assert "status: partial" in _section(page, "run") and 'class="notice"' in page
    assert "<img" in _section(page, "layers")


@pytest.mark.parametrize("damage", ["no maps", "damaged tables", "no run.json"])
def test_missing_or_damaged_files_yield_a_report_of_what_exists(sobol_run, tmp_path, damage):
    run = _copy(sobol_run, tmp_path)
    if damage == "no maps":
        (run / "maps.npz").unlink()
        expected, kept = "maps.npz is missing", "layers"
    elif damage == "damaged tables":
        (run / "layers.parquet").write_bytes(b"PAR1 not really")
        (run / "maps.npz").write_bytes((run / "maps.npz").read_bytes()[:100])  # truncated by a kill
        expected, kept = "layers.parquet could not be read", "specialists"
    else:
        (run / "run.json").unlink()
        expected, kept = "run.json is missing", "units"
    page = write_report(run).read_text(encoding="utf-8")
    notices = _section(page, "run")
    assert expected in notices
    assert f'id="{kept}"' in page


def test_a_folder_that_is_not_a_run_is_an_error(tmp_path):
    with pytest.raises(AugsenseError, match="not a run folder"):
        write_report(tmp_path)
    with pytest.raises(AugsenseError, match="does not exist"):
        write_report(tmp_path / "nowhere")


def _stamped(frame: pd.DataFrame, run: Path, name: str) -> None:
    """Write an analysis table as mask / single-class / maps do: stamped with the run's result set."""
    from augsense.io.provenance import current_result_set, write_parquet

    write_parquet(frame, run / f"{name}.parquet", result_set=current_result_set(run))


def test_results_of_other_analyses_get_their_sections(sobol_run, tmp_path):
    run = _copy(sobol_run, tmp_path, drop=("maps.npz",))
    factors = ["brightness", "saturation", "hflip"]
    rows = [{"factor": f, "kind": kind, "mask": "quantile", "q": q, "alpha": 0.0, "augmentation": aug,
             "top1": 0.8 - q / 2, "top5": 0.9} for f in factors for kind in ("guided", "random", "least")
            for q in (0.5, 0.7, 0.9) for aug in ("clean", f)]
    rows += [{"factor": None, "kind": "none", "mask": None, "q": np.nan, "alpha": np.nan, "augmentation": aug,
              "top1": 0.8, "top5": 0.95} for aug in ["clean"] + factors]  # the unmasked reference
    _stamped(pd.DataFrame(rows), run, "masking")
    _stamped(pd.DataFrame({"factor": factors, "alpha": 1.5, "mean_jaccard": [0.1, 0.02, 0.001], "threshold": 0.003,
                  "confirmed": [True, True, False]}), run, "single_class")
    _stamped(pd.DataFrame({"factor": factors, "guided": 0.2, "random_mean": 0.5}), run, "masking_gap")
    pd.DataFrame({"layer": "readout", "unit": np.repeat(np.arange(5), 3), "factor": factors * 5,
                  "effect_size": np.linspace(-1, 1, 15), "q_value": np.linspace(0, 0.2, 15)}).to_parquet(
        run / "contrast.parquet")
    _stamped(pd.DataFrame({"scope": "units", "factor_a": ["brightness", "brightness", "saturation"],
                  "factor_b": ["saturation", "hflip", "hflip"], "rho": [0.1, -0.3, 0.5], "p_value": 0.1,
                  "n": 5}), run, "map_statistics")
    (run / "single_class.json").write_text(json.dumps({"confirmed": [{"factor": "brightness", "classes": [1, 2]}]}))
    page = write_report(run).read_text(encoding="utf-8")
    for key in ("masking", "single_class", "contrast", "map_statistics"):
        section = _section(page, key)
        assert "<img" in section and "<table" in section, key
    assert "single_class.json" in _section(page, "single_class") and "classes" in _section(page, "single_class")
    assert "could not" not in page
    assert "masking_gap.parquet" in _section(page, "masking")
    assert "confirmed biases" in _section(page, "single_class")


def _contrast_into(run: Path, bundle) -> None:
    """augsense contrast written into the run folder with ``bundle`` (4 images, 2 draws per factor)."""
    from augsense.analyses.contrast import run_contrast

    run_contrast(_config(layers=["readout"]), model=bundle, images=planted_images(4),
                 out_dir=run, draws=2, progress=False)


def test_a_contrast_of_the_runs_own_network_is_shown_and_another_networks_is_not(sobol_run, tmp_path):
    run = _copy(sobol_run, tmp_path, drop=("maps.npz",))
    _contrast_into(run, planted_bundle())                     # the same weights as the run: its section is shown
    page = write_report(run).read_text(encoding="utf-8")
    assert "<table" in _section(page, "contrast") and "contrast.parquet not shown" not in page
    other = planted_bundle()
    with torch.no_grad():
        next(other.module.parameters()).add_(0.5)             # same architecture and names, other weights
    _contrast_into(run, other)
    page = write_report(run).read_text(encoding="utf-8")
    assert 'id="contrast"' not in page
    banner = re.search(r'<div class="banner" id="warnings"(.*?)</div>', page, re.S)
    assert banner and "contrast.parquet not shown: it was computed with other weights" in banner.group(1)
    info = json.loads((run / "contrast.json").read_text())   # written before the digest: shown, with a notice
    del info["model"]
    (run / "contrast.json").write_text(json.dumps(info))
    page = write_report(run).read_text(encoding="utf-8")
    assert "<table" in _section(page, "contrast") and "cannot be checked" in page
    (run / "contrast.json").write_text("[1, 2]")              # not an object: shown, with a notice
    assert "contrast.json is not a JSON object" in write_report(run).read_text(encoding="utf-8")
    (run / "contrast.json").unlink()                          # no record at all: shown, with a notice
    page = write_report(run).read_text(encoding="utf-8")
    assert "<table" in _section(page, "contrast") and "has no contrast.json beside it" in page


def test_unexpected_columns_give_a_table_without_a_figure(sobol_run, tmp_path):
    run = _copy(sobol_run, tmp_path, drop=("maps.npz", "layers.parquet"))
    _stamped(pd.DataFrame({"something": [1, 2], "else": ["a", "b"]}), run, "masking")
    section = _section(write_report(run).read_text(encoding="utf-8"), "masking")
    assert "<img" not in section and "<td>a</td>" in section


def test_cli_report_command(sobol_run, tmp_path, capsys):
    from augsense.cli import main

    run = _copy(sobol_run, tmp_path, drop=("maps.npz",))
    assert main(["report", str(run)]) == 0
    assert str(run / "report.html") in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _chromium() -> str:
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("no Chromium here: install Debian's `chromium` package (apt-get install -y chromium) to open "
                    "the report in a real browser")
    pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed (pip install playwright)")
    return executable


def test_report_opens_in_a_real_browser_with_every_figure_loaded(shapley_report, tmp_path):
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    page_path = shapley_report
    messages: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: messages.append(f"{m.type}: {m.text}") if m.type in ("error", "warning")
                    else None)
            page.on("pageerror", lambda e: messages.append(f"page error: {e}"))
            page.on("request", lambda r: messages.append(f"network: {r.url}") if not r.url.startswith(("file:", "data:"))
                    else None)
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt])")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(images) >= 6
    assert all(complete and width > 0 for complete, width, _ in images), images
    assert messages == []
    assert (tmp_path / "report.png").stat().st_size > 10_000


# -- the numbers on the page are the numbers in the tables ----------------------------------------
CELL = re.compile(r"<t([hd])>(.*?)</t[hd]>", re.S)
INTERVAL = re.compile(r"^\[(-?\d+\.\d{3}), (-?\d+\.\d{3})\]$")


def _html_table(fragment: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the first table in ``fragment``, cell text unescaped."""
    import html as _html

    table = re.search(r"<table>(.*?)</table>", fragment, re.S)
    assert table, "no table"
    thead = re.search(r"<thead>(.*?)</thead>", table.group(1), re.S).group(1)
    head = [_html.unescape(t) for _, t in CELL.findall(thead)]
    body = re.search(r"<tbody>(.*?)</tbody>", table.group(1), re.S).group(1)
    rows = [[_html.unescape(t) for _, t in CELL.findall(row)] for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)]
    return head, rows


def _same_number(text: str, value: float) -> bool:
    """A 3-decimal or 3-significant-digit rendering of ``value``."""
    return abs(float(text) - value) <= 5e-4 + 5e-3 * abs(value)


def _same_interval(text: str, low: float, high: float) -> bool:
    match = INTERVAL.match(text.strip())
    assert match, f"{text!r} is not an interval [low, high] with 3 decimals"
    return abs(float(match.group(1)) - low) <= 5e-4 + 1e-12 and abs(float(match.group(2)) - high) <= 5e-4 + 1e-12


def _flat_unit(label: str, shape: list[int] | None) -> int:
    """Inverse of ``unit_label``: "c" or "c (y, x)" -> flat unit number."""
    numbers = [int(x) for x in re.findall(r"\d+", label)]
    return numbers[0] if len(numbers) == 1 else int(np.ravel_multi_index(numbers, tuple(shape)))


@pytest.mark.parametrize("run, quantity, known", [
    ("shapley", "shapley", ("hflip", "readout", "2")),
    ("sobol", "total_order", ("saturation", "readout", "1"))])
def test_specialist_rows_show_the_estimate_and_interval_of_indices_parquet(run, quantity, known, request):
    """Every row of the specialists table, parsed from report.html, matches indices.parquet: index and CI."""
    folder = request.getfixturevalue(f"{run}_run")
    page = request.getfixturevalue(f"{run}_report").read_text(encoding="utf-8")
    head, rows = _html_table(_section(page, "specialists"))
    indices = read_report_data(folder).indices  # per-element layers: rows rebuilt from maps.npz
    indices = indices[indices["quantity"] == quantity].set_index(["layer", "unit", "factor"])
    shapes = {k: v.get("unit_shape") for k, v in json.loads((folder / "run.json").read_text())["layers"].items()}
    column = {name: head.index(name) for name in ("factor", "layer", "unit", "CI")}
    value_column = head.index({"shapley": "Shapley effect", "total_order": "total-order ST"}[quantity])
    assert 3 <= len(rows) <= 9  # at most 3 per factor: units the factor leads (positive margin)
    widths, seen = [], set()
    for row in rows:
        factor, layer, label = row[column["factor"]], row[column["layer"]], row[column["unit"]]
        truth = indices.loc[(layer, _flat_unit(label, shapes[layer]), factor)]
        assert _same_number(row[value_column], truth["estimate"]), (row, truth)
        assert _same_interval(row[column["CI"]], truth["ci_low"], truth["ci_high"]), (row, truth)
        widths.append(truth["ci_high"] - truth["ci_low"])
        seen.add((factor, layer, label))
    assert known in seen  # the planted unit is listed for its factor
    if run == "shapley":  # per-position colour units: real intervals, not the planted units' [1.000, 1.000]
        assert max(widths) > 0.05


@pytest.mark.parametrize("run", ["shapley", "sobol"])
def test_layer_table_shows_the_estimate_and_interval_of_layers_parquet(run, request):
    """Each cell "estimate [low, high]" of the layer table matches layers.parquet, and no row is missing."""
    from augsense.report.data import QUANTITY_LABELS

    folder = request.getfixturevalue(f"{run}_run")
    page = request.getfixturevalue(f"{run}_report").read_text(encoding="utf-8")
    section = _section(page, "layers")
    head, rows = _html_table(section[section.index("<details>"):])
    layers = pd.read_parquet(folder / "layers.parquet")
    layers = layers[layers["factor"].notna()].set_index(["layer", "factor", "quantity"])
    labels = {label: q for q, label in QUANTITY_LABELS.items()}
    quantities = [labels[h] for h in head[2:]]
    assert quantities and set(quantities) <= set(layers.index.get_level_values("quantity"))
    shown = set()
    for row in rows:
        layer, factor = row[0], row[1]
        for quantity, cell in zip(quantities, row[2:]):
            truth = layers.loc[(layer, factor, quantity)]
            estimate, _, interval = cell.partition(" ")
            assert _same_number(estimate, truth["estimate"]), (row, truth)
            assert _same_interval(interval, truth["ci_low"], truth["ci_high"]), (row, truth)
            shown.add((layer, factor, quantity))
    expected = {key for key in layers.index if key[2] in quantities}
    assert shown == expected


def test_specialists_rank_by_margin_over_the_next_factor_and_show_the_variance():
    """A unit with a high index that another factor dominates never ranks; the widest lead ranks first."""
    rows = []
    units = {0: (0.40, 0.10), 1: (0.30, 0.90), 2: (0.95, 0.01), 3: (0.60, 0.10)}  # unit: (a, b) estimates
    for unit, (a, b) in units.items():
        for factor, value in (("a", a), ("b", b)):
            rows.append({"layer": "L", "unit": unit, "factor": factor, "quantity": "total_order", "estimate": value,
                         "ci_low": value - 0.05, "ci_high": value + 0.05, "dead": False})
        rows.append({"layer": "L", "unit": unit, "factor": None, "quantity": "variance", "estimate": 10.0 + unit,
                     "ci_low": np.nan, "ci_high": np.nan, "dead": False})
    table = top_units(pd.DataFrame(rows), "total_order", ["a", "b"], k=3)
    a = table[table.factor == "a"]
    assert a["unit"].tolist() == ["2", "3", "0"]  # margins 0.85, 0.45, 0.25; unit 1 (0.30 vs 0.90) is b's
    np.testing.assert_allclose(a["margin"], [0.90 - 0.01, 0.55 - 0.10, 0.35 - 0.10])
    np.testing.assert_allclose(a["variance"], [12.0, 13.0, 10.0])
    assert a["runner_up"].tolist() == ["b", "b", "b"]
    assert table[table.factor == "b"]["unit"].tolist() == ["1"]


def _open(playwright, executable: str, path: Path, errors: list[str]):
    browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("request", lambda r: errors.append(f"network: {r.url}") if not r.url.startswith(("file:", "data:"))
            else None)
    page.goto(path.resolve().as_uri(), wait_until="load")
    return browser, page


def test_screenshot_of_the_layer_bars_shows_an_interval_mark_on_every_bar(sobol_run, sobol_report, tmp_path):
    """Each (layer, factor, quantity) of layers.parquet has a whisker in the page, and it is drawn: dark pixels."""
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    layers = pd.read_parquet(sobol_run / "layers.parquet")
    rows = layers[layers["factor"].notna() & layers["quantity"].isin(["first_order", "total_order"])
                  & np.isfinite(layers["ci_low"]) & np.isfinite(layers["ci_high"])]
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser, page = _open(playwright, executable, sobol_report, errors)
        try:
            figure = page.locator("#fig-layer-indices")
            figure.scroll_into_view_if_needed()
            ids = page.evaluate("() => [...document.querySelectorAll('#fig-layer-indices svg g[id^=\"ci-\"]')]"
                                ".map(g => g.id)")
            expected = {f"ci-{r.quantity}-{r.layer}-{r.factor}" for r in rows.itertuples()}
            assert set(ids) == expected and len(ids) == len(expected)
            shot = tmp_path / "layers.png"
            figure.screenshot(path=str(shot))
            origin = figure.bounding_box()
            image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
            wide = 0
            for row in rows.itertuples():
                box = page.locator(f'[id="ci-{row.quantity}-{row.layer}-{row.factor}"]').bounding_box()
                assert box is not None
                if row.ci_high - row.ci_low < 0.03:  # a very narrow interval: a few pixels, still an element
                    continue
                wide += 1
                x0, x1 = int(box["x"] - origin["x"]) + 1, int(box["x"] - origin["x"] + box["width"]) - 1
                y0, y1 = int(box["y"] - origin["y"]) - 1, int(box["y"] - origin["y"] + box["height"]) + 2
                patch = image[max(y0, 0):y1, max(x0, 0):x1]
                dark = (patch.max(axis=2) < 70).any(axis=0)  # a black whisker across the interval
                assert x1 - x0 > 3 and dark.mean() > 0.9, (row.layer, row.factor, row.quantity, dark.mean())
            assert wide >= 3
        finally:
            browser.close()
    assert errors == []


def test_explorer_on_a_real_run_shows_the_unit_of_indices_parquet(shapley_run, shapley_report):
    """Search a per-position unit of a real run, select it: the page shows indices.parquet's numbers and maps."""
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    indices = read_report_data(shapley_run).indices  # per-element layers: rows rebuilt from maps.npz
    shapley = indices[(indices["quantity"] == "shapley") & (indices["layer"] == "colour")]
    unit = int(np.ravel_multi_index((2, 5, 9), (4, 32, 32)))
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser, page = _open(playwright, executable, shapley_report, errors)
        try:
            page.wait_for_selector('#ex-root[data-ready="1"]')
            page.select_option("#ex-layer", label="colour (4096 units)")
            page.fill("#ex-search", "2 (5, 9)")
            page.wait_for_function("() => document.getElementById('ex-count').dataset.count === '1'")
            page.click(".ex-row")
            page.wait_for_selector("#ex-title")
            assert page.get_attribute("#ex-title", "data-unit") == "2 (5, 9)"
            for row in shapley[shapley["unit"] == unit].itertuples():
                cell = page.inner_text(f'#ex-detail tr[data-factor="{row.factor}"] td[data-quantity="shapley"]')
                numbers = [float(t) for t in re.findall(r"-?\d+\.\d+", cell)][:3]
                np.testing.assert_allclose(numbers, [row.estimate, row.ci_low, row.ci_high], atol=2e-3)
            players = json.loads((shapley_run / "run.json").read_text())["players"]
            assert page.locator("canvas.ex-map").count() == len(players)  # the channel's map per factor
        finally:
            browser.close()
    assert errors == []


def test_factor_colours_are_fixed_by_name_not_by_run_order():
    from augsense.report.palette import BUILTIN_COLOURS, factor_colours

    one = factor_colours(["hue", "brightness", "my_blur", "order"])
    other = factor_colours(["brightness", "my_blur", "hue"])
    assert one["hue"] == other["hue"] == BUILTIN_COLOURS["hue"] and one["my_blur"] == other["my_blur"]
    assert one["order"] == "#9e9e9e"
    users = [f"user_{i}" for i in range(12)]  # more user factors than hash slots avoid collisions by chance
    forward, backward = factor_colours(users), factor_colours(users[::-1])
    assert forward == backward and len(set(forward.values())) == len(users)
    assert set(forward.values()).isdisjoint(BUILTIN_COLOURS.values())


def test_numbers_that_round_to_zero_print_without_a_sign():
    from augsense.report.page import fixed, format_number, interval

    assert interval(-0.0002, -0.0004, 0.0) == "0.000 [0.000, 0.000]"
    assert fixed(-0.0126) == "-0.013" and format_number(-0.0) == "0.000"


def test_wilson_intervals_match_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    from augsense.report.extras import wilson

    k, n = np.array([0, 3, 17, 20]), np.array([20, 20, 20, 20])
    low, high = wilson(k, n)
    ref_low, ref_high = proportion_confint(k, n, alpha=0.05, method="wilson")
    np.testing.assert_allclose(low, ref_low, atol=1e-9)
    np.testing.assert_allclose(high, ref_high, atol=1e-9)


def test_heat_map_marks_values_outside_the_unit_interval_and_profile_bands_are_whole(sobol_run, tmp_path):
    from augsense.report.figures import _profile_limits, unit_heatmap

    run = _copy(sobol_run, tmp_path)
    data = read_report_data(run)
    data.maps["readout/total_order"] = data.maps["readout/total_order"].copy()
    data.maps["readout/total_order"][0, 0] = 1.41
    data.maps["readout/total_order"][1, 0] = -0.2
    fig = unit_heatmap(data, "readout", "total_order")
    bar = fig.axes[-1]
    values = data.maps["readout/total_order"][~data.maps["readout/dead"].astype(bool)]
    above, below = int((values > 1).sum()), int((values < 0).sum())
    assert above >= 1 and below >= 1
    assert f"> 1 ({above})" in bar.get_ylabel() and f"< 0 ({below})" in bar.get_ylabel()
    assert bar.collections or bar.patches  # the colour bar with its extend arrows
    ticks = [t.get_text() for t in fig.axes[2].get_yticklabels()]  # the strip carries the unit IDs
    assert sorted(ticks, key=int) == [str(u) for u in range(len(ticks))]
    table = pd.DataFrame({"estimate": [0.2, -0.08], "ci_low": [0.1, -0.62], "ci_high": [0.3, 1.3]})
    bottom, top, cut = _profile_limits(table)
    assert bottom <= -0.62 and top >= 1.3 and not cut


def test_masking_figure_has_a_panel_per_alpha_with_q_on_the_x_axis_and_binomial_whiskers():
    from matplotlib.container import ErrorbarContainer

    from augsense.report.extras import masking_figure, wilson

    factors = ["brightness", "hflip"]
    rows = [{"factor": f, "kind": kind, "draw": draw, "mask": "quantile", "q": q, "alpha": alpha,
             "augmentation": "clean", "n_images": 20, "top1": (10 + draw) / 20}
            for f in factors for kind, draws in (("guided", 1), ("random", 2)) for draw in range(draws)
            for q in (0.5, 0.9) for alpha in (0.0, 1.5)]
    rows.append({"factor": None, "kind": "none", "draw": 0, "mask": "none", "q": np.nan, "alpha": np.nan,
                 "augmentation": "clean", "n_images": 20, "top1": 0.85})
    fig = masking_figure(pd.DataFrame(rows), factors)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title().split(";")[0] for ax in panels] == ["α = 0 (damage)", "α = 1.5 (amplify)"]
    for ax in panels:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "0.9"]
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        assert len(bars) == 4  # guided and random per factor, each with whiskers
        random = next(c for c in bars if c.lines[0].get_linestyle() == "--")
        y = random.lines[0].get_ydata()
        np.testing.assert_allclose(y, [21 / 40, 21 / 40])  # draws pooled: (10 + 11) / 40
        low, high = wilson(np.array([21]), np.array([40]))
        segments = random.lines[2][0].get_segments()
        np.testing.assert_allclose([segments[0][0][1], segments[0][1][1]], [low[0], high[0]])
        assert any(abs(line.get_ydata()[0] - 0.85) < 1e-9 for line in ax.get_lines() if len(line.get_ydata()) == 2
                   and line.get_ydata()[0] == line.get_ydata()[1])  # the unmasked reference


def test_layer_bars_draw_negative_estimates_as_negative_and_label_values_above_one(sobol_run, tmp_path):
    from augsense.report.figures import layer_indices

    data = read_report_data(_copy(sobol_run, tmp_path))
    table = data.layers
    first = table.index[(table["quantity"] == "first_order") & table["factor"].notna()]
    table.loc[first[0], ["estimate", "ci_low", "ci_high"]] = [-0.08, -0.2, 0.04]
    table.loc[first[1], ["estimate", "ci_low", "ci_high"]] = [1.12, 0.9, 1.3]
    fig = layer_indices(data)
    bars = {p.get_gid(): p for ax in fig.axes for p in ax.patches if p.get_gid()}
    negative, above = table.loc[first[0]], table.loc[first[1]]
    bar = bars[f"bar-first_order-{negative.layer}-{negative.factor}"]
    assert bar.get_width() == pytest.approx(-0.08)  # drawn left of 0, not as 0
    whiskers = {line.get_gid(): line for ax in fig.axes for line in ax.get_lines() if line.get_gid()}
    np.testing.assert_allclose(whiskers[f"ci-first_order-{negative.layer}-{negative.factor}"].get_xdata(),
                               [-0.2, 0.04])
    labels = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "1.12 > 1" in " ".join(labels) and bars[f"bar-first_order-{above.layer}-{above.factor}"].get_width() > 1
    assert fig.axes[0].get_xlim()[0] <= -0.2 and fig.axes[0].get_xlim()[1] >= 1.3  # whole intervals
