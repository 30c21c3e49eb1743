"""``write_report(run_dir)``: one self-contained HTML page of what a run found (SPEC §7).

Sections, each omitted cleanly when the run lacks its data: header (provenance), layer-aggregated
indices (stacked shares and depth profile), unit × factor heat maps, spatial maps (per-unit runs),
interaction matrices, the most specialised units, a gallery of what each factor does, and the
masking / single-class / contrast / map-statistics results when their files exist.
"""

from __future__ import annotations

import datetime as _dt
import html
import os
import time
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd

from augsense.errors import AugsenseError
from augsense.estimators.results import out_of_unit_range
from augsense.report import figures
from augsense.report.data import QUANTITY_LABELS, ReportData, read_report_data
from augsense.report.extras import COMPANIONS, EXTRA_SECTIONS, render_extra
from augsense.report.page import Page, ReportWriteError, fixed, format_number, interval
from augsense.report.palette import factor_colours
from augsense.report.specialists import top_units
from augsense.report.trust import (input_warnings, skipped_warning, top1_reason,
                                   wide_interval_warning)

REPORT_NAME = "report.html"
FIGURE_FOLDER = "figures"


def write_report(run_dir: Path, warnings: list[str] | None = None) -> Path:
    """Write ``run_dir/report.html`` (and ``run_dir/figures/*.png|svg``); return the page's path.

    ``warnings``: a list that receives the banner's warnings (for the console).

    Tolerates partial and damaged run folders (a visible notice says what is missing); raises
    ``AugsenseError`` only when ``run_dir`` is not a run folder at all.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()
    data = read_report_data(run_dir)
    page = Page(run_dir / FIGURE_FOLDER)
    with matplotlib.rc_context(figures.STYLE):
        _header(page, data)
        for render in (_layer_section, _unit_section, _spatial_section, _interaction_section, _specialist_section,
                       _explorer_section, _gallery_section, _extra_sections):
            try:
                render(page, data)
            except ReportWriteError:
                raise  # the disk is full: nothing more can be written
            except Exception as error:  # noqa: BLE001 - show the rest of the run rather than nothing
                page.notice(page.sections[0], f"A part of the report ({render.__name__.strip('_')}) could not be "
                                              f"drawn: {type(error).__name__}: {error}")
    elapsed = time.perf_counter() - started
    path = run_dir / REPORT_NAME
    tmp = run_dir / f".{REPORT_NAME}.tmp{os.getpid()}"  # a name of this process's own
    if warnings is not None:
        warnings.extend(banner_warnings(data))
    document = _document(data, page, elapsed)
    try:
        tmp.write_text(document, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as error:  # disk full …: one line, no temporary file left behind
        tmp.unlink(missing_ok=True)
        raise AugsenseError(f"cannot write the report into {str(run_dir)!r}: {error.strerror or error} (free space, "
                            "then run `augsense report` again)") from None
    _remove_stale_figures(page)
    return path


def _remove_stale_figures(page: Page) -> None:
    """Delete figures/*.png|svg an earlier report wrote that this one did not (a renamed or vanished figure)."""
    written = {p.resolve() for p in page.saved}
    if page.figure_folder.is_dir():
        for file in page.figure_folder.iterdir():
            if file.suffix in (".png", ".svg") and file.resolve() not in written:
                file.unlink(missing_ok=True)


def _extra_sections(page: Page, data: ReportData) -> None:
    for name in EXTRA_SECTIONS:
        if name not in data.extras and name not in data.extra_json:
            continue
        section = page.section(name, EXTRA_SECTIONS[name][0])
        if name in data.extras:
            render_extra(page, section, name, data.extras[name], data.players)
        for companion in COMPANIONS.get(name, ()):
            if companion in data.extras:
                page.raw(section, f"<details><summary>{html.escape(companion)}.parquet</summary>")
                page.table(section, data.extras[companion], f"{companion}.parquet")
                page.raw(section, "</details>")
        if name in data.extra_json:
            page.raw(section, "<details><summary>" + html.escape(f"{name}.json") + "</summary><pre>"
                     + html.escape(_json_text(data.extra_json[name])) + "</pre></details>")
    from augsense.report.paper_figures import paper_sections  # the paper's figure types (LDA, dendrogram, …)

    paper_sections(page, data)


def _json_text(value: Any) -> str:
    import json

    return json.dumps(value, indent=2, default=str)[:20000]


def _header(page: Page, data: ReportData) -> None:
    info = data.info
    config: dict[str, Any] = info.get("config") or {}
    section = page.section("run", "The run")
    for notice in data.notices:
        page.notice(section, notice)
    model = info.get("model") or {}
    outside = _outside_unit_interval(data)
    if outside:
        page.notice(section, outside)
    images = info.get("images") or {}
    timings = info.get("timings") or {}
    design = info.get("design") or {}
    layer_info = info.get("layers") or {}
    layers = ", ".join(f"{name} ({'×'.join(str(s) for s in entry.get('unit_shape', [])) or '?'} units)"
                       if isinstance(entry, dict) else str(name) for name, entry in layer_info.items())
    rows: list[tuple[str, str]] = [
        ("status", data.status),
        ("model", f"{model.get('name', config.get('model', '?'))}"
                  + (f", input {model['input_size']} px" if model.get("input_size") else "")
                  + (f", weights {model.get('weights') or config.get('weights')}"
                     if model.get("weights") or config.get("weights") else "")),
        ("layers", layers or ", ".join(config.get("layers", [])) or "?"),
        ("reduction / output", f"{config.get('reduction', '?')} / {config.get('output', '?')}"),
        ("images", f"{images.get('count', '?')} from {config.get('images', '?')}"
                   + (f" ({len(images['skipped'])} skipped)" if images.get("skipped") else "")
                   + f"; mode {config.get('image_mode', '?')}, preprocessing {config.get('preprocessing', '?')}"),
        ("estimator", f"{config.get('estimator', '?')}, N = {config.get('n', '?')}"
                      + (f" ({design['evaluations']} evaluations)" if design.get("evaluations") else "")
                      + f", seed {config.get('seed', '?')}, confidence {config.get('confidence', '?')}"),
        ("clean top-1", format_number(info["clean_top1"]) if info.get("clean_top1") is not None
         else top1_reason(False, info.get("warnings") or [])),
        ("runtime", (f"{timings['total_s']:.1f} s" if "total_s" in timings else "?")
                    + (f", {timings['images_per_s']:.1f} images/s" if "images_per_s" in timings else "")
                    + f" on {info.get('device', '?')}" + (f", {info['world_size']} processes"
                                                          if (info.get('world_size') or 1) > 1 else "")),
        ("versions", ", ".join(f"{k} {v}" for k, v in (info.get("versions") or {}).items() if k != "platform")
         or "?"),
    ]
    page.raw(section, '<table class="meta">' + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows) + "</table>")
    factors = (info.get("factors") or {}).get("factors") or []
    if factors:
        colours = factor_colours(data.players or [f.get("name", "") for f in factors if isinstance(f, dict)])
        body = []
        for spec in factors:
            if not isinstance(spec, dict):
                continue
            name = str(spec.get("name", "?"))
            params = ", ".join(f"{p['name']} ∈ [{p['low']:g}, {p['high']:g}]{(' ' + p['unit']) if p.get('unit') else ''}"
                               for p in spec.get("parameters", [])) or "none (on/off)"
            switch = f"on with p = {spec.get('p', 0.5):g}" if spec.get("switch") else "always on"
            swatch = f'<span class="swatch" style="background:{colours.get(name, "#000")}"></span>'
            body.append(f"<tr><td>{swatch}{html.escape(name)}</td><td>{html.escape(params)}</td>"
                        f"<td>{html.escape(switch)}</td></tr>")
        order = (info.get("factors") or {}).get("order")
        extra = [p for p in data.players if p in ("order", "image")]
        caption = ("Factors (colour used in every figure)" + (f"; composition order {' → '.join(order)}" if order else "")
                   + (f"; extra players: {', '.join(extra)}" if extra else ""))
        page.raw(section, f'<div class="table"><table><caption>{html.escape(caption)}</caption><thead><tr>'
                          "<th>factor</th><th>parameters (bounds)</th><th>switch</th></tr></thead><tbody>"
                 + "".join(body) + "</tbody></table></div>")


def banner_warnings(data: ReportData) -> list[str]:
    """The warnings shown above everything: the run's own (run.json), then those read from its results."""
    info = data.info
    recorded = [str(w) for w in info.get("warnings") or []]
    out = list(recorded)
    weights = str((info.get("model") or {}).get("weights") or "")
    if "random" in weights.lower() and not any("random weights" in w for w in recorded):
        out.append(f"the model has random weights ({weights}): the indices describe an untrained network")
    config = info.get("config") or {}
    n, count = config.get("n"), (info.get("images") or {}).get("count")
    for warning in input_warnings(n if isinstance(n, int) else 10**9, count if isinstance(count, int) else 10**9):
        key = warning.split(":", 1)[0]
        if not any(w.startswith(key) for w in recorded):
            out.append(warning)
    skipped = skipped_warning((info.get("images") or {}).get("skipped") or [])
    if skipped:
        out.append(skipped)
    if data.layers is not None and {"factor", "quantity", "ci_low", "ci_high"} <= set(data.layers.columns):
        rows = data.layers[data.layers["factor"].notna()
                           & data.layers["quantity"].isin([*data.factor_quantities(), "second_order", "interactions"])]
        factors = rows["factor"].astype(str)
        if "factor2" in rows.columns:  # a pair of factors (layer-level S2, interactions): "hue×blur"
            factors = factors.where(rows["factor2"].isna(), factors + "×" + rows["factor2"].astype(str))
        wide = wide_interval_warning(zip(rows["layer"].astype(str), factors,
                                         rows["quantity"].astype(str), rows["ci_low"].astype(float),
                                         rows["ci_high"].astype(float)))
        if wide:
            out.append(wide)
    return out


def _outside_unit_interval(data: ReportData) -> str:
    """A sentence on unit indices estimated below 0 or above 1 (unclipped sampling noise), or ''."""
    table = data.indices
    if table is None or not {"quantity", "estimate", "ci_low", "ci_high"} <= set(table.columns):
        return ""
    shares = table[table["quantity"].isin(["first_order", "total_order", "shapley"])]
    if "dead" in shares:
        shares = shares[~shares["dead"].astype(bool)]
    estimate = shares["estimate"].to_numpy(float)
    low, high = shares["ci_low"].to_numpy(float), shares["ci_high"].to_numpy(float)
    outside = out_of_unit_range(estimate)
    if not outside.any():
        return ""
    excluded = int(((high < 0) | (low > 1)).sum())
    return (f"{int(outside.sum())} of {len(estimate)} unit indices are estimated below 0 or above 1. Estimates are "
            "not clipped, so an index near 0 or 1 can land outside [0, 1] by sampling noise; its interval shows "
            "by how much" + (f" ({excluded} intervals lie wholly outside [0, 1]: with 95 % intervals "
                                              "about 2.5 % of indices at exactly 0 or 1 do)." if excluded else "."))


def _layer_section(page: Page, data: ReportData) -> None:
    section = page.section("layers", "Which factors move each layer")
    shares = figures.layer_indices(data)
    if shares is None:
        page.notice(section, "No layer-aggregated indices (layers.parquet) in this run folder.")
        return
    page.text(section, "Aggregated indices pool the variance of all units of a layer: Σ_c V_i^(c) / Σ_c V^(c).")
    caption = ("Aggregated index of each factor per layer (bar) with its confidence interval (whisker). Estimates "
               "are not clipped: a bar left of 0 is a negative estimate (a small true index plus sampling noise), "
               "values above 1 are labelled.")
    if "first_order" in data.factor_quantities():
        caption += " Grey: 1 − Σ S_i, the part of the variance that only interactions between factors explain."
    page.figure(section, shares, "layer-indices", caption, inline_svg=True)
    profile = figures.depth_profile(data)
    if profile is not None:
        page.figure(section, profile, "depth-profile", "Depth profile: aggregated index of each factor from the "
                                                       "first to the last layer, with confidence bands.")
    assert data.layers is not None
    rows = data.layers[data.layers["factor"].notna() & data.layers["quantity"].isin(data.factor_quantities())]
    if not rows.empty:
        cell = rows.assign(value=[interval(e, lo, hi) for e, lo, hi in
                                  zip(rows["estimate"], rows["ci_low"], rows["ci_high"])])
        wide = cell.pivot_table(index=["layer", "factor"], columns="quantity", values="value", aggfunc="first",
                                sort=False)
        wide.columns = [QUANTITY_LABELS.get(c, c) for c in wide.columns]
        page.raw(section, "<details><summary>Aggregated indices with confidence intervals (table)</summary>")
        page.table(section, wide.reset_index(), "layers.parquet", max_rows=500)
        page.raw(section, "</details>")


def _unit_section(page: Page, data: ReportData) -> None:
    quantity = data.main_quantity()
    if quantity is None or not data.maps:
        return
    section = page.section("units", "Units × factors")
    page.text(section, f"Each row is a unit ({'channel, pooled over positions' if _per_position(data) else 'channel'}"
                       f"), coloured by its {QUANTITY_LABELS[quantity]}; the strip on the left shows the dominant "
                       "factor, with the unit IDs beside it. Dead units (zero variance) are grey with a black strip; "
                       "estimates are not clipped: below 0 pink, above 1 red (counts on the colour bar).")
    page.group(section, True)
    drawn = 0
    for layer in data.layer_names:
        fig = figures.unit_heatmap(data, layer, quantity)
        if fig is not None:
            page.figure(section, fig, f"units-{layer}", f"{layer}: units ordered by dominant factor.", wide=False)
            drawn += 1
    page.group(section, False)
    if not drawn:
        page.notice(section, f"No {quantity} maps in maps.npz.")


def _per_position(data: ReportData) -> bool:
    return any(len(data.unit_shape(layer) or ()) >= 3 for layer in data.layer_names)


def _spatial_section(page: Page, data: ReportData) -> None:
    quantity = data.main_quantity()
    if quantity is None or not _per_position(data):
        return
    section = page.section("spatial", "Spatial sensitivity maps")
    for layer in data.layer_names:
        fig = figures.spatial_maps(data, layer, quantity)
        if fig is not None:
            page.figure(section, fig, f"spatial-{layer}", f"{layer}: where in the feature map each factor acts, "
                                                          "for the channels most sensitive to each factor.")


def _interaction_section(page: Page, data: ReportData) -> None:
    if not data.maps or len(data.players) < 2:
        return
    section = page.section("interactions", "Interactions between factors")
    quantity = data.pair_quantity()
    fig = figures.interaction_matrices(data, quantity) if quantity else None
    if fig is None:
        page.notice(section, "This run has no pairwise indices; run with estimator sobol2 (second-order S2) or "
                             "shapley-exact (pairwise Shapley interactions) to see them.")
        return
    panels = figures.pair_panels(data, quantity)
    label = QUANTITY_LABELS[quantity]
    if all(ci is not None for _, _, ci in panels):
        ratio = "Σ_c I_ij^(c) / Σ_c V^(c)" if quantity == "interactions" else "Σ_c V_ij^(c) / Σ_c V^(c)"
        caption = (f"Layer-level {label} of each pair of factors, {ratio} over the layer's units, "
                   "with its confidence interval (red: synergy, blue: redundancy; hatched: the interval contains 0")
        caption += ")." if len(data.players) <= figures.CELL_TEXT_FACTORS else \
            "; the intervals are in the table below)."
    else:
        caption = (f"Layer-aggregated {label} of each pair of factors (variance-weighted over units; red: synergy, "
                   "blue: redundancy). This run folder holds no layer-level pairwise intervals (a run by an earlier "
                   "augsense); each unit's pairwise indices with intervals are in indices.parquet.")
    page.figure(section, fig, "interactions", caption)
    rows = [(layer, players[i], players[j], interval(est[i, j], ci[0, i, j], ci[1, i, j]))
            for layer, est, ci in panels if ci is not None
            for players in [data.players[: est.shape[0]]]
            for i in range(est.shape[0]) for j in range(i + 1, est.shape[0])]
    if rows:
        table = pd.DataFrame(rows, columns=["layer", "factor", "factor2", f"{label} [interval]"])
        page.raw(section, f"<details><summary>Layer-level {html.escape(label)} with confidence intervals "
                          "(table)</summary>")
        page.table(section, table, "layers.parquet", max_rows=500)
        page.raw(section, "</details>")


def _specialist_section(page: Page, data: ReportData) -> None:
    quantity = data.main_quantity()
    if quantity is None or data.indices is None:
        return
    section = page.section("specialists", "Most specialised units")
    shapes = {layer: data.unit_shape(layer) for layer in data.layer_names}
    table = top_units(data.indices, quantity, data.players, k=3, unit_shapes=shapes)
    if table.empty:
        page.notice(section, "No living unit has a finite index.")
        return
    page.text(section, f"Per factor, the units it dominates by the widest margin: margin = the lower confidence "
                       f"bound of the factor's {QUANTITY_LABELS[quantity]} − the unit's next-highest factor's estimate, "
                       "so a unit ranks high when the factor leads it clearly and precisely. Variance: the unit's "
                       "activation variance (a unit that hardly varies is a weak specialist whatever its share). "
                       "Units are channels, or channel (row, column) in per-position runs.")
    missing = [p for p in data.players if p not in set(table["factor"])]
    shown = table.assign(ci=[f"[{fixed(lo)}, {fixed(hi)}]" for lo, hi in zip(table["ci_low"], table["ci_high"])])
    shown = shown[["factor", "rank", "layer", "unit", "estimate", "ci", "runner_up", "runner_up_estimate", "margin",
                   "variance"]]
    page.table(section, shown.rename(columns={"estimate": QUANTITY_LABELS[quantity], "ci": "CI",
                                              "runner_up": "next factor", "runner_up_estimate": "its index"}),
               max_rows=400)
    if missing:
        page.text(section, f"No living unit is led by {', '.join(missing)} (no positive margin): these factors "
                           "are never a unit's main source of variance in this run.")


def _explorer_section(page: Page, data: ReportData) -> None:
    from augsense.report.explorer import explorer_markup, explorer_payload

    payload = explorer_payload(data)
    if payload is None:
        return
    section = page.section("explorer", "Unit explorer")
    if "too_large" in payload:
        page.notice(section, f"No unit explorer: {payload['too_large']}.")
        return
    page.text(section, f"Every unit of every layer ({payload['units']} units): filter by layer, dominant factor and "
                       f"a threshold on the {QUANTITY_LABELS[payload['main']]}, or type a unit (\"12\", or \"12 3 4\" "
                       "for channel 12 at row 3, column 4); select one to see every factor's indices with their "
                       "intervals" + (" and its channel's maps over positions." if _per_position(data) else "."))
    page.raw(section, explorer_markup(payload))


def _gallery_section(page: Page, data: ReportData) -> None:
    from augsense.report.gallery import gallery

    if not (data.info.get("factors") or {}).get("factors"):
        return
    section = page.section("gallery", "What each factor does")
    try:
        fig, source = gallery(data.info, data.players)
    except LookupError as error:
        page.notice(section, f"No example images: {error}.")
        return
    except Exception as error:  # noqa: BLE001 - a user factor that is no longer registered, etc.
        page.notice(section, f"The gallery could not be drawn ({type(error).__name__}: {error}).")
        return
    page.figure(section, fig, "gallery", f"{source} with each factor alone at the low, middle and high ends of its "
                                         "bounds (on/off factors: on).", vector=False)


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;max-width:1180px;margin:0 auto;
padding:1.2em 1.5em 4em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
nav{font-size:.92em;margin:.6em 0 1em}nav a{margin-right:1em;color:#1f5fa8;text-decoration:none}
figure{margin:1em 0}figure img,figure .svg svg{max-width:100%;height:auto;display:block}
figure.narrow{margin:.5em}figcaption{font-size:.88em;color:#444;margin-top:.3em}
.files{color:#777}.files a{color:#777}
.grid{display:flex;flex-wrap:wrap;align-items:flex-start}.grid figure{flex:0 1 auto;max-width:48%}
.notice{background:#fff4d6;border-left:4px solid #e0a800;padding:.5em .8em;margin:.6em 0}
.banner{background:#fdecea;border:1px solid #e3a29b;border-left:5px solid #c62828;padding:.5em .9em;margin:.8em 0}
.banner ul{margin:.3em 0 .1em 1.1em;padding:0}.banner li{margin:.15em 0}
table{border-collapse:collapse;font-size:.86em;margin:.6em 0}th,td{padding:.2em .6em;border-bottom:1px solid #eee;
text-align:left;vertical-align:top}thead th{border-bottom:2px solid #ccc}caption{text-align:left;color:#555;
padding-bottom:.3em}.table{overflow-x:auto}table.meta th{width:11em;color:#555;font-weight:600}
.swatch{display:inline-block;width:.9em;height:.9em;margin-right:.4em;vertical-align:-.1em;border-radius:2px}
details{margin:.6em 0}summary{cursor:pointer;color:#1f5fa8}pre{font-size:.8em;overflow-x:auto;background:#f7f7f7;
padding:.6em}footer{margin-top:3em;font-size:.8em;color:#777}
"""


def _document(data: ReportData, page: Page, elapsed: float) -> str:
    model = (data.info.get("model") or {}).get("name") or (data.info.get("config") or {}).get("model", "model")
    title = f"augsense report: {model}"
    nav = "".join(f'<a href="#{s.key}">{html.escape(s.title)}</a>' for s in page.sections)
    warnings = banner_warnings(data)
    banner = ('<div class="banner" id="warnings" role="alert"><strong>Before trusting these numbers</strong><ul>'
              + "".join(f"<li>Warning: {html.escape(w.rstrip('.'))}.</li>" for w in warnings) + "</ul></div>"
              if warnings else "")
    body = "".join(f'<section id="{s.key}"><h2>{html.escape(s.title)}</h2>{"".join(s.parts)}</section>'
                   for s in page.sections)
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    subtitle = f"{data.path.resolve()} · {', '.join(data.players)}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<div class="subtitle">{html.escape(subtitle)}</div>{banner}<nav>{nav}</nav>{body}'
            f"<footer>Written by augsense on {stamp} in {elapsed:.1f} s. Figures are also in "
            f"{html.escape(FIGURE_FOLDER)}/ as PNG and SVG.</footer></body></html>")
