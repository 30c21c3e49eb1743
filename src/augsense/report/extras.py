"""Sections for the other analyses' results, shown when their files exist in the run folder.

The tables come from other analyses (masking, single-class, contrast, map statistics); their
columns are read generically: each renderer draws a figure when the columns it needs are there
(names matched case-insensitively among common spellings) and always shows the table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from augsense.report.page import Page, Section
from augsense.report.palette import factor_colours

BASELINE_STYLES = {"guided": ("-", None), "random": ("--", "#7a7a7a"), "least": (":", "#b0b0b0")}
CLEAN_NAMES = {"clean", "none", "original", "identity", ""}


def _column(table: pd.DataFrame, *names: str) -> str | None:
    """The first column whose lower-cased name is one of ``names``."""
    lookup = {str(c).lower(): str(c) for c in table.columns}
    return next((lookup[n] for n in names if n in lookup), None)


def _grid(n: int, width: float, height: float, columns: int = 3) -> tuple[Figure, np.ndarray]:
    columns = max(1, min(n, columns))
    rows = math.ceil(n / columns)
    fig = Figure(figsize=(width * columns, height * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    return fig, axes


def _format(value: object) -> str:
    return f"{value:g}" if isinstance(value, (int, float, np.integer, np.floating)) else str(value)


def _configuration_labels(table: pd.DataFrame) -> pd.Series | None:
    """A readable label per mask configuration: rule, quantile and scale ("q=0.5 α=0", "soft α=1")."""
    q, alpha, mask = _column(table, "q", "quantile"), _column(table, "alpha", "scale"), _column(table, "mask", "rule")
    if q is None and alpha is None and mask is None:
        named = _column(table, "configuration", "config")
        return table[named].astype(str) if named is not None else None

    def label(row: pd.Series) -> str:
        parts = []
        if mask is not None and pd.notna(row[mask]) and str(row[mask]) not in ("quantile", ""):
            parts.append(str(row[mask]))
        for column, symbol in ((q, "q"), (alpha, "α")):
            if column is not None and pd.notna(row[column]):
                parts.append(f"{symbol}={_format(row[column])}")
        return " ".join(parts) or "–"

    return table.apply(label, axis=1).astype(str)


def _preferred_quantity(table: pd.DataFrame) -> pd.DataFrame:
    """Rows of one sensitivity quantity (Shapley, else total, else first order) when there are several."""
    column = _column(table, "quantity")
    if column is None:
        return table
    present = set(table[column].dropna().astype(str))
    choice = next((q for q in ("shapley", "total_order", "first_order") if q in present), None)
    return table if choice is None or len(present) < 2 else table[table[column].isna() | (table[column] == choice)]


def masking_figure(table: pd.DataFrame, players: Sequence[str]) -> Figure | None:
    """Top-1 accuracy over mask configurations, one panel per factor: guided vs random vs least units.

    Line style: guided (solid, the factor's colour), random (dashed), least sensitive (dotted) units;
    thick lines: images augmented by the panel's own factor, thin lines: clean images; horizontal
    lines: the unmasked network (``kind == "none"`` rows).
    """
    table = _preferred_quantity(table)
    factor, top1 = _column(table, "factor"), _column(table, "top1", "top1_accuracy", "accuracy")
    labels = _configuration_labels(table)
    if factor is None or top1 is None or labels is None:
        return None
    kind = _column(table, "kind", "baseline", "selection")
    augmentation = _column(table, "augmentation", "input", "augmented_by")
    frame = pd.DataFrame({"factor": table[factor].astype("string").fillna(""), "config": labels,
                          "top1": pd.to_numeric(table[top1], errors="coerce"),
                          "kind": table[kind].astype(str).str.lower() if kind else "guided",
                          "input": table[augmentation].fillna("clean").astype(str) if augmentation else "all"})
    reference = frame[frame["kind"] == "none"].groupby("input")["top1"].mean()
    frame = frame[(frame["kind"] != "none") & (frame["factor"] != "")]
    factors = [p for p in players if p in set(frame["factor"])] + sorted(set(frame["factor"]) - set(players))
    if not factors:
        return None
    order = list(dict.fromkeys(frame.loc[frame["kind"] == "guided", "config"])) or list(dict.fromkeys(frame["config"]))
    order += [c for c in dict.fromkeys(frame["config"]) if c not in order]
    colours = factor_colours(list(players) + [f for f in factors if f not in players])
    fig, axes = _grid(len(factors), max(3.2, 0.17 * len(order) + 1.3), 3.0)
    x = np.arange(len(order))
    for ax, name in zip(axes.flat, factors):
        part = frame[frame["factor"] == name]
        own = part[part["input"] == name]
        clean = part[part["input"].str.lower().isin(CLEAN_NAMES)]
        inputs = [(own, 2.0, 1.0, name), (clean, 1.0, 0.6, "clean")] if augmentation else [(part, 1.6, 1.0, "all")]
        for rows, width, alpha, input_name in inputs:
            for kind_name, curve in rows.groupby("kind", sort=False):
                mean = curve.groupby("config", sort=False)["top1"].mean().reindex(order)
                style, colour = BASELINE_STYLES.get(kind_name, ("-.", "#4d4d4d"))
                ax.plot(x, mean.to_numpy(), linestyle=style, marker="o", markersize=2.5, linewidth=width,
                        color=colour or colours[name], alpha=alpha)
            if input_name in reference.index:
                ax.axhline(float(reference[input_name]), color="black", linewidth=width * 0.6, alpha=alpha)
        ax.set_title(f"masks from {name}", color="black")
        ax.set_xticks(x, order, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel("top-1 accuracy")
        ax.set_ylim(-0.02, 1.02)
    handles = [Line2D([], [], color="#444444", linestyle="-", label="guided (factor colour)"),
               Line2D([], [], color=BASELINE_STYLES["random"][1], linestyle="--", label="random units"),
               Line2D([], [], color=BASELINE_STYLES["least"][1], linestyle=":", label="least sensitive units"),
               Line2D([], [], color="black", linewidth=1.2, label="unmasked")]
    if augmentation:
        handles += [Line2D([], [], color="#444444", linewidth=2.0, label="input: the factor's own augmentation"),
                    Line2D([], [], color="#444444", linewidth=1.0, alpha=0.6, label="input: clean images")]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, frameon=False)
    return fig


def single_class_figure(table: pd.DataFrame, players: Sequence[str]) -> Figure | None:
    """Per factor, the best mask configuration's mean Jaccard index (per scale α) against the null threshold."""
    table = _preferred_quantity(table)
    factor, jaccard = _column(table, "factor"), _column(table, "jaccard", "mean_jaccard", "jaccard_mean")
    if factor is None or jaccard is None:
        return None
    threshold = _column(table, "threshold", "null_threshold", "fence")
    group = _column(table, "action", "alpha", "kind", "mode")
    frame = table.assign(_group=table[group].map(lambda v: f"α={_format(v)}" if group == _column(table, "alpha")
                                                 else str(v)) if group else "")
    frame = frame[frame[factor].notna()]
    means = frame.groupby([factor, "_group"], sort=False)[jaccard].max().unstack("_group")
    names = [p for p in players if p in means.index] + [f for f in means.index if f not in players]
    means = means.reindex(names)
    colours = factor_colours(list(players) + [f for f in names if f not in players])
    fig = Figure(figsize=(max(4.0, 0.45 * len(names) * max(1, means.shape[1]) + 1.5), 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, means.shape[1])
    hatches = ["", "//", "..", "xx"]
    for k, column in enumerate(means.columns):
        ax.bar(np.arange(len(names)) + (k - (means.shape[1] - 1) / 2) * width, means[column].to_numpy(), width,
               color=[colours[n] for n in names], hatch=hatches[k % len(hatches)], edgecolor="white",
               label=str(column) or None)
    if threshold is not None:
        value = float(pd.to_numeric(table[threshold], errors="coerce").max())
        if np.isfinite(value):
            ax.axhline(value, color="black", linestyle="--", linewidth=1, label=f"null threshold {value:.4f}")
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("mean Jaccard, best configuration")
    ax.set_xlabel("factor whose units were masked")
    ax.legend(frameon=False, fontsize=7)
    return fig


def contrast_figure(table: pd.DataFrame, players: Sequence[str]) -> Figure | None:
    """Share of units with a significant treatment–control effect, per layer and factor (after FDR)."""
    factor, layer = _column(table, "factor"), _column(table, "layer")
    significant = _column(table, "significant", "rejected", "reject")
    q_value = _column(table, "q_value", "p_adjusted", "p_fdr", "qvalue")
    if factor is None or (significant is None and q_value is None):
        return None
    flags = table[significant].astype(bool) if significant else pd.to_numeric(table[q_value], errors="coerce") < 0.05
    frame = pd.DataFrame({"factor": table[factor].astype(str), "layer": table[layer].astype(str) if layer else "all",
                          "significant": flags})
    shares = frame.groupby(["layer", "factor"], sort=False)["significant"].mean().unstack("factor")
    names = [p for p in players if p in shares.columns] + [f for f in shares.columns if f not in players]
    shares = shares[names]
    colours = factor_colours(list(players) + [f for f in names if f not in players])
    fig = Figure(figsize=(max(4.5, 0.25 * len(names) * len(shares) + 2.5), 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        ax.bar(np.arange(len(shares)) + (k - (len(names) - 1) / 2) * width, shares[name].to_numpy(), width,
               color=colours[name], label=name)
    ax.set_xticks(np.arange(len(shares)), list(shares.index), rotation=30, ha="right")
    ax.set_ylabel("share of units significant (FDR)")
    ax.set_xlabel("layer")
    ax.set_ylim(0, 1)
    fig.legend(loc="outside right center", frameon=False)
    return fig


def map_statistics_figure(table: pd.DataFrame, players: Sequence[str]) -> Figure | None:
    """Spearman correlation matrices between factors' maps, one panel per scope/layer."""
    a, b = _column(table, "factor_a", "factor"), _column(table, "factor_b", "factor2")
    rho = _column(table, "rho", "spearman", "correlation", "estimate")
    if a is None or b is None or rho is None:
        return None
    table = _preferred_quantity(table)
    scope = _column(table, "scope")
    if scope is not None:  # correlations with the coefficient of variation stay in the table
        table = table[table[scope].astype(str) != "cv"]
    keys = [c for c in (_column(table, "layer"), scope) if c is not None]
    groups = (list(table.groupby(keys, sort=False)) if keys else [("all", table)])[:12]
    if not groups:
        return None
    fig, axes = _grid(len(groups), 3.4, 3.2)
    image = None
    for ax, (key, part) in zip(axes.flat, groups):
        names = list(dict.fromkeys(list(part[a].astype(str)) + list(part[b].astype(str))))
        names = [p for p in players if p in names] + [n for n in names if n not in players]
        matrix = pd.DataFrame(np.nan, index=names, columns=names)
        for row in part.itertuples(index=False):
            x, y, value = str(getattr(row, a)), str(getattr(row, b)), getattr(row, rho)
            matrix.loc[x, y] = value
            matrix.loc[y, x] = value
        image = ax.imshow(matrix.to_numpy(dtype=float), cmap=colormaps["RdBu_r"].with_extremes(bad="#e0e0e0"),
                          vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xticks(np.arange(len(names)), names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(np.arange(len(names)), names, fontsize=7)
        ax.set_title(" / ".join(str(k) for k in (key if isinstance(key, tuple) else (key,))), fontsize=9)
    if image is None:
        return None
    quantity = _column(table, "quantity")
    if quantity is not None and table[quantity].notna().any():
        fig.suptitle(f"maps of {table[quantity].dropna().iloc[0]}", fontsize=9)
    fig.colorbar(image, ax=axes, fraction=0.04, pad=0.02, shrink=0.8).set_label("Spearman ρ")
    return fig


EXTRA_SECTIONS: dict[str, tuple[str, Callable[[pd.DataFrame, Sequence[str]], Figure | None], str]] = {
    "masking": ("Guided masking", masking_figure,
                "Top-1 accuracy when the units most sensitive to each factor are masked, against random and "
                "least-sensitive units of the same number."),
    "single_class": ("Single-class sensitivity", single_class_figure,
                     "Mean Jaccard index between each factor's candidate classes and the top-k predictions "
                     "after masking, against the null threshold."),
    "contrast": ("Treatment–control contrast", contrast_figure,
                 "Share of units whose activation each augmentation alone changes significantly "
                 "(Wilcoxon signed-rank, Benjamini–Yekutieli FDR)."),
    "map_statistics": ("Map statistics", map_statistics_figure,
                       "Spearman correlations between the factors' sensitivity maps across units."),
}


#: Further tables written next to each result, shown below it (collapsed).
COMPANIONS = {"masking": ("masking_gap", "masking_spearman", "masking_classes"),
              "map_statistics": ("map_lda", "map_lda_confusion")}


def _table_order(name: str, table: pd.DataFrame) -> pd.DataFrame:
    """Most telling rows first: confirmed biases, then the smallest q-values."""
    confirmed, q_value = _column(table, "confirmed"), _column(table, "q_value", "p_adjusted")
    jaccard = _column(table, "mean_jaccard", "jaccard")
    if name == "single_class" and confirmed is not None:
        keys = [confirmed] + ([jaccard] if jaccard else [])
        return table.sort_values(keys, ascending=False, kind="stable")
    if name == "contrast" and q_value is not None:
        return table.sort_values(q_value, kind="stable")
    return table


def render_extra(page: Page, section: Section, name: str, table: pd.DataFrame, players: Sequence[str]) -> None:
    """A figure when the columns allow, then the table (most telling rows first)."""
    _, draw, caption = EXTRA_SECTIONS[name]
    try:
        fig = draw(table, players)
    except Exception as error:  # noqa: BLE001 - a table of unexpected shape must not stop the report
        page.notice(section, f"{name}: the figure could not be drawn from these columns "
                             f"({type(error).__name__}: {error}); the table follows.")
        fig = None
    if fig is not None:
        page.figure(section, fig, name, caption)
    confirmed = _column(table, "confirmed")
    if name == "single_class" and confirmed is not None:
        rows = table[table[confirmed].fillna(False).astype(bool)]
        if rows.empty:
            page.text(section, "No bias is confirmed: no mean Jaccard index exceeds the null threshold.")
        else:
            page.table(section, _table_order(name, rows), "confirmed biases (factor → classes)")
    # with a figure, the table folds away; without one, it is the content
    page.raw(section, f"<details><summary>{name}.parquet: {len(table)} rows</summary>" if fig is not None else "<div>")
    page.table(section, _table_order(name, table), f"{name}.parquet")
    page.raw(section, "</details>" if fig is not None else "</div>")
