"""The unit explorer's data: every unit's indices and intervals, packed compactly into the page.

Arrays travel as base64 of little-endian typed arrays (float16 for indices and bounds, float32 for
variances, uint8 for flags), so a run of 200 000 units and 3 factors with two quantities embeds about
8 MB; ``explorer_markup`` returns the section's HTML with the data and the script
(:mod:`augsense.report.explorer_script`), which filters, lists (virtualised) and shows one unit.
"""

from __future__ import annotations

import base64
import html
import json
import math
from typing import Any

import numpy as np

from augsense.report.data import FACTOR_QUANTITIES, QUANTITY_LABELS, ReportData
from augsense.report.figures import DEAD_COLOUR, OVER_COLOUR, UNDER_COLOUR
from augsense.report.palette import factor_colours

#: Above this many raw bytes, intervals of the secondary quantities, then the quantities themselves, are left out.
BUDGET_BYTES = 48 * 2**20


def _b64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()).decode()


def _flat(data: ReportData, layer: str, key: str, tail: int) -> np.ndarray | None:
    """``<layer>/<key>`` reshaped to (units, *tail shape) or None."""
    value = data.maps.get(f"{layer}/{key}")
    shape = data.unit_shape(layer)
    if value is None or shape is None:
        return None
    units = math.prod(shape)
    if key.endswith("_ci"):
        return value.reshape(2, units, *value.shape[value.ndim - tail:]) if tail else value.reshape(2, units)
    return value.reshape(units, *value.shape[value.ndim - tail:]) if tail else value.reshape(units)


def explorer_payload(data: ReportData, budget: int = BUDGET_BYTES) -> dict[str, Any] | None:
    """Metadata and base64 arrays of every unit of every layer with maps, or None when there are none.

    Arrays, units of all layers concatenated (M units, d factors): ``<q>`` (M, d) float16 estimates
    and ``<q>_low`` / ``<q>_high`` bounds for each quantity q; ``variance`` (M,) float32; ``dead``
    (M,) uint8; ``dominant`` (M,) uint8 (the factor with the largest main-quantity estimate, 255 for a
    dead unit). ``notes`` say what was left out to stay within ``budget`` bytes; when even the main
    quantity's estimates exceed it, the payload is only ``{"too_large": reason}``.
    """
    quantities = [q for q in FACTOR_QUANTITIES if any(f"{layer}/{q}" in data.maps for layer in data.layer_names)]
    main = data.main_quantity()
    if not quantities or main not in quantities:
        return None
    quantities.remove(main)
    quantities.insert(0, main)
    players = list(data.players)
    d = len(players)
    layers, parts = [], {}
    offset = 0
    for layer in data.layer_names:
        estimate = _flat(data, layer, main, 1)
        shape = data.unit_shape(layer)
        if estimate is None or shape is None or estimate.shape[-1] != d:
            continue
        units = estimate.shape[0]
        layers.append({"name": layer, "shape": list(shape), "offset": offset, "count": units})
        offset += units
        for q in quantities:
            value, ci = _flat(data, layer, q, 1), _flat(data, layer, f"{q}_ci", 1)
            nan = np.full((units, d), np.nan)
            parts.setdefault(q, []).append(value if value is not None else nan)
            parts.setdefault(f"{q}_low", []).append(ci[0] if ci is not None else nan)
            parts.setdefault(f"{q}_high", []).append(ci[1] if ci is not None else nan)
        variance, dead = _flat(data, layer, "variance", 0), _flat(data, layer, "dead", 0)
        parts.setdefault("variance", []).append(variance if variance is not None else np.full(units, np.nan))
        parts.setdefault("dead", []).append(dead if dead is not None else ~np.isfinite(estimate).any(axis=1))
    if not layers:
        return None
    total = offset
    notes = []
    kept = list(quantities)
    size = lambda qs, cis: total * d * 2 * sum(3 if q in cis else 1 for q in qs) + total * 5  # noqa: E731
    with_ci = set(kept)
    for q in reversed(quantities[1:]):
        if size(kept, with_ci) <= budget:
            break
        with_ci.discard(q)
        notes.append(f"intervals of {QUANTITY_LABELS[q]} left out (page size)")
    for q in reversed(quantities[1:]):
        if size(kept, with_ci) <= budget:
            break
        kept.remove(q)
        notes.append(f"{QUANTITY_LABELS[q]} left out (page size)")
    if size(kept, with_ci) > budget:
        with_ci.discard(main)
        notes.append(f"intervals of {QUANTITY_LABELS[main]} left out (page size): indices.parquet and maps.npz "
                     "have them")
    if size(kept, with_ci) > budget:
        return {"too_large": f"{total} units × {d} factors do not fit the page ({size(kept, with_ci) / 2**20:.0f} MB "
                             f"> {budget / 2**20:.0f} MB); read indices.parquet and maps.npz instead, or report "
                             "fewer layers"}
    arrays: dict[str, str] = {}
    main_values = np.concatenate(parts[main]).astype(np.float32)
    for q in kept:
        arrays[q] = _b64(np.concatenate(parts[q]), "float16")
        if q in with_ci:
            arrays[f"{q}_low"] = _b64(np.concatenate(parts[f"{q}_low"]), "float16")
            arrays[f"{q}_high"] = _b64(np.concatenate(parts[f"{q}_high"]), "float16")
    dead = np.concatenate(parts["dead"]).astype(bool) | ~np.isfinite(main_values).any(axis=1)
    filled = np.where(np.isfinite(main_values), main_values, -np.inf)
    dominant = np.where(dead, 255, filled.argmax(axis=1) if d else 0).astype(np.uint8)
    arrays["variance"] = _b64(np.concatenate(parts["variance"]), "float32")
    arrays["dead"] = _b64(dead, "uint8")
    arrays["dominant"] = _b64(dominant, "uint8")
    colours = factor_colours(players)
    return {"players": players, "colours": [colours[p] for p in players], "layers": layers, "units": total,
            "quantities": kept, "intervals": [q for q in kept if q in with_ci],
            "labels": {q: QUANTITY_LABELS[q] for q in kept}, "main": main, "arrays": arrays, "notes": notes,
            "confidence": (data.info.get("config") or {}).get("confidence", 0.95),
            "scale": {"viridis": _viridis(), "under": UNDER_COLOUR, "over": OVER_COLOUR, "dead": DEAD_COLOUR}}


def _viridis() -> list[str]:
    from matplotlib import colormaps
    import matplotlib.colors as mcolors

    cmap = colormaps["viridis"]
    return [mcolors.to_hex(cmap(i / 63)) for i in range(64)]


def explorer_markup(payload: dict[str, Any]) -> str:
    """The explorer's controls, list and detail panel, its data (JSON) and its script, as one HTML fragment."""
    from augsense.report.explorer_script import EXPLORER_CSS, EXPLORER_JS

    text = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    options = "".join(f'<option value="{i}">{html.escape(layer["name"])} ({layer["count"]} units)</option>'
                      for i, layer in enumerate(payload["layers"]))
    factors = "".join(f'<option value="{j}">{html.escape(p)}</option>' for j, p in enumerate(payload["players"]))
    notes = "".join(f'<p class="notice">{html.escape(n)}</p>' for n in payload["notes"])
    main = html.escape(payload["labels"][payload["main"]])
    return f"""<style>{EXPLORER_CSS}</style>{notes}
<div id="ex-root" class="explorer" data-ready="0">
<div class="ex-controls">
<label>layer <select id="ex-layer"><option value="-1">all layers</option>{options}</select></label>
<label>dominant factor <select id="ex-dominant"><option value="-1">any</option>{factors}</select></label>
<label>{main} of <select id="ex-factor"><option value="-1">the dominant factor</option>{factors}</select>
≥ <input id="ex-threshold" type="number" step="0.05" value="" placeholder="e.g. 0.5" size="6"></label>
<label>unit <input id="ex-search" type="search" placeholder="e.g. 12 or 12 (3, 4)" size="14"></label>
<label>sort <select id="ex-sort"><option value="unit">layer, unit</option>
<option value="value">index, highest first</option></select></label>
<label><input id="ex-dead" type="checkbox"> dead units</label>
</div>
<div class="ex-count" id="ex-count">loading…</div>
<div class="ex-body"><div class="ex-list" id="ex-list" tabindex="0"><div class="ex-spacer" id="ex-spacer"></div></div>
<div class="ex-detail" id="ex-detail"><p class="ex-hint">Select a unit in the list.</p></div></div>
<script type="application/json" id="ex-data">{text}</script>
<script>{EXPLORER_JS}</script>
</div>"""
