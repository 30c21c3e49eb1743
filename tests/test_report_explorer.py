"""The unit explorer of report.html, driven in headless Chromium on a per-position run of 204 810 units.

The run folder is written in the run's own format (``write_result_tables``: indices.parquet,
layers.parquet, maps.npz; run.json by hand) from planted arrays, so the browser test needs no
network forward passes: channel c of layer ``conv`` (50 × 64 × 64 units) is dominated by factor
c mod 3 with an index that grows along the columns, channel 49 is dead, and a few units sit below
0 or above 1. Every count and value the page shows is checked against those arrays.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from augsense.estimators.results import SensitivityResult
from augsense.io.results import write_result_tables
from augsense.report.html import write_report
from augsense.report.palette import factor_colours
from test_report import CHROMIUM_ARGS, _chromium

PLAYERS = ["brightness", "hue", "rotation"]
SHAPE = (50, 64, 64)
FC = 10
LIMIT_S = 2.0  # each interaction, in the browser, on 204 810 units


def _planted(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-unit first/total-order estimates (m, 3), bounds, variances and dead flags of conv then fc."""
    c, y, x = np.indices(SHAPE).reshape(3, -1)
    m = c.size + FC
    total = np.full((m, 3), 0.05) + rng.uniform(-0.04, 0.04, (m, 3))
    dominant = np.concatenate([c % 3, np.arange(FC) % 3])
    strength = np.concatenate([0.3 + 0.6 * x / 63, np.linspace(0.5, 0.95, FC)])
    total[np.arange(m), dominant] = strength
    total[7 * 4096 + 3 * 64 + 5] = [1.25, 0.02, -0.08]  # channel 7 (row 3, column 5): above 1, below 0
    dead = np.zeros(m, bool)
    dead[49 * 4096:50 * 4096] = True
    total[dead] = np.nan
    first = total * 0.8
    half = rng.uniform(0.01, 0.08, (m, 3))
    ci = lambda v: np.stack([v - half, v + half])  # noqa: E731
    variance = np.where(dead, 0.0, rng.uniform(0.5, 2.0, m))
    return {"first_order": first, "total_order": total, "first_order_ci": ci(first), "total_order_ci": ci(total),
            "variance": variance, "dead": dead}


def build_run(out: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A complete run folder of the planted arrays; returns them (flat units: conv then fc)."""
    arrays = _planted(np.random.default_rng(seed))
    m = arrays["dead"].size
    layer_of = np.repeat([0, 1], [m - FC, FC])
    pooled = {}
    for q in ("first_order", "total_order"):
        w = arrays["variance"][:, None]
        values = np.stack([np.nansum((arrays[q] * w)[layer_of == g], 0) / w[layer_of == g].sum() for g in (0, 1)])
        pooled[q], pooled[q + "_ci"] = values, np.stack([values - 0.02, values + 0.02])
    result = SensitivityResult(
        n=1024, mean=np.zeros(m), variance=arrays["variance"], cv=np.zeros(m), dead=arrays["dead"],
        first_order=arrays["first_order"], first_order_ci=arrays["first_order_ci"],
        total_order=arrays["total_order"], total_order_ci=arrays["total_order_ci"],
        aggregated=SensitivityResult(n=1024, mean=np.zeros(2), variance=np.ones(2), cv=np.zeros(2),
                                     dead=np.zeros(2, bool), **pooled))
    layers = ["conv", "fc"]
    shapes = {"conv": SHAPE, "fc": (FC,)}
    write_result_tables(result, out, players=PLAYERS, layers=layers,
                        slices={"conv": slice(0, m - FC), "fc": slice(m - FC, m)}, unit_shapes=shapes)
    info = {"status": "complete", "players": PLAYERS,
            "config": {"model": "planted", "layers": layers, "factors": PLAYERS, "estimator": "sobol", "n": 1024,
                       "reduction": "none", "confidence": 0.95, "images": "python"},
            "layers": {k: {"unit_shape": list(v), "units": int(np.prod(v))} for k, v in shapes.items()},
            "images": {"count": 64, "sources": [], "skipped": []}, "warnings": []}
    (out / "run.json").write_text(json.dumps(info))
    return arrays


@pytest.fixture(scope="module")
def big_report(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    out = tmp_path_factory.mktemp("explorer_run")
    arrays = build_run(out)
    return write_report(out), arrays


def _f16(value: np.ndarray) -> np.ndarray:
    return np.asarray(value, dtype=np.float16).astype(np.float64)


def _timed(page, action, predicate: str, argument=None) -> float:
    """Seconds from the action until ``predicate`` holds in the page (the list and counts redrawn)."""
    started = time.perf_counter()
    action()
    page.wait_for_function(predicate, arg=argument, timeout=10_000)
    return time.perf_counter() - started


def test_explorer_payload_is_compact(big_report):
    page, arrays = big_report
    size = page.stat().st_size
    units = arrays["dead"].size
    # 2 quantities × (estimate, low, high) × 3 factors × float16, base64 (4/3), plus figures
    assert size < units * 3 * 6 * 2 * 4 / 3 + units * 8 + 4_000_000, size


def test_explorer_filters_selects_and_shows_what_the_arrays_hold(big_report, tmp_path):
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    path, arrays = big_report
    total = arrays["total_order"]
    m = total.shape[0]
    dead = arrays["dead"]
    dominant = np.where(dead, -1, np.nan_to_num(_f16(total), nan=-np.inf).argmax(axis=1))
    conv = np.arange(m) < m - FC
    errors: list[str] = []
    timings: dict[str, float] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: errors.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
            page.goto(path.resolve().as_uri(), wait_until="load")
            page.wait_for_selector('#ex-root[data-ready="1"]', timeout=30_000)
            count = lambda: int(page.get_attribute("#ex-count", "data-count"))  # noqa: E731
            assert count() == int((~dead).sum())  # dead units hidden until asked for

            changed = "n => document.getElementById('ex-count').dataset.count !== n"
            timings["layer"] = _timed(page, lambda: page.select_option("#ex-layer", "0"), changed, str(count()))
            assert count() == int((conv & ~dead).sum())
            timings["dominant"] = _timed(page, lambda: page.select_option("#ex-dominant", "1"), changed, str(count()))
            assert count() == int((conv & (dominant == 1)).sum())
            timings["threshold"] = _timed(page, lambda: page.fill("#ex-threshold", "0.7"), changed, str(count()))
            expected = conv & (dominant == 1) & (_f16(total[:, 1]) >= 0.7)
            assert count() == int(expected.sum())
            rows = page.locator(".ex-row")
            assert 0 < rows.count() < 60  # virtualised: only the visible rows exist
            shown = [int(u) for u in rows.evaluate_all("rs => rs.map(r => r.dataset.unit)")]
            assert all(expected[u] for u in shown) and shown == sorted(shown)

            timings["sort"] = _timed(page, lambda: page.select_option("#ex-sort", "value"),
                                     "() => document.getElementById('ex-root').dataset.lastMs !== undefined")
            first = int(page.locator(".ex-row").first.get_attribute("data-unit"))
            assert _f16(total[first, 1]) == _f16(total[expected, 1]).max()
            second = int(page.locator(".ex-row").nth(1).get_attribute("data-unit"))
            page.click(".ex-row >> nth=0")
            page.press("#ex-list", "ArrowDown")  # the keyboard walks the filtered, sorted list
            page.wait_for_function(f"() => document.querySelector('.ex-row.sel')?.dataset.unit === '{second}'")
            channel, row, column = np.unravel_index(second, SHAPE)
            assert page.get_attribute("#ex-title", "data-unit") == f"{channel} ({row}, {column})"

            deep = int(expected.sum() * 0.8)  # scrolled far down, the rows there are drawn
            page.locator("#ex-list").evaluate(f"l => {{ l.scrollTop = {deep} * 22; "
                                              "l.dispatchEvent(new Event('scroll')); }")
            page.wait_for_function(f"() => [...document.querySelectorAll('.ex-row')].some(r => "
                                   f"parseFloat(r.style.top) >= {deep} * 22)")

            # search one unit by channel and position, then select it
            page.select_option("#ex-dominant", "-1")
            page.fill("#ex-threshold", "")
            timings["search"] = _timed(page, lambda: page.fill("#ex-search", "7 3 5"),
                                       "() => document.getElementById('ex-count').dataset.count === '1'")
            unit = 7 * 4096 + 3 * 64 + 5
            timings["select"] = _timed(page, lambda: page.click(f'.ex-row[data-unit="{unit}"]'),
                                       "() => document.querySelectorAll('canvas.ex-map').length === 3")
            assert page.get_attribute("#ex-title", "data-unit") == "7 (3, 5)"
            for j, factor in enumerate(PLAYERS):
                cell = page.inner_text(f'#ex-detail tr[data-factor="{factor}"] td[data-quantity="total_order"]')
                low, high = arrays["total_order_ci"][:, unit, j]
                numbers = [float(t) for t in re.findall(r"-?\d+\.\d+", cell)]
                np.testing.assert_allclose(numbers, _f16([total[unit, j], low, high]), atol=6e-4)
            assert "> 1" in page.inner_text('#ex-detail tr[data-factor="brightness"]')
            assert page.locator("#ex-detail .ex-ci").count() == 3  # an interval whisker per factor
            # the map of the dominant factor: the pixel of (row 40, column 60) has its viridis colour
            scale = page.evaluate("() => document.querySelector('canvas.ex-map').width / 64")
            rgb = page.evaluate(f"() => Array.from(document.querySelectorAll('canvas.ex-map')[1].getContext('2d')"
                                f".getImageData({60 * scale + scale // 2}, {40 * scale + scale // 2}, 1, 1).data)")
            from matplotlib import colormaps

            value = _f16(total[7 * 4096 + 40 * 64 + 60, 1])
            expected_rgb = np.array(colormaps["viridis"](min(63, int(value * 64)) / 63)[:3]) * 255
            np.testing.assert_allclose(rgb[:3], expected_rgb, atol=2)
            page.locator("#ex-root").screenshot(path=str(tmp_path / "explorer.png"))
        finally:
            browser.close()
    assert errors == []
    slow = {k: round(v, 3) for k, v in timings.items() if v >= LIMIT_S}
    assert not slow, f"interactions over {LIMIT_S} s on {m} units: {slow}"
    assert (tmp_path / "explorer.png").stat().st_size > 5_000


def test_explorer_colours_follow_the_palette(big_report):
    path, _ = big_report
    text = path.read_text(encoding="utf-8")
    payload = json.loads(text.split('<script type="application/json" id="ex-data">', 1)[1].split("</script>", 1)[0])
    colours = factor_colours(PLAYERS)
    assert payload["colours"] == [colours[p] for p in PLAYERS]
    assert payload["units"] == int(np.prod(SHAPE)) + FC
    assert payload["quantities"] == ["total_order", "first_order"] and payload["notes"] == []


def test_explorer_leaves_out_what_does_not_fit_the_page_and_says_so(tmp_path):
    from augsense.report.data import read_report_data
    from augsense.report.explorer import explorer_payload

    build_run(tmp_path)
    data = read_report_data(tmp_path)
    units = int(np.prod(SHAPE)) + FC
    full = explorer_payload(data)
    assert full["intervals"] == ["total_order", "first_order"]
    fewer = explorer_payload(data, budget=units * 3 * 2 * 4 + units * 5)  # room for 4 float16 arrays
    assert fewer["quantities"] == ["total_order", "first_order"] and fewer["intervals"] == ["total_order"]
    trimmed = explorer_payload(data, budget=units * 3 * 2 * 3 + units * 5)  # room for 3
    assert trimmed["quantities"] == ["total_order"] and trimmed["intervals"] == ["total_order"]
    assert [n.split(" (")[0] for n in trimmed["notes"]] == ["intervals of first-order S left out",
                                                           "first-order S left out"]
    assert "too_large" in explorer_payload(data, budget=units)
