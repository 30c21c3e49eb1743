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


def wilson(successes: np.ndarray, n: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion: (low, high), NaN where n = 0."""
    from scipy.stats import norm

    successes, n = np.asarray(successes, dtype=float), np.asarray(n, dtype=float)
    z = float(norm.ppf(0.5 + confidence / 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        p = successes / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    bad = n <= 0
    return np.where(bad, np.nan, np.clip(centre - half, 0, 1)), np.where(bad, np.nan, np.clip(centre + half, 0, 1))


def _masking_frame(table: pd.DataFrame) -> pd.DataFrame | None:
    """Masking rows as (factor, kind, q, alpha, mask, input, correct, n) with counts pooled over draws."""
    table = _preferred_quantity(table)
    factor, top1 = _column(table, "factor"), _column(table, "top1", "top1_accuracy", "accuracy")
    q, alpha = _column(table, "q", "quantile"), _column(table, "alpha", "scale")
    if factor is None or top1 is None or (q is None and alpha is None):
        return None
    n = _column(table, "n_images", "n")
    kind, mask = _column(table, "kind", "baseline", "selection"), _column(table, "mask", "rule")
    augmentation = _column(table, "augmentation", "input", "augmented_by")
    counts = pd.to_numeric(table[n], errors="coerce") if n else pd.Series(np.nan, index=table.index)
    accuracy = pd.to_numeric(table[top1], errors="coerce")
    frame = pd.DataFrame({
        "factor": table[factor].astype("string").fillna(""),
        "kind": table[kind].astype(str).str.lower() if kind else "guided",
        "q": pd.to_numeric(table[q], errors="coerce") if q else np.nan,
        "alpha": pd.to_numeric(table[alpha], errors="coerce") if alpha else np.nan,
        "mask": table[mask].fillna("quantile").astype(str) if mask else "quantile",
        "input": table[augmentation].fillna("clean").astype(str) if augmentation else "clean",
        "correct": accuracy * counts, "n": counts, "top1": accuracy})
    return frame


def _pooled(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Top-1 per group pooled over draws: correct / n, with a Wilson interval (NaN without counts)."""
    grouped = rows.groupby(keys, sort=True, dropna=False).agg(correct=("correct", "sum"), n=("n", "sum"),
                                                              top1=("top1", "mean"))
    has_counts = grouped["n"] > 0
    grouped["top1"] = np.where(has_counts, grouped["correct"] / grouped["n"].where(has_counts, 1), grouped["top1"])
    grouped["low"], grouped["high"] = wilson(grouped["correct"].to_numpy(), grouped["n"].to_numpy())
    return grouped.reset_index()


def masking_figure(table: pd.DataFrame, players: Sequence[str]) -> Figure | None:
    """Top-1 accuracy against the mask quantile q, one panel per scale α (and per input), with intervals.

    Rows of panels: the input (clean images; each factor's own augmentation); columns: α (0 damages
    the selected units, 1.5 amplifies them) and, when present, the soft masks. In a panel, per factor:
    guided units (solid, the factor's colour), random units of the same number (dashed, pooled over
    the draws), least sensitive units (dotted); whiskers: 95 % Wilson intervals over the images. The
    unmasked network is a black band (its Wilson interval) on clean images, a dash-dotted line in the
    factor's colour on its own augmentation.
    """
    frame = _masking_frame(table)
    if frame is None:
        return None
    reference = _pooled(frame[frame["kind"] == "none"], ["input"]).set_index("input")
    frame = frame[(frame["kind"] != "none") & (frame["factor"] != "")]
    factors = [p for p in players if p in set(frame["factor"])] + sorted(set(frame["factor"]) - set(players))
    if not factors:
        return None
    quantile = frame[frame["q"].notna()]
    alphas = sorted(quantile["alpha"].dropna().unique()) or [np.nan]
    soft = frame[frame["q"].isna() & (frame["mask"] != "quantile")]
    columns: list[tuple[str, object]] = [("alpha", a) for a in alphas] + ([("soft", None)] if not soft.empty else [])
    own = [f for f in factors if (frame["input"] == f).any()]
    inputs = [("clean", "clean images")] if frame["input"].str.lower().isin(CLEAN_NAMES).any() else []
    if own:
        inputs.append(("own", "each factor's own augmentation"))
    if not inputs:
        inputs = [("all", "all inputs")]
    colours = factor_colours(list(players) + [f for f in factors if f not in players])
    fig = Figure(figsize=(3.3 * len(columns) + 0.6, 2.9 * len(inputs) + 0.9), layout="constrained")
    axes = fig.subplots(len(inputs), len(columns), squeeze=False, sharey=True)
    dodge = np.linspace(-0.22, 0.22, len(factors)) if len(factors) > 1 else np.zeros(1)
    shift = {"guided": 0.0, "random": 0.045, "least": -0.045}  # whiskers of one factor side by side
    for r, (input_kind, input_title) in enumerate(inputs):
        for c, (column, value) in enumerate(columns):
            ax = axes[r, c]
            if column == "alpha":
                part = quantile[(quantile["alpha"] == value) | (pd.isna(value) & quantile["alpha"].isna())]
                x_name = "q"
            else:
                part = soft
                x_name = "mask"
            if input_kind == "clean":
                part = part[part["input"].str.lower().isin(CLEAN_NAMES)]
            elif input_kind == "own":
                part = part[part["input"] == part["factor"]]
            levels = sorted(part[x_name].unique()) if x_name == "q" else list(dict.fromkeys(part[x_name]))
            position = {level: k for k, level in enumerate(levels)}
            for k, name in enumerate(factors):
                rows = part[part["factor"] == name]
                if rows.empty:
                    continue
                for kind_name, curve in _pooled(rows, ["kind", x_name]).groupby("kind", sort=False):
                    style, _ = BASELINE_STYLES.get(kind_name, ("-.", None))
                    x = np.array([position[v] for v in curve[x_name]], dtype=float) + dodge[k] + shift.get(
                        kind_name, 0.0)
                    if x_name != "q":  # categories, not a scale: no connecting line
                        style = "none"
                    y = curve["top1"].to_numpy(float)
                    yerr = np.vstack([y - curve["low"].to_numpy(float), curve["high"].to_numpy(float) - y])
                    ax.errorbar(x, y, yerr=None if np.isnan(yerr).all() else np.clip(yerr, 0, None),
                                color=colours[name], linestyle=style, marker="o" if kind_name == "guided" else ".",
                                markersize=3.5, linewidth=1.6 if kind_name == "guided" else 1.0, capsize=2,
                                elinewidth=0.8, alpha=1.0 if kind_name == "guided" else 0.75)
                if input_kind == "own" and name in reference.index:
                    ax.axhline(float(reference.loc[name, "top1"]), color=colours[name], linestyle="-.",
                               linewidth=1.0)
            if input_kind != "own":
                ref_name = next((i for i in reference.index if str(i).lower() in CLEAN_NAMES), None)
                if ref_name is not None:
                    ref = reference.loc[ref_name]
                    ax.axhline(float(ref["top1"]), color="black", linewidth=1.4, zorder=1)
                    if np.isfinite(ref["low"]):
                        ax.axhspan(float(ref["low"]), float(ref["high"]), color="black", alpha=0.08, linewidth=0)
            ax.set_xticks(np.arange(len(levels)), [_format(v) for v in levels], rotation=0 if x_name == "q" else 20)
            ax.set_xlim(-0.5, max(len(levels) - 0.5, 0.5))
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("mask units with index ≥ the q-quantile" if x_name == "q" else "soft mask")
            title = f"α = {_format(value)}" if column == "alpha" else "soft masks"
            if column == "alpha" and value == 0:
                title += " (damage)"
            elif column == "alpha" and isinstance(value, float) and value > 1:
                title += " (amplify)"
            ax.set_title(f"{title}; {input_title}", fontsize=8.5)
            if c == 0:
                ax.set_ylabel("top-1 accuracy")
    handles = [Line2D([], [], color=colours[f], linewidth=2, label=f) for f in factors]
    handles += [Line2D([], [], color="#444444", linestyle="-", marker="o", markersize=3, label="guided units"),
                Line2D([], [], color="#444444", linestyle="--", label="random units (pooled draws)"),
                Line2D([], [], color="#444444", linestyle=":", label="least sensitive units"),
                Line2D([], [], color="black", linewidth=1.4, label="unmasked, clean (band: interval)")]
    if own:
        handles.append(Line2D([], [], color="#444444", linestyle="-.", label="unmasked, own augmentation"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5), frameon=False)
    return fig


def single_class_figure(table: pd.DataFrame, players: Sequence[str]) -> Figure | None:
    """Per factor and scale α, the best mask configuration's mean Jaccard index beside the unmasked one.

    Bars: the masked network's mean Jaccard (between the factor's candidate classes and the top-k
    predictions), outlined so that α = 0 bars near 0 stay visible, each labelled with its value; a
    black tick: the same network unmasked (its baseline); dashed line: the null threshold.
    """
    table = _preferred_quantity(table)
    factor, jaccard = _column(table, "factor"), _column(table, "jaccard", "mean_jaccard", "jaccard_mean")
    if factor is None or jaccard is None:
        return None
    threshold = _column(table, "threshold", "null_threshold", "fence")
    baseline = _column(table, "unmasked_jaccard", "baseline", "unmasked")
    alpha_column = _column(table, "alpha")
    group = _column(table, "action", "alpha", "kind", "mode")
    frame = table[table[factor].notna()].copy()
    frame["_group"] = (frame[group].map(lambda v: f"α = {_format(v)}" if group == alpha_column else str(v))
                       if group else "")
    frame["_value"] = pd.to_numeric(frame[jaccard], errors="coerce")
    best = frame.sort_values("_value", ascending=False, kind="stable").groupby([factor, "_group"], sort=False).head(1)
    means = best.set_index([factor, "_group"])["_value"].unstack("_group")
    groups = sorted(means.columns, key=lambda g: (pd.to_numeric(g.replace("α = ", ""), errors="coerce"), g))
    means = means[groups]
    names = [p for p in players if p in means.index] + [f for f in means.index if f not in players]
    means = means.reindex(names)
    colours = factor_colours(list(players) + [f for f in names if f not in players])
    fig = Figure(figsize=(max(4.2, 0.5 * len(names) * max(1, len(groups)) + 1.8), 3.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(groups))
    hatches = ["//", "", "..", "xx"]
    top = 0.0
    for k, column in enumerate(groups):
        x = np.arange(len(names)) + (k - (len(groups) - 1) / 2) * width
        values = means[column].to_numpy(dtype=float)
        ax.bar(x, values, width * 0.92, color=[colours[n] for n in names], hatch=hatches[k % len(hatches)],
               edgecolor=[colours[n] for n in names], linewidth=1.2, alpha=0.85)
        ax.bar(x, values, width * 0.92, fill=False, edgecolor="#333333", linewidth=0.6)
        ax.hlines(np.nan_to_num(values), x - width * 0.46, x + width * 0.46, color=[colours[n] for n in names],
                  linewidth=2.2, zorder=3)  # each bar's top, visible at 0 too
        for xi, v in zip(x, values):
            if np.isfinite(v):
                ax.text(xi, v, f"{v:.3f}", ha="center", va="bottom", fontsize=6, rotation=90)
                top = max(top, v)
        if baseline is not None:
            rows = best[best["_group"] == column].set_index(factor).reindex(names)
            base = pd.to_numeric(rows[baseline], errors="coerce").to_numpy(dtype=float)
            ax.scatter(x, base, marker="_", s=160, color="black", linewidths=2, zorder=3)
            top = max(top, float(np.nanmax(base, initial=0.0)))
    if baseline is not None:
        ax.scatter([], [], marker="_", s=160, color="black", linewidths=2, label="unmasked (baseline)")
    for k, column in enumerate(groups):
        ax.bar([np.nan], [np.nan], color="white", edgecolor="#333333", hatch=hatches[k % len(hatches)],
               label=str(column) or "masked")
    if threshold is not None:
        value = float(pd.to_numeric(table[threshold], errors="coerce").max())
        if np.isfinite(value):
            ax.axhline(value, color="black", linestyle="--", linewidth=1, label=f"null threshold {value:.4f}")
            top = max(top, value)
    upper = max(top * 1.25, 0.01)
    ax.set_ylim(-0.04 * upper, upper)  # below 0, so a bar of height 0 shows as its outline above the frame
    ax.axhline(0.0, color="#999999", linewidth=0.6, zorder=0)
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("mean Jaccard, best configuration")
    ax.set_xlabel("factor whose units were masked")
    ax.legend(frameon=False, fontsize=7)
    return fig


def contrast_figure(table: pd.DataFrame, players: Sequence[str]) -> Figure | None:
    """Share of units with a significant treatment–control effect, per layer and factor (after FDR).

    Whiskers: 95 % Wilson intervals of the share over the layer's units.
    """
    factor, layer = _column(table, "factor"), _column(table, "layer")
    significant = _column(table, "significant", "rejected", "reject")
    q_value = _column(table, "q_value", "p_adjusted", "p_fdr", "qvalue")
    if factor is None or (significant is None and q_value is None):
        return None
    flags = table[significant].astype(bool) if significant else pd.to_numeric(table[q_value], errors="coerce") < 0.05
    frame = pd.DataFrame({"factor": table[factor].astype(str), "layer": table[layer].astype(str) if layer else "all",
                          "significant": flags})
    grouped = frame.groupby(["layer", "factor"], sort=False)["significant"]
    shares = grouped.mean().unstack("factor")
    names = [p for p in players if p in shares.columns] + [f for f in shares.columns if f not in players]
    shares = shares[names]
    hits = grouped.sum().unstack("factor").reindex(index=shares.index, columns=names)
    units = grouped.count().unstack("factor").reindex(index=shares.index, columns=names)
    colours = factor_colours(list(players) + [f for f in names if f not in players])
    fig = Figure(figsize=(max(4.5, 0.25 * len(names) * len(shares) + 2.5), 3.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(names))
    for k, name in enumerate(names):
        x = np.arange(len(shares)) + (k - (len(names) - 1) / 2) * width
        y = shares[name].to_numpy(dtype=float)
        low, high = wilson(hits[name].to_numpy(dtype=float), units[name].to_numpy(dtype=float))
        ax.bar(x, y, width, color=colours[name], label=name)
        ax.errorbar(x, y, yerr=np.clip(np.vstack([y - low, high - y]), 0, None), fmt="none", ecolor="black",
                    elinewidth=0.8, capsize=1.5)
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
