"""Matplotlib figures of a sensitivity run (object API, no pyplot state; Agg canvas).

Every function returns a ``matplotlib.figure.Figure`` or None when the run lacks what it needs.
Colours come from ``factor_colours`` so a factor looks the same in every figure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.colors as mcolors
from matplotlib import colormaps
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from augsense.report.aggregate import channel_view, layer_pair_matrix, stored_pair_matrix
from augsense.report.data import QUANTITY_LABELS, ReportData
from augsense.report.page import fixed
from augsense.report.palette import REMAINDER_COLOUR, factor_colours

STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "legend.fontsize": 8, "figure.dpi": 110, "savefig.dpi": 110, "svg.fonttype": "none",
         "axes.spines.top": False, "axes.spines.right": False}


def _layer_table(data: ReportData, quantity: str) -> pd.DataFrame | None:
    """Aggregated (layer × factor) estimates and CIs of one quantity, in run order."""
    if data.layers is None or "quantity" not in data.layers:
        return None
    rows = data.layers[(data.layers["quantity"] == quantity) & data.layers["factor"].notna()]
    if rows.empty:
        return None
    layers = [layer for layer in data.layer_names if layer in set(rows["layer"])] or list(pd.unique(rows["layer"]))
    players = [p for p in data.players if p in set(rows["factor"])]
    table = rows.set_index(["layer", "factor"])[["estimate", "ci_low", "ci_high"]]
    table = table[~table.index.duplicated()]
    full = pd.MultiIndex.from_product([layers, players], names=["layer", "factor"])
    return table.reindex(full)


def _legend_handles(players: Sequence[str], colours: dict[str, str]) -> list[Patch]:
    return [Patch(facecolor=colours[p], label=p) for p in players]


#: Axis range of index bars and profiles; whiskers beyond it end in an arrow (never silently cut).
INDEX_RANGE = (-1.0, 2.0)


def layer_indices(data: ReportData) -> Figure | None:
    """Each layer's aggregated index of every factor as a bar with its confidence interval.

    One panel per quantity (first-order S, total-order ST, Shapley); within a panel one group of
    horizontal bars per layer (input at the top), one bar per factor in its colour, a black whisker
    for the interval. Estimates are drawn as they are: a negative estimate is a bar to the left of 0,
    an estimate above 1 is labelled with its value. First order adds a grey bar, 1 − Σ S_i, the part
    of the variance only interactions explain (a difference of estimates, no interval of its own).
    Each whisker is an SVG group ``ci-<quantity>-<layer>-<factor>`` (``bar-…`` for the bars).
    """
    quantities = [q for q in data.factor_quantities() if _layer_table(data, q) is not None]
    if not quantities:
        return None
    colours = factor_colours(data.players)
    first = _layer_table(data, quantities[0])
    assert first is not None
    layers = list(first.index.get_level_values(0).unique())
    players = list(first.index.get_level_values(1).unique())
    remainder = "first_order" in quantities
    slots = len(players) + (1 if remainder else 0)
    step = slots + 1.2  # one gap between layer groups
    height = 0.13 * step * len(layers) + 1.4
    fig = Figure(figsize=(3.5 * len(quantities) + 1.6, height), layout="constrained")
    axes = fig.subplots(1, len(quantities), sharey=True, squeeze=False)[0]
    centres = np.arange(len(layers)) * step
    for ax, quantity in zip(axes, quantities):
        table = _layer_table(data, quantity)
        assert table is not None
        est = table["estimate"].unstack("factor").reindex(index=layers, columns=players).to_numpy(dtype=float)
        low = table["ci_low"].unstack("factor").reindex(index=layers, columns=players).to_numpy(dtype=float)
        high = table["ci_high"].unstack("factor").reindex(index=layers, columns=players).to_numpy(dtype=float)
        finite = np.concatenate([est[np.isfinite(est)], low[np.isfinite(low)], high[np.isfinite(high)], [0.0, 1.0]])
        lo_lim = max(INDEX_RANGE[0], float(finite.min()) - 0.04)
        hi_lim = min(INDEX_RANGE[1], float(finite.max()) + 0.06)
        for i, layer in enumerate(layers):
            y0 = centres[i] - (slots - 1) / 2
            for j, player in enumerate(players):
                y = y0 + j
                e = est[i, j]
                if not np.isfinite(e):
                    continue
                ax.barh(y, e, height=0.82, color=colours[player], linewidth=0, gid=f"bar-{quantity}-{layer}-{player}")
                if np.isfinite(low[i, j]) and np.isfinite(high[i, j]):
                    a, b = max(low[i, j], lo_lim), min(high[i, j], hi_lim)
                    whisker = ax.plot([a, b], [y, y], color="black", linewidth=0.9, solid_capstyle="butt",
                                      gid=f"ci-{quantity}-{layer}-{player}")[0]
                    whisker.set_gid(f"ci-{quantity}-{layer}-{player}")
                    for end, cut, marker in ((a, low[i, j] < lo_lim, "<"), (b, high[i, j] > hi_lim, ">")):
                        if cut:  # an interval wider than the axis: an arrow says it goes on
                            ax.plot([end], [y], marker=marker, markersize=3.5, color="black")
                        else:
                            ax.plot([end, end], [y - 0.28, y + 0.28], color="black", linewidth=0.9)
                if e > 1.0:
                    ax.text(min(max(e, high[i, j] if np.isfinite(high[i, j]) else e), hi_lim), y, f" {e:.2f} > 1",
                            va="center", ha="left", fontsize=6.5, color="#b00000", fontweight="bold")
            if remainder and quantity == "first_order":
                rest = 1.0 - float(np.nansum(est[i]))
                ax.barh(y0 + len(players), rest, height=0.82, color=REMAINDER_COLOUR, linewidth=0,
                        gid=f"bar-{quantity}-{layer}-interactions")
        ax.axvline(0.0, color="#555555", linewidth=0.7)
        ax.axvline(1.0, color="#999999", linewidth=0.6, linestyle="--")
        ax.set_xlim(lo_lim, hi_lim)
        ax.set_title(QUANTITY_LABELS.get(quantity, quantity))
        ax.set_xlabel("aggregated index (bar), 95 % interval (whisker)" if data.info.get("config", {}).get(
            "confidence", 0.95) == 0.95 else "aggregated index (bar) and its interval (whisker)")
        ax.set_yticks(centres, layers)
        ax.set_ylim(centres[-1] + step / 2, centres[0] - step / 2)
        ax.tick_params(axis="y", length=0)
        for i in range(1, len(layers)):
            ax.axhline(centres[i] - step / 2, color="#e6e6e6", linewidth=0.6)
    axes[0].set_ylabel("layer (input → output)")
    handles = _legend_handles(players, colours)
    if remainder:
        handles.append(Patch(facecolor=REMAINDER_COLOUR, label="1 − Σ S (interactions)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), frameon=False)
    return fig


def depth_profile(data: ReportData) -> Figure | None:
    """Each factor's aggregated index from the first layer to the last, with confidence bands.

    The y range holds every band whole (up to ``INDEX_RANGE``; a band beyond it is cut at the frame
    and the panel says so); a dashed line marks 1.
    """
    quantities = [q for q in data.factor_quantities() if _layer_table(data, q) is not None]
    if not quantities:
        return None
    colours = factor_colours(data.players)
    fig = Figure(figsize=(3.6 * len(quantities) + 1.6, 3.4), layout="constrained")
    axes = fig.subplots(1, len(quantities), squeeze=False)[0]
    players: list[str] = []
    for ax, quantity in zip(axes, quantities):
        table = _layer_table(data, quantity)
        assert table is not None
        layers = list(table.index.get_level_values(0).unique())
        players = list(table.index.get_level_values(1).unique())
        x = np.arange(len(layers))
        for player in players:
            part = table.xs(player, level="factor").reindex(layers)
            est = part["estimate"].to_numpy(dtype=float)
            low, high = part["ci_low"].to_numpy(dtype=float), part["ci_high"].to_numpy(dtype=float)
            ax.plot(x, est, marker="o", markersize=3.5, linewidth=1.4, color=colours[player], label=player)
            if np.isfinite(low).any():
                if len(layers) > 1:
                    ax.fill_between(x, low, high, color=colours[player], alpha=0.15, linewidth=0)
                else:
                    ax.errorbar(x, est, yerr=[est - low, high - est], color=colours[player], capsize=3)
        ax.axhline(0.0, color="#888888", linewidth=0.6)
        ax.axhline(1.0, color="#999999", linewidth=0.6, linestyle="--")
        bottom, top, cut = _profile_limits(table)
        ax.set_ylim(bottom, top)
        if cut:
            ax.text(0.99, 0.01, "some bands extend beyond the frame", transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=6.5, color="#b00000")
        ax.set_xticks(x, layers, rotation=30 if len(layers) > 3 else 0, ha="right" if len(layers) > 3 else "center")
        ax.set_xlabel("layer (input → output)")
        ax.set_ylabel(f"aggregated {QUANTITY_LABELS.get(quantity, quantity)}")
        ax.set_title(QUANTITY_LABELS.get(quantity, quantity))
    fig.legend(handles=_legend_handles(players, colours), loc="outside right center", frameon=False)
    return fig


def _profile_limits(table: pd.DataFrame) -> tuple[float, float, bool]:
    """Y range of a depth profile holding every estimate and band (within ``INDEX_RANGE``); cut: a band is cut."""
    est = table["estimate"].to_numpy(dtype=float)
    bounds = np.concatenate([est, table["ci_low"].to_numpy(dtype=float), table["ci_high"].to_numpy(dtype=float)])
    bounds = bounds[np.isfinite(bounds)]
    if bounds.size == 0:
        return -0.05, 1.05, False
    low, high = float(bounds.min()), float(bounds.max())
    pad = 0.03 * max(high - low, 0.1)
    bottom = max(INDEX_RANGE[0], min(low - pad, -0.05))
    top = min(INDEX_RANGE[1], max(high + pad, 0.3))
    return bottom, top, bool(low < INDEX_RANGE[0] or high > INDEX_RANGE[1])


def _colour_strip(ax: Any, colours: Sequence[str]) -> None:
    """A one-row strip of factor colours above a heat map's columns."""
    ax.imshow(np.array([[mcolors.to_rgb(c) for c in colours]]), aspect="auto", interpolation="nearest")
    ax.set_axis_off()


def _sorted_units(values: np.ndarray, dead: np.ndarray) -> np.ndarray:
    """Order units by dominant factor, then by that factor's index (descending); dead units last."""
    filled = np.where(np.isfinite(values), values, -np.inf)
    dominant = filled.argmax(axis=1)
    strength = filled.max(axis=1)
    alive = ~dead & np.isfinite(strength)
    order = np.lexsort((-strength, dominant, ~alive))
    return order


def unit_heatmap(data: ReportData, layer: str, quantity: str) -> Figure | None:
    """Unit × factor heat map of one layer, units ordered by dominant factor, dead units marked.

    Per-position maps (C, H, W) are pooled to channels (variance-weighted) first.
    """
    index = data.map(layer, quantity)
    shape = data.unit_shape(layer)
    if index is None or shape is None or index.ndim != len(shape) + 1:
        return None
    values, dead = channel_view(index, data.map(layer, "variance"), data.map(layer, "dead"), len(shape))
    players = data.players[: values.shape[1]]
    colours = factor_colours(data.players)
    order = _sorted_units(values, dead)
    shown = values[order]
    n_units, d = shown.shape
    alive = ~dead[order]
    dominant = np.where(np.isfinite(shown), shown, -np.inf).argmax(axis=1)

    fig = Figure(figsize=(max(3.4, 0.3 * d + 2.2), 4.4), layout="constrained")
    (corner, top), (strip, ax) = fig.subplots(2, 2, gridspec_kw={"width_ratios": [0.6, max(d, 1)],
                                                                 "height_ratios": [0.35, 12]})
    corner.set_axis_off()
    _colour_strip(top, [colours[p] for p in players])
    strip.sharey(ax)
    cmap = _sequential()
    image = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap=cmap, vmin=0.0, vmax=1.0,
                      interpolation="nearest")
    _unit_ticks(strip, order)
    strip_rgb = np.array([mcolors.to_rgb(colours[players[j]]) if ok else (0.0, 0.0, 0.0)
                          for j, ok in zip(dominant, alive)]).reshape(n_units, 1, 3)
    strip.imshow(strip_rgb, aspect="auto", interpolation="nearest")
    strip.set_xticks([])
    strip.set_ylabel(f"{n_units} {'channels' if len(shape) > 1 else 'units'} (IDs), sorted by dominant factor")
    for spine in strip.spines.values():
        spine.set_visible(False)
    ax.set_xticks(np.arange(d), players, rotation=45, ha="right")
    ax.tick_params(axis="y", left=False, labelleft=False)
    n_dead = int((~alive).sum())
    title = f"{layer}: {QUANTITY_LABELS.get(quantity, quantity)}"
    top.set_title(title + (f"\n{n_dead} dead unit{'s' if n_dead != 1 else ''} (grey, black strip)" if n_dead else ""),
                  fontsize=9)
    finite = shown[np.isfinite(shown)]
    below, above = int((finite < 0).sum()), int((finite > 1).sum())
    bar = fig.colorbar(image, ax=[top, ax], extend="both", fraction=0.08, pad=0.02)
    bar.set_label(f"{QUANTITY_LABELS.get(quantity, quantity)}; {UNDER_NAME}: < 0 ({below}), "
                  f"{OVER_NAME}: > 1 ({above})", fontsize=7.5)
    return fig


def spatial_maps(data: ReportData, layer: str, quantity: str, max_channels: int = 6) -> Figure | None:
    """Per-position sensitivity maps of chosen channels (runs with reduction "none").

    Rows: for each factor in turn, the channel with the highest pooled index for it (distinct,
    at most ``max_channels``); columns: every factor's map of that channel, (H, W) each.
    """
    index = data.map(layer, quantity)
    shape = data.unit_shape(layer)
    if index is None or shape is None or len(shape) != 3 or index.ndim != 4:
        return None
    variance, dead = data.map(layer, "variance"), data.map(layer, "dead")
    pooled, channel_dead = channel_view(index, variance, dead, 3)
    players = data.players[: index.shape[-1]]
    colours = factor_colours(data.players)
    ranked = np.where(np.isfinite(pooled) & ~channel_dead[:, None], pooled, -np.inf)
    chosen: list[tuple[int, str]] = []
    for j, player in enumerate(players):
        c = int(ranked[:, j].argmax())
        if np.isfinite(ranked[c, j]) and c not in [ch for ch, _ in chosen]:
            chosen.append((c, player))
        if len(chosen) >= max_channels:
            break
    if not chosen:
        return None
    d = len(players)
    cell = 0.95
    fig = Figure(figsize=(max(4.6, cell * d + 1.6), cell * len(chosen) + 1.5), layout="constrained")
    axes = fig.subplots(len(chosen), d, squeeze=False)
    cmap = _sequential()
    image = None
    for row, (channel, best) in enumerate(chosen):
        for j, player in enumerate(players):
            ax = axes[row, j]
            image = ax.imshow(np.ma.masked_invalid(index[channel, :, :, j]), cmap=cmap, vmin=0.0, vmax=1.0,
                              interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(player, fontsize=7.5, rotation=30, ha="left", loc="left")
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(colours[player])
                spine.set_linewidth(1.5)
            if j == 0:
                ax.set_ylabel(f"ch {channel}\n(top: {best})", fontsize=7.5)
    fig.suptitle(f"{layer}: {QUANTITY_LABELS.get(quantity, quantity)} per position\n(rows: channels, "
                 "columns: factors)", fontsize=9)
    assert image is not None
    bar = fig.colorbar(image, ax=axes, fraction=0.03, pad=0.01, extend="both")
    bar.set_label(f"{QUANTITY_LABELS.get(quantity, quantity)} ({UNDER_NAME} < 0, {OVER_NAME} > 1)")
    return fig


def pair_panels(data: ReportData, quantity: str) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Per layer (layer, d × d estimates, (2, d, d) interval or None) of a pairwise quantity, diagonal NaN.

    The run's layer-level estimates with their intervals (``layers.parquet``: sobol2's S2, exact
    Shapley's interactions) where it wrote them; otherwise (older result folders) the variance-weighted
    pooling of the unit maps, without an interval.
    """
    panels: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    for layer in data.layer_names:
        pairs = data.map(layer, quantity)
        d = pairs.shape[-1] if pairs is not None and pairs.ndim >= 3 else len(data.players)
        stored = stored_pair_matrix(data.layers, layer, quantity, data.players[:d]) if d >= 2 else None
        if stored is not None and np.isfinite(stored[0]).any():
            panels.append((layer, *stored))
            continue
        if pairs is None or pairs.ndim < 3:
            continue
        matrix = layer_pair_matrix(pairs, data.map(layer, "variance"), data.map(layer, "dead")).copy()
        np.fill_diagonal(matrix, np.nan)
        panels.append((layer, matrix, None))
    return panels


#: cell text with its interval up to this many factors (beyond, the report's table lists the intervals)
CELL_TEXT_FACTORS = 6
#: the hatch over cells whose interval contains 0 (estimate not distinguishable from no interaction)
ZERO_HATCH = "//"


def interaction_matrices(data: ReportData, quantity: str) -> Figure | None:
    """Layer-level pairwise matrices (Shapley interactions or S2), one panel per layer; diagonal hidden.

    With the run's layer-level intervals (:func:`pair_panels`) each cell reads "estimate [low, high]"
    (up to :data:`CELL_TEXT_FACTORS` factors) and a cell whose interval contains 0 is hatched
    (``ZERO_HATCH``, SVG id ``zero-<layer>-<i>-<j>``); without, the cell shows the pooled estimate.
    """
    mats = pair_panels(data, quantity)
    if not mats:
        return None
    players = data.players[: mats[0][1].shape[0]]
    colours = factor_colours(data.players)
    d = len(players)
    with_text = d <= CELL_TEXT_FACTORS
    with_ci = with_text and any(ci is not None for _, _, ci in mats)
    side = max(2.6, (0.72 if with_ci else 0.26) * d + 1.3)
    columns = min(len(mats), 3 if side < 4 else 2)
    rows = math.ceil(len(mats) / columns)
    fig = Figure(figsize=(side * columns + 1.0, side * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    finite = np.concatenate([m[np.isfinite(m)] for _, m, _ in mats] + [np.zeros(1)])
    limit = max(float(np.abs(finite).max()), 0.02)
    cmap = colormaps["RdBu_r"].with_extremes(bad="#e0e0e0")
    image = None
    for ax, (layer, matrix, ci) in zip(axes.flat, mats):
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_xticks(np.arange(d), players, rotation=60, ha="right", fontsize=7 if d > 8 else 8)
        ax.set_yticks(np.arange(d), players, fontsize=7 if d > 8 else 8)
        for k, player in enumerate(players):  # factor colours as ticks on both axes
            ax.plot([k], [d - 0.5], marker="s", markersize=5, color=colours[player], clip_on=False)
            ax.plot([-0.5], [k], marker="s", markersize=5, color=colours[player], clip_on=False)
        ax.set_title(layer)
        for i in range(d):
            for j in range(d):
                if not np.isfinite(matrix[i, j]):
                    continue
                colour = "white" if abs(matrix[i, j]) > 0.6 * limit else "black"
                if ci is not None and ci[0, i, j] <= 0 <= ci[1, i, j]:
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch=ZERO_HATCH, linewidth=0,
                                           edgecolor="#b4b4b4", gid=f"zero-{layer}-{i}-{j}"))
                if not with_text:
                    continue
                if ci is not None and np.isfinite(ci[:, i, j]).all():
                    text = f"{fixed(matrix[i, j], 2)}\n[{fixed(ci[0, i, j], 2)}, {fixed(ci[1, i, j], 2)}]"
                    ax.text(j, i, text, ha="center", va="center", fontsize=6, linespacing=1.1, color=colour,
                            gid=f"cell-{layer}-{i}-{j}")
                else:
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    for ax in list(axes.flat)[len(mats):]:
        ax.set_visible(False)
    assert image is not None
    bar = fig.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    bar.set_label(f"aggregated {QUANTITY_LABELS.get(quantity, quantity)}")
    return fig


#: Heat-map colours outside [0, 1]: neither in viridis nor the dead-unit grey.
UNDER_COLOUR, UNDER_NAME = "#ff66cc", "pink"
OVER_COLOUR, OVER_NAME = "#e00000", "red"
DEAD_COLOUR = "#c8c8c8"


def _sequential() -> mcolors.Colormap:
    """Viridis for indices in [0, 1]: grey for dead/NaN, pink below 0, red above 1 (unclipped estimates)."""
    return colormaps["viridis"].with_extremes(bad=DEAD_COLOUR, under=UNDER_COLOUR, over=OVER_COLOUR)


def _unit_ticks(ax: Any, order: np.ndarray, most: int = 40) -> None:
    """Unit IDs as y ticks of a sorted heat map: every unit when few, else every k-th row."""
    n = len(order)
    step = max(1, math.ceil(n / most))
    rows = np.arange(0, n, step)
    ax.set_yticks(rows, [str(int(order[r])) for r in rows], fontsize=5.5 if n > 20 else 7)
    ax.tick_params(axis="y", length=1.5, pad=1)
