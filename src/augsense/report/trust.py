"""What must be said before anyone trusts a run's numbers: one wording for the console and the report.

``input_warnings`` (small N, few images) is part of the run's own warnings (``run_warnings``, saved
in run.json); ``skipped_warning``, ``wide_interval_warning`` and ``top1_reason`` are checked from the
results, on the console after a run and in the report's banner, so older run folders get them too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

#: Below this many base rows, intervals are wide, can cover less often than stated (docs/estimators.md, "Coverage at
#: small N"), and two seeds can rank the factors differently.
SMALL_N = 128
#: Below this many images, the indices describe those images rather than an image distribution.
FEW_IMAGES = 20
#: An aggregated interval wider than this cannot tell a factor's index from its neighbours'.
WIDE_INTERVAL = 0.3


def input_warnings(n: int, n_images: int) -> list[str]:
    """Warnings on the size of the design (N base rows) and of the image set."""
    out = []
    if n < SMALL_N:
        out.append(f"small N: {n} base rows give wide intervals that may cover less often than their stated level, "
                   f"and another seed can rank the factors differently; use N ≥ {max(256, SMALL_N)} for conclusions")
    if n_images < FEW_IMAGES:
        out.append(f"few images: {n_images} image{'s' if n_images != 1 else ''}, so the indices describe these "
                   f"images rather than the images a network sees; use at least {FEW_IMAGES}, better hundreds")
    return out


def skipped_warning(skipped: Sequence[Any], shown: int = 3) -> str | None:
    """One line on the image files a run skipped ({path, reason} tables or (path, reason) pairs), or None."""
    if not skipped:
        return None
    items = []
    for entry in skipped[:shown]:
        path, reason = (entry.get("path"), entry.get("reason")) if isinstance(entry, dict) else tuple(entry)[:2]
        items.append(f"{path} ({reason})")
    more = f" and {len(skipped) - shown} more (all listed in run.json)" if len(skipped) > shown else ""
    return f"{len(skipped)} image file{'s were' if len(skipped) != 1 else ' was'} skipped: {'; '.join(items)}{more}"


def wide_interval_warning(rows: Iterable[tuple[str, str, str, float, float]], limit: float = WIDE_INTERVAL,
                          shown: int = 4) -> str | None:
    """One line naming the aggregated (layer, factor, quantity) intervals wider than ``limit``, or None.

    rows: (layer, factor, quantity, ci_low, ci_high) of the layer-aggregated indices.
    """
    wide = [(layer, factor, quantity, high - low) for layer, factor, quantity, low, high in rows
            if high - low == high - low and high - low > limit]
    if not wide:
        return None
    wide.sort(key=lambda row: -row[3])
    names = "; ".join(f"{factor} at {layer} ({quantity.replace('_', ' ')}, width {width:.2f})"
                      for layer, factor, quantity, width in wide[:shown])
    more = f" and {len(wide) - shown} more" if len(wide) > shown else ""
    return (f"very wide intervals: {len(wide)} layer-aggregated indices have an interval wider than {limit:g} — "
            f"{names}{more}; these cannot be ranked against each other: raise N")


def top1_reason(labelled: bool, notices: Sequence[str]) -> str:
    """Why a run has no clean top-1 accuracy: no labels at all, or folders that name no class."""
    folders = [n for n in notices if "class folder" in n]
    if folders:
        return "not measured: " + folders[0]
    if not labelled:
        return ("not measured: no image has a label (put the images in one sub-folder per class, named after the "
                "model's classes, or give a ground-truth file)")
    return "not measured"


#: How the warning on analysis tables of another result set begins (the console picks it out by this).
FOREIGN_TABLES = "analysis tables of another result set not shown"


def foreign_tables_warning(tables: Sequence[tuple[str, str | None]], run_set: str | None,
                           shown: int = 12) -> str | None:
    """One line on the analysis tables the report left out because they do not record this run's result set.

    tables: (file relative to the run folder, the result-set id it records or None); run_set: the run's id.
    """
    if not tables:
        return None
    from augsense.io.provenance import short

    items = [f"{name} ({'set ' + short(stamp) if stamp else 'no set recorded'})" for name, stamp in tables[:shown]]
    more = f" and {len(tables) - shown} more" if len(tables) > shown else ""
    return (f"{FOREIGN_TABLES}: {', '.join(items)}{more} — this run's results are set {short(run_set)}, so these were "
            "computed from other results (an earlier run, or copied in or edited); run the analysis again (augsense "
            "mask, single-class, maps or paper) to recompute them")
