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
from matplotlib.patches import Patch

from augsense.report.aggregate import channel_view, layer_pair_matrix
from augsense.report.data import QUANTITY_LABELS, ReportData
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


def layer_shares(data: ReportData) -> Figure | None:
    """Stacked bars per layer: each factor's aggregated share of the variance, one panel per quantity.

    First order: raw S_i (negative estimates drawn as 0) plus the grey remainder 1 − Σ S_i that only
    interactions explain. Total order: ST_i / Σ_j ST_j (interactions counted once per member).
    Shapley: the effects themselves, which add up to 1.
    """
    quantities = [q for q in data.factor_quantities() if _layer_table(data, q) is not None]
    if not quantities:
        return None
    colours = factor_colours(data.players)
    first = _layer_table(data, quantities[0])
    assert first is not None
    layers = list(first.index.get_level_values(0).unique())
    players = list(first.index.get_level_values(1).unique())
    fig = Figure(figsize=(3.3 * len(quantities) + 1.2, 0.42 * len(layers) + 2.0), layout="constrained")
    axes = fig.subplots(1, len(quantities), sharey=True, squeeze=False)[0]
    y = np.arange(len(layers))
    for ax, quantity in zip(axes, quantities):
        table = _layer_table(data, quantity)
        assert table is not None
        values = table["estimate"].unstack("factor").reindex(index=layers, columns=players).to_numpy(dtype=float)
        values = np.clip(np.nan_to_num(values, nan=0.0), 0.0, None)
        if quantity == "total_order":
            sums = values.sum(axis=1, keepdims=True)
            values = np.divide(values, sums, out=np.zeros_like(values), where=sums > 0)
            label = "share of Σ ST (normalised)"
        elif quantity == "first_order":
            label = "share of variance (S; grey: interactions)"
        else:
            label = "share of variance (Shapley)"
        left = np.zeros(len(layers))
        for j, player in enumerate(players):
            ax.barh(y, values[:, j], left=left, color=colours[player], edgecolor="white", linewidth=0.4, height=0.72)
            left += values[:, j]
        if quantity == "first_order":
            ax.barh(y, np.clip(1.0 - left, 0.0, None), left=left, color=REMAINDER_COLOUR, height=0.72,
                    edgecolor="white", linewidth=0.4)
        ax.set_title(QUANTITY_LABELS.get(quantity, quantity))
        ax.set_xlabel(label)
        ax.set_xlim(0, max(1.0, float(left.max()) * 1.02))
        ax.set_yticks(y, layers)
        ax.invert_yaxis()
    axes[0].set_ylabel("layer (input → output)")
    handles = _legend_handles(players, colours)
    if "first_order" in quantities:
        handles.append(Patch(facecolor=REMAINDER_COLOUR, label="interactions"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 7), frameon=False)
    return fig


def depth_profile(data: ReportData) -> Figure | None:
    """Each factor's aggregated index from the first layer to the last, with confidence bands."""
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
        ax.set_ylim(_profile_limits(table))
        ax.set_xticks(x, layers, rotation=30 if len(layers) > 3 else 0, ha="right" if len(layers) > 3 else "center")
        ax.set_xlabel("layer (input → output)")
        ax.set_ylabel(f"aggregated {QUANTITY_LABELS.get(quantity, quantity)}")
        ax.set_title(QUANTITY_LABELS.get(quantity, quantity))
    fig.legend(handles=_legend_handles(players, colours), loc="outside right center", frameon=False)
    return fig


def _profile_limits(table: pd.DataFrame) -> tuple[float, float]:
    """Y range of a depth profile: the estimates and CIs, but bands of very uncertain layers clipped."""
    est = table["estimate"].to_numpy(dtype=float)
    bounds = np.concatenate([est, table["ci_low"].to_numpy(dtype=float), table["ci_high"].to_numpy(dtype=float)])
    bounds = bounds[np.isfinite(bounds)]
    if bounds.size == 0:
        return -0.05, 1.05
    finite = est[np.isfinite(est)]
    low = max(float(bounds.min()), min(-0.1, float(finite.min(initial=0.0)) - 0.1))
    high = min(float(bounds.max()), max(1.05, float(finite.max(initial=0.0)) + 0.1))
    return min(low, -0.05), max(high, 0.3)


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
    strip_rgb = np.array([mcolors.to_rgb(colours[players[j]]) if ok else (0.0, 0.0, 0.0)
                          for j, ok in zip(dominant, alive)]).reshape(n_units, 1, 3)
    strip.imshow(strip_rgb, aspect="auto", interpolation="nearest")
    strip.set_xticks([])
    strip.set_ylabel(f"{n_units} {'channels' if len(shape) > 1 else 'units'}, sorted by dominant factor")
    strip.set_yticks([])
    for spine in strip.spines.values():
        spine.set_visible(False)
    ax.set_xticks(np.arange(d), players, rotation=45, ha="right")
    ax.tick_params(axis="y", left=False)
    n_dead = int((~alive).sum())
    title = f"{layer}: {QUANTITY_LABELS.get(quantity, quantity)}"
    top.set_title(title + (f"\n{n_dead} dead unit{'s' if n_dead != 1 else ''} (grey, black strip)" if n_dead else ""),
                  fontsize=9)
    bar = fig.colorbar(image, ax=[top, ax], extend="min", fraction=0.08, pad=0.02)
    bar.set_label(f"{QUANTITY_LABELS.get(quantity, quantity)} (white: < 0)")
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
    bar = fig.colorbar(image, ax=axes, fraction=0.03, pad=0.01, extend="min")
    bar.set_label(QUANTITY_LABELS.get(quantity, quantity))
    return fig


def interaction_matrices(data: ReportData, quantity: str) -> Figure | None:
    """Layer-level pairwise matrices (Shapley interactions or S2), one panel per layer; diagonal hidden."""
    mats: list[tuple[str, np.ndarray]] = []
    for layer in data.layer_names:
        pairs = data.map(layer, quantity)
        if pairs is None or pairs.ndim < 3:
            continue
        matrix = layer_pair_matrix(pairs, data.map(layer, "variance"), data.map(layer, "dead"))
        matrix = matrix.copy()
        np.fill_diagonal(matrix, np.nan)
        mats.append((layer, matrix))
    if not mats:
        return None
    players = data.players[: mats[0][1].shape[0]]
    colours = factor_colours(data.players)
    d = len(players)
    columns = min(len(mats), 3)
    rows = math.ceil(len(mats) / columns)
    side = max(2.6, 0.26 * d + 1.3)
    fig = Figure(figsize=(side * columns + 1.0, side * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    finite = np.concatenate([m[np.isfinite(m)] for _, m in mats] + [np.zeros(1)])
    limit = max(float(np.abs(finite).max()), 0.02)
    cmap = colormaps["RdBu_r"].with_extremes(bad="#e0e0e0")
    image = None
    for ax, (layer, matrix) in zip(axes.flat, mats):
        image = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_xticks(np.arange(d), players, rotation=60, ha="right", fontsize=7 if d > 8 else 8)
        ax.set_yticks(np.arange(d), players, fontsize=7 if d > 8 else 8)
        for k, player in enumerate(players):  # factor colours as ticks on both axes
            ax.plot([k], [d - 0.5], marker="s", markersize=5, color=colours[player], clip_on=False)
            ax.plot([-0.5], [k], marker="s", markersize=5, color=colours[player], clip_on=False)
        ax.set_title(layer)
        if d <= 6:
            for i in range(d):
                for j in range(d):
                    if np.isfinite(matrix[i, j]):
                        ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7,
                                color="white" if abs(matrix[i, j]) > 0.6 * limit else "black")
    for ax in list(axes.flat)[len(mats):]:
        ax.set_visible(False)
    assert image is not None
    bar = fig.colorbar(image, ax=axes, fraction=0.04, pad=0.02)
    bar.set_label(f"aggregated {QUANTITY_LABELS.get(quantity, quantity)}")
    return fig


def _sequential() -> mcolors.Colormap:
    """Viridis for indices in [0, 1]: grey for dead/NaN, white below 0 (negative estimates)."""
    return colormaps["viridis"].with_extremes(bad="#c8c8c8", under="#ffffff")
