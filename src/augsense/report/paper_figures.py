"""The paper's figure types, drawn from the tables ``augsense maps``/``mask``/``paper``/``segments`` write.

One report section, shown when at least one of these files is in the run folder (names and columns
in docs/contrast_maps_segments.md and docs/masking.md):

* ``map_lda_paper.parquet`` — LDA accuracy per layer (held-out mean ± SD over folds, chance);
* ``map_pixel_correlations.parquet`` — per-pixel correlation between factors across channels:
  mean (upper triangle) and SD over pixels (lower triangle), one panel per layer;
* ``masking_pairs.parquet`` + ``masking_linkage.parquet`` — dendrogram of the masking profiles of
  all (augmentation, mask factor) pairs;
* ``class_decay.parquet`` — class-decay curves: each factor's candidate classes' share of top-1
  predictions against the masked fraction, guided masks (solid) vs random ones (dashed);
* ``segments_indices.parquet`` (in the run folder or its ``segments/`` sub-folder) — segment
  indices per input channel (subset) and factor;
* ``segments_neurons.parquet`` (same places) — per segment unit (neuron: its channel index in the
  full network, e.g. the paper's selected units) the share of its variance under each input channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from augsense.report.data import ReportData
from augsense.report.page import Page, Section
from augsense.report.palette import factor_colours

__all__ = ["PAPER_FILES", "paper_sections"]

#: The tables this section draws, by file stem.
PAPER_FILES = ("map_lda_paper", "map_pixel_correlations", "masking_pairs", "masking_linkage", "class_decay",
               "segments_indices", "segments_neurons")
#: At most this many neurons per panel of the segment-neuron figure (the first by index).
MAX_NEURONS = 48
QUANTITY_ORDER = ("total_order", "shapley", "first_order")


def _one_quantity(table: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    if "quantity" not in table:
        return table, None
    present = set(table["quantity"].dropna().astype(str))
    choice = next((q for q in QUANTITY_ORDER if q in present), None)
    return (table[table["quantity"] == choice], choice) if choice else (table, None)


def _layer_order(data: ReportData, layers: list[str]) -> list[str]:
    known = [layer for layer in data.layer_names if layer in layers]
    return known + [layer for layer in layers if layer not in known]


def lda_figure(table: pd.DataFrame, data: ReportData) -> Figure:
    """Held-out accuracy ± SD per layer, one line per index, with the chance level."""
    layers = _layer_order(data, list(dict.fromkeys(table["layer"].astype(str))))
    fig = Figure(figsize=(max(5.5, 0.9 * len(layers) + 2), 3.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(layers))
    for quantity, part in table.groupby("quantity", sort=False):
        part = part.set_index("layer").reindex(layers)
        ax.errorbar(x, part["accuracy"], yerr=part["accuracy_sd"], marker="o", capsize=3, label=str(quantity))
    chance = table.groupby("layer")["chance"].first().reindex(layers)
    ax.plot(x, chance, "k--", lw=1, label="chance")
    ax.set_xticks(x, layers, rotation=30, ha="right")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("held-out accuracy")
    repeats = table["n_repeats"].iloc[0] if "n_repeats" in table else "?"
    splits = table["n_splits"].iloc[0] if "n_splits" in table else "?"
    ax.set_title(f"LDA of (factor, channel) maps, {splits} × {repeats} folds", fontsize=9)
    ax.legend(loc="best")
    return fig


def pixel_figure(table: pd.DataFrame, data: ReportData) -> Figure:
    """Per layer: mean ρ over pixels above the diagonal, its SD below."""
    table, _ = _one_quantity(table)
    layers = _layer_order(data, list(dict.fromkeys(table["layer"].astype(str))))[:9]
    columns = min(3, len(layers))
    rows = math.ceil(len(layers) / columns)
    fig = Figure(figsize=(3.6 * columns, 3.4 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    players = data.players
    image = None
    for ax, layer in zip(axes, layers):
        part = table[table["layer"] == layer]
        names = list(dict.fromkeys(list(part["factor_a"]) + list(part["factor_b"])))
        names = [p for p in players if p in names] + [n for n in names if n not in players]
        position = {n: i for i, n in enumerate(names)}
        matrix = np.full((len(names), len(names)), np.nan)
        for row in part.itertuples(index=False):
            i, j = sorted((position[row.factor_a], position[row.factor_b]))
            matrix[i, j] = row.rho_mean
            matrix[j, i] = row.rho_sd
        image = ax.imshow(matrix, cmap=colormaps["RdBu_r"].with_extremes(bad="#e0e0e0"), vmin=-1, vmax=1,
                          interpolation="nearest")
        ax.set_xticks(np.arange(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(np.arange(len(names)), names, fontsize=7)
        pixels = int(part["n_pixels"].max()) if len(part) else 0
        ax.set_title(f"{layer} ({pixels} pixels)", fontsize=9)
    for ax in axes[len(layers):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, ax=list(axes[:len(layers)]), shrink=0.7, label="upper: mean ρ · lower: SD of ρ")
    return fig


def dendrogram_figure(pairs: pd.DataFrame, linkage: pd.DataFrame) -> Figure:
    """Average-linkage dendrogram of the (augmentation, mask factor) profiles, distance √(1 − |ρ|)."""
    import scipy.cluster.hierarchy

    pairs = pairs.sort_values("leaf")
    labels = [f"{a} · mask {f}" for a, f in zip(pairs["augmentation"], pairs["factor"])]
    fig = Figure(figsize=(6.5, max(2.5, 0.22 * len(labels) + 1)), layout="constrained")
    ax = fig.subplots()
    matrix = linkage[["left", "right", "distance", "size"]].to_numpy(dtype=float)
    scipy.cluster.hierarchy.dendrogram(matrix, labels=labels, orientation="right", ax=ax, leaf_font_size=7,
                                       color_threshold=0.0, above_threshold_color="#555555")
    ax.set_xlabel("√(1 − |Spearman ρ|) between masking-accuracy profiles")
    ax.set_title("Masking profiles of all (augmentation, mask) pairs")
    return fig


def decay_figure(table: pd.DataFrame, players: list[str]) -> Figure:
    """One panel per factor (and α): share of predictions in each candidate class vs masked fraction."""
    table, _ = _one_quantity(table)
    masked = table[table["kind"] != "none"][["factor", "alpha"]].drop_duplicates()
    keys = [(f, a) for f, a in masked.itertuples(index=False)]
    keys = keys[:12]
    columns = min(3, len(keys))
    rows = math.ceil(len(keys) / columns)
    fig = Figure(figsize=(3.6 * columns, 2.8 * rows + 0.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    cycle = colormaps["tab10"]
    for ax, (factor, alpha) in zip(axes, keys):
        part = table[table["factor"] == factor]
        for i, (klass, rows_) in enumerate(part.groupby("class", sort=False)):
            colour = cycle(i % 10)
            name = str(rows_["class_name"].iloc[0])
            none = rows_[rows_["kind"] == "none"].head(1)
            for kind, style in (("guided", "-"), ("random", "--")):
                line = rows_[(rows_["kind"] == kind) & (rows_["alpha"] == alpha)].sort_values("masked_fraction")
                line = pd.concat([none, line]) if len(none) else line
                ax.plot(line["masked_fraction"], line["share"], style, marker="o", ms=3, color=colour,
                        label=name[:18] if kind == "guided" else None)
                if kind == "random" and "share_sd" in line and line["share_sd"].notna().any():
                    sd = line["share_sd"].fillna(0.0)
                    ax.fill_between(line["masked_fraction"], line["share"] - sd, line["share"] + sd, color=colour,
                                    alpha=0.12, lw=0)
        ax.set_title(f"{factor}'s units × {alpha:g}", fontsize=9, color=factor_colours(players).get(factor, "black"))
        ax.set_xlabel("masked fraction of units")
        ax.set_ylabel("share of top-1 predictions")
        ax.legend(fontsize=6, loc="best")
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    return fig


def segments_figure(table: pd.DataFrame) -> Figure:
    """Per layer: mean index over units, input channel (subset) × factor."""
    table, quantity = _one_quantity(table)
    layers = list(dict.fromkeys(table["layer"].astype(str)))[:6]
    fig = Figure(figsize=(max(4.5, 0.45 * table["factor"].nunique() + 2), 2.4 * len(layers) + 0.4),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(layers), 1, squeeze=False)).ravel()
    image = None
    for ax, layer in zip(axes, layers):
        matrix = table[table["layer"] == layer].pivot_table(index="channel", columns="factor", values="mean",
                                                             sort=False)
        image = ax.imshow(matrix.to_numpy(float), cmap="viridis", vmin=0, vmax=max(1e-9, float(np.nanmax(matrix))),
                          aspect="auto", interpolation="nearest")
        ax.set_yticks(np.arange(len(matrix.index)), [c.upper() for c in matrix.index])
        ax.set_xticks(np.arange(len(matrix.columns)), matrix.columns, rotation=45, ha="right", fontsize=7)
        values = matrix.to_numpy(float)
        for (i, j), value in np.ndenumerate(values):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if value < 0.5 * np.nanmax(values) else "black")
        ax.set_title(f"segment layer {layer}: mean {quantity or 'index'} per input channel", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8)
    return fig


def segment_neurons_figure(table: pd.DataFrame) -> Figure:
    """Per layer: each neuron's share of its variance under each input channel (factor "all"); • marks the
    attributed channel, the row label names the factors the neuron was selected for."""
    whole = table[table["factor"] == "all"]
    layers = list(dict.fromkeys(whole["layer"].astype(str)))[:3]
    channels = list(dict.fromkeys(whole["channel"].astype(str)))
    sizes = [min(MAX_NEURONS, whole.loc[whole["layer"] == layer, "neuron"].nunique()) for layer in layers]
    fig = Figure(figsize=(max(5.5, 0.55 * len(channels) + 4.6), 0.22 * sum(sizes) + 1.1 * len(layers) + 0.6),
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(layers), 1, squeeze=False, height_ratios=[max(s, 2) for s in sizes])).ravel()
    image = None
    for ax, layer in zip(axes, layers):
        part = whole[whole["layer"] == layer]
        share = part.pivot_table(index="neuron", columns="channel", values="share", sort=True, dropna=False)
        share = share.reindex(columns=[c for c in channels if c in share.columns]).iloc[:MAX_NEURONS]
        image = ax.imshow(share.to_numpy(float), cmap=colormaps["magma_r"].with_extremes(bad="#e0e0e0"), vmin=0,
                          vmax=1, aspect="auto", interpolation="nearest")
        best = part[part["attributed"].astype(bool)].set_index("neuron")["channel"]
        for i, neuron in enumerate(share.index):
            if neuron in best.index:
                ax.text(list(share.columns).index(best[neuron]), i, "•", ha="center", va="center", fontsize=8,
                        color="#00a0ff")
        reasons = part.drop_duplicates("neuron").set_index("neuron").get("selected_for", pd.Series(dtype=str))
        labels = [f"{n}" + (f" ({_shorten(str(reasons[n]))})" if n in reasons.index and str(reasons[n]) else "")
                  for n in share.index]
        ax.set_yticks(np.arange(len(share.index)), labels, fontsize=6)
        ax.set_xticks(np.arange(len(share.columns)), [c.upper() for c in share.columns], fontsize=7)
        ax.set_ylabel("neuron (channel)", fontsize=7)
        more = part["neuron"].nunique() - len(share.index)
        ax.set_title(f"segment layer {layer}: each unit's variance by input"
                     + (f"\n(first {len(share.index)}; {more} more in the table)" if more > 0 else ""), fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes), shrink=0.8, label="share of variance (grey: none)")
    return fig


def _shorten(text: str, width: int = 30) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def paper_sections(page: Page, data: ReportData) -> None:
    """Add the section "The paper's figures" when any of :data:`PAPER_FILES` is in the run folder."""
    tables = {name: table for name in PAPER_FILES if (table := data.analysis_table(name)) is not None}
    if not tables:
        return
    section = page.section("paper", "The paper's figures")
    drawn: list[tuple[str, Callable[[], Figure], str, str]] = []
    if "map_lda_paper" in tables:
        drawn.append(("paper-lda", lambda: lda_figure(tables["map_lda_paper"], data),
                      "LDA accuracy per layer: samples are (factor, channel) maps labelled by their factor "
                      "(repeated stratified folds); dashed: chance.", "map_lda_paper"))
    if "map_pixel_correlations" in tables:
        drawn.append(("paper-pixel-correlations", lambda: pixel_figure(tables["map_pixel_correlations"], data),
                      "Per-pixel Spearman correlation between factors' maps across channels: mean over pixels "
                      "above the diagonal, SD below"
                      + ("; dead units as index 0 and an undefined ρ as 0, as the paper."
                         if set(tables["map_pixel_correlations"].get("missing", pd.Series(["?"]))) == {"paper"}
                         else "."), "map_pixel_correlations"))
    if "masking_pairs" in tables and "masking_linkage" in tables and len(tables["masking_linkage"]):
        drawn.append(("paper-masking-dendrogram",
                      lambda: dendrogram_figure(tables["masking_pairs"], tables["masking_linkage"]),
                      "Dendrogram (average linkage) of the masking-accuracy profiles of all (augmentation, mask "
                      "factor) pairs.", "masking_pairs"))
    if "class_decay" in tables and len(tables["class_decay"]):
        drawn.append(("paper-class-decay", lambda: decay_figure(tables["class_decay"], data.players),
                      "Class decay: a class's share of top-1 predictions as more of the factor's units are masked "
                      "(solid) and as many random units (dashed, ± SD over draws); classes: "
                      + ", ".join(sorted(set(tables["class_decay"].get("classes", pd.Series(["candidates"])).astype(str))))
                      + ".",
                      "class_decay"))
    if "segments_indices" in tables and len(tables["segments_indices"]):
        drawn.append(("paper-segment-indices", lambda: segments_figure(tables["segments_indices"]),
                      "Segment indices per input channel: the block fed H, S, V (or a subset) of the augmented "
                      "input; mean index over the layer's live units.", "segments_indices"))
    if "segments_neurons" in tables and len(tables["segments_neurons"]):
        drawn.append(("paper-segment-neurons", lambda: segment_neurons_figure(tables["segments_neurons"]),
                      "Segment units (neurons, by channel index in the full network; in brackets the factors they "
                      "were selected for): share of each unit's augmentation-induced variance under each input "
                      "channel; • the channel it is attributed to.", "segments_neurons"))
    for name, draw, caption, source in drawn:
        try:
            page.figure(section, draw(), name, caption)
        except Exception as error:  # noqa: BLE001 - one bad table must not hide the other figures
            page.notice(section, f"{source}.parquet could not be drawn: {type(error).__name__}: {error}")
    for name in ("map_lda_paper", "class_decay", "segments_indices"):
        if name in tables and len(tables[name]):
            _details(page, section, tables[name], f"{name}.parquet")


def _details(page: Page, section: Section, table: pd.DataFrame, caption: str) -> None:
    page.raw(section, f"<details><summary>{caption}</summary>")
    page.table(section, table, caption)
    page.raw(section, "</details>")
