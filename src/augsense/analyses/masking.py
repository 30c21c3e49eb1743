"""Guided masking: damage / attenuate / amplify the units most sensitive to one factor, with baselines.

Paper series 2 of Kharyuk, Matveev & Oseledets (2025, arXiv 2503.03283). For each factor's map
(first order, total order or Shapley) and each chosen layer, the grid of quantile masks
q × α plus the soft masks out·M and out·(1 − M) are applied in all layers at once; the baselines the
paper lacked mask the same number of units at random (several draws) or the least sensitive ones.
Each configuration is evaluated on clean images and on each single augmentation at several seeded
parameter draws: top-1 / top-5 accuracy, the rate at which the top-1 prediction changes against the
unmasked model on the same input, and top-1 per class.

Work is shared: an augmented batch is built once and its unmasked reference is computed once; the K
mask configurations then run in one forward pass per chunk (see ``augsense.probe.masks``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.cluster.hierarchy
import scipy.spatial.distance
import scipy.stats
import torch
from torch import nn

from augsense.errors import AugsenseError
from augsense.factors import Factor, FactorSpace
from augsense.io.images import ImageSet
from augsense.io.provenance import Source, commit_tables
from augsense.io.results import RunFolder, load_run
from augsense.probe.hooks import OUTPUT
from augsense.progress import Progress
from augsense.probe.masks import (MaskedForward, channels_last_copy, check_alpha, check_quantile, heap_allocations,
                                  layout_options,
                                  least_units, quantile_units, random_units, selection_multiplier, soft_multiplier)

QUANTITIES = ("first_order", "total_order", "shapley")
PAPER_QUANTILES = (0.5, 0.6, 0.7, 0.8, 0.9)
PAPER_ALPHAS = (0.0, 0.5, 1.5)
#: Default images × configurations per masked forward pass. Measured on the demo's run folder (2 CPU cores,
#: EfficientNet-Lite0, 25 images, factors hue and grayscale, the default layers from _bn0 on): 32 / 64 / 128 / 256 /
#: 512 took 37–39 / 39–42 / 49–58 / 70–77 / 108–137 s at peak RSS 1.3–1.5 / 1.7–2.6 / 3.3–5.0 / 6.2–7.2 / 12–15 GB.
#: Masking only a deep layer (_blocks.15) is the other way round (64: 14.1 s, 256: 5.7 s, both 1.4 GB): the layers
#: before the first masked one run once per pass, so fewer configurations per pass repeat them more often.
MAX_BATCH = 64
CLEAN = "clean"
MASKING_COLUMNS = ["config", "factor", "quantity", "kind", "draw", "q", "alpha", "mask", "augmentation", "n_units",
                   "n_images", "top1", "top5", "changed"]


@dataclass(frozen=True)
class MaskSpec:
    """One mask configuration: whose map, which rule, which baseline."""

    factor: str
    quantity: str
    kind: Literal["guided", "random", "least"]
    draw: int
    q: float
    alpha: float
    mask: Literal["quantile", "soft", "soft-inverse"]
    n_units: int


@dataclass
class MaskingOptions:
    """What to mask and how to evaluate it.

    ``augmentations``: ``"own"`` (clean + the factor's own augmentation for each factor's masks,
    the default that fits the demo's 10-minute budget), ``"all"`` (every factor's masks on clean and
    on every single augmentation: the full cross-specificity matrix), ``"clean"``, or a list of
    factor names (evaluated for every mask factor). ``layers``: the layers to mask; default: the
    run's layers except the classifier output layer (see :func:`output_layer`).
    """

    factors: list[str] | None = None
    quantity: str = "total_order"
    layers: list[str] | None = None
    quantiles: Sequence[float] = PAPER_QUANTILES
    alphas: Sequence[float] = PAPER_ALPHAS
    soft: bool = True
    n_random: int = 2
    least: bool = True
    augmentations: str | list[str] = "own"
    n_draws: int = 1
    seed: int = 0
    batch_size: int = 32
    max_batch: int = MAX_BATCH
    device: str = "auto"
    limit_images: int | None = None
    top_k: int = 5
    confidence: float = 0.95


@dataclass
class MaskingResult:
    """Tables of a masking evaluation (column names documented in docs/masking.md)."""

    table: pd.DataFrame
    classes: pd.DataFrame
    spearman: pd.DataFrame
    gap: pd.DataFrame
    timings: dict[str, float] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    """The masked layers."""
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)
    pair_rho: pd.DataFrame = field(default_factory=pd.DataFrame)
    linkage: pd.DataFrame = field(default_factory=pd.DataFrame)


def check_options(options: MaskingOptions) -> None:
    """Raise an AugsenseError for an option out of range."""
    if options.quantity not in QUANTITIES:
        raise AugsenseError(f"unknown quantity {options.quantity!r}; use one of {', '.join(QUANTITIES)}")
    if not options.quantiles and not options.soft:
        raise AugsenseError("no mask configurations: give at least one quantile or keep the soft masks")
    for q in options.quantiles:
        check_quantile(q)
    if options.quantiles and not options.alphas:
        raise AugsenseError("quantile masks need at least one α (e.g. 0,0.5,1.5)")
    for alpha in options.alphas:
        check_alpha(alpha)
    for name in ("n_random", "n_draws", "batch_size", "max_batch", "top_k"):
        value = getattr(options, name)
        low = 0 if name == "n_random" else 1
        if not isinstance(value, int) or value < low:
            raise AugsenseError(f"{name.replace('_', '-')} must be an integer ≥ {low}, got {value!r}")
    if not 0.0 < options.confidence < 1.0:
        raise AugsenseError(f"confidence must lie in (0, 1), got {options.confidence}")


def mask_layers(folder: RunFolder, layers: Sequence[str] | None, quantity: str,
                exclude: Sequence[str] = ()) -> list[str]:
    """The layers to mask: the run's (or the chosen) layers that have the quantity's map."""
    if folder.missing and any(name.startswith("maps.npz") for name in folder.missing):
        raise AugsenseError(f"run folder {str(folder.path)!r} has no sensitivity maps (maps.npz missing); "
                            "rerun `augsense run` with --out pointing there")
    available = [name for name in folder.layer_names if name != OUTPUT and name not in exclude]
    chosen = list(layers) if layers else available
    for name in chosen:
        if name == OUTPUT:
            raise AugsenseError("the model output cannot be masked; choose hooked layers")
        if name not in folder.layer_names:
            raise AugsenseError(f"layer {name!r} is not in the run; its layers are {', '.join(folder.layer_names)}")
        folder.map(name, quantity)  # raises a clear error when the map is missing
    if not chosen:
        raise AugsenseError(f"run {str(folder.path)!r} has no layer that can be masked (layers: "
                            f"{', '.join(folder.layer_names)})")
    return chosen


def output_layer(folder: RunFolder, n_classes: int) -> str | None:
    """The run's classifier output layer, left out of the default masked layers; None if it has none.

    That is the run's last hooked layer (``output`` aside) when it has one unit per class, e.g. ``_fc`` or
    ``fc``. Scaling logits by α is not steering the network: damaging the top half of 1000 logits sends
    top-1 to 0 for any choice of units, so guided and random masks cannot differ. Name the layer in
    ``layers`` (``--mask-layers``) to mask it anyway.
    """
    names = [name for name in folder.layer_names if name != OUTPUT]
    if not names:
        return None
    shape = tuple(folder.info.get("layers", {}).get(names[-1], {}).get("unit_shape", ()))
    return names[-1] if shape == (n_classes,) else None


def check_factors(folder: RunFolder, factors: Sequence[str] | None) -> list[str]:
    """The mask factors, each one of the run's players."""
    players = folder.players
    chosen = list(factors) if factors else [p for p in players if p not in ("order", "image")]
    for name in chosen:
        if name not in players:
            raise AugsenseError(f"factor {name!r} is not in the run; its factors are {', '.join(players)}")
    return chosen


DEAD_VARIANCE = 1e-9
"""Units whose variance is below this fraction of the layer's largest count as dead (rounding noise)."""


def factor_map(folder: RunFolder, layer: str, quantity: str, j: int) -> np.ndarray:
    """One factor's map of one layer, (*unit_shape,), with dead units set to NaN.

    Dead units are those the run flagged, plus those whose variance is below ``DEAD_VARIANCE`` of
    the layer's largest: their indices are ratios of rounding noise and must not be ranked.
    """
    values = np.array(folder.map(layer, quantity)[..., j], dtype=np.float64)
    dead = folder.maps.get(f"{layer}/dead")
    if dead is not None and dead.shape == values.shape:
        values[dead.astype(bool)] = np.nan
    variance = folder.maps.get(f"{layer}/variance")
    if variance is not None and variance.shape == values.shape and np.isfinite(variance).any():
        values[~(variance > DEAD_VARIANCE * np.nanmax(variance))] = np.nan
    return values


def build_masks(folder: RunFolder, factors: Sequence[str], layers: Sequence[str],
                options: MaskingOptions) -> tuple[list[MaskSpec], dict[str, np.ndarray]]:
    """The grid of mask configurations and their multipliers.

    Returns:
        specs: K configurations (guided quantile + soft, then random draws, then least, per factor).
        multipliers: {layer: (K, *unit_shape) float32}.
    """
    players = folder.players
    rng = np.random.default_rng([options.seed, 6])
    specs: list[MaskSpec] = []
    columns: dict[str, list[np.ndarray]] = {layer: [] for layer in layers}

    def add(spec: MaskSpec, per_layer: dict[str, np.ndarray]) -> None:
        specs.append(dataclasses.replace(spec, n_units=int(sum(int((m != 1.0).sum()) for m in per_layer.values()))))
        for layer in layers:
            columns[layer].append(per_layer[layer])

    for factor in factors:
        j = players.index(factor)
        maps = {layer: factor_map(folder, layer, options.quantity, j) for layer in layers}
        for layer in layers:
            if not np.isfinite(maps[layer]).any():  # every unit dead: the soft mask would zero the whole layer
                raise AugsenseError(
                    f"the {options.quantity} map of factor {factor!r} in layer {layer!r} has no finite value (every "
                    "unit is dead or constant over the run's images): no unit can be ranked; leave the layer out "
                    "with --mask-layers or the factor out with --factors")
        guided: list[tuple[float, dict[str, np.ndarray]]] = []
        for q in options.quantiles:
            selected = {layer: quantile_units(maps[layer], q) for layer in layers}
            guided.append((float(q), selected))
            for alpha in options.alphas:
                add(MaskSpec(factor, options.quantity, "guided", 0, float(q), float(alpha), "quantile", 0),
                    {layer: selection_multiplier(selected[layer], alpha) for layer in layers})
        if options.soft:
            for mask, inverse in (("soft", False), ("soft-inverse", True)):
                per_layer = {layer: soft_multiplier(maps[layer], inverse) for layer in layers}
                spec = MaskSpec(factor, options.quantity, "guided", 0, math.nan, math.nan, mask, 0)  # type: ignore[arg-type]
                specs.append(dataclasses.replace(spec, n_units=int(sum(int((m != 1).sum()) for m in per_layer.values()))))
                for layer in layers:
                    columns[layer].append(per_layer[layer])
        for draw in range(options.n_random):
            for q, selected in guided:
                drawn = {layer: random_units(maps[layer], int(selected[layer].sum()), rng) for layer in layers}
                for alpha in options.alphas:
                    add(MaskSpec(factor, options.quantity, "random", draw, q, float(alpha), "quantile", 0),
                        {layer: selection_multiplier(drawn[layer], alpha) for layer in layers})
        if options.least:
            for q, selected in guided:
                least = {layer: least_units(maps[layer], int(selected[layer].sum())) for layer in layers}
                for alpha in options.alphas:
                    add(MaskSpec(factor, options.quantity, "least", 0, q, float(alpha), "quantile", 0),
                        {layer: selection_multiplier(least[layer], alpha) for layer in layers})
    multipliers = {layer: np.stack(columns[layer]).astype(np.float32) for layer in layers}
    return specs, multipliers


def single_augmentation_draws(factor: Factor, n_images: int, n_draws: int, seed: int, tag: int) -> list[torch.Tensor]:
    """Seeded unit-cube parameters of one factor alone, switch forced on: n_draws × (n_images, n_coords)."""
    draws = []
    for draw in range(n_draws):
        u = np.random.default_rng([seed, tag, draw]).random((n_images, factor.n_coords))
        if factor.switch:
            u[:, len(factor.parameters)] = 0.0  # always apply the augmentation
        draws.append(torch.from_numpy(u).float())
    return draws


@dataclass
class Tally:
    """Counts over (augmentation a, configuration k); configuration −1 of ``reference`` is the unmasked model."""

    n: np.ndarray
    top1: np.ndarray
    top5: np.ndarray
    changed: np.ndarray
    jaccard: np.ndarray
    class_n: np.ndarray
    class_top1: np.ndarray
    reference_n: np.ndarray
    reference_top1: np.ndarray
    reference_top5: np.ndarray
    reference_class_top1: np.ndarray
    reference_class_n: np.ndarray
    class_predicted: np.ndarray | None = None
    """(A, K, n_labels) top-1 predictions per class, over all images (labelled or not)."""
    reference_class_predicted: np.ndarray | None = None
    """(A, n_labels) the unmasked model's top-1 predictions per class."""


def evaluate_masks(module: nn.Module, normalise: Callable[[torch.Tensor], torch.Tensor], images: ImageSet,
                   multipliers: dict[str, np.ndarray], plan: np.ndarray, augmentations: Sequence[Factor | None], *,
                   n_draws: int = 1, seed: int = 0, batch_size: int = 32, max_batch: int = MAX_BATCH,
                   device: torch.device | str = "cpu", top_k: int = 5, candidates: np.ndarray | None = None,
                   transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   n_labels: int | None = None, progress: bool = False, channels_last: bool | None = None,
                   count_predictions: bool = False, layouts: Mapping[str, str] | None = None,
                   reduction: str = "mean", rows: torch.Tensor | None = None) -> Tally:
    """Run every planned (augmentation, configuration) pair over the images.

    Args:
        module: the classifier (eval mode, on ``device``).
        normalise: maps [0, 1] images to the model's input.
        images: (n, 3, S, S) images; labels (n,) give accuracies (NaN without labels).
        multipliers: {layer: (K, *unit_shape)} mask multipliers.
        plan: (A, K) bool, which configurations to run on which augmentation.
        augmentations: A entries, None for clean input or the factor applied alone.
        candidates: (K, k) class sets; the mean Jaccard of each configuration's top-k with them.
        transform: optional preprocessing after augmentation (the paper's min–max stretch).
        progress: show a progress bar (image × configuration forwards) with ETA on stderr.
        channels_last: run a channels-last copy of a convolutional model (default: on the CPU, where it is
            about 1.5× faster); results agree up to float32 rounding.
        count_predictions: also count top-1 predictions per model output (``Tally.class_predicted``).
        layouts, reduction: the run's declared layouts and reduction (:func:`~augsense.probe.masks.layout_options`),
            so masks on NHWC and token layers act along the right axis.
        rows: (n',) int64, evaluate only these images of ``images`` (e.g. the labelled ones), in this order,
            gathered batch by batch (a memory-mapped set is not copied); default every image.
    Returns:
        A :class:`Tally` of sample counts, correct top-1 / top-5, changes and Jaccard sums.
    """
    if channels_last is None:
        channels_last = torch.device(device).type == "cpu"
    fast = channels_last_copy(module) if channels_last else None
    layout = torch.channels_last if fast is not None else torch.contiguous_format
    module = fast if fast is not None else module
    n_aug, n_configs = plan.shape
    labels = images.labels
    evaluated = labels[rows] if labels is not None and rows is not None else labels
    n_labels = n_labels or (int(evaluated.max()) + 1 if evaluated is not None and len(evaluated) else 1)
    shape = (n_aug, n_configs)
    tally = Tally(*(np.zeros(shape) for _ in range(5)), np.zeros(shape + (n_labels,)), np.zeros(shape + (n_labels,)),
                  *(np.zeros(n_aug) for _ in range(3)), np.zeros((n_aug, n_labels)), np.zeros((n_aug, n_labels)))
    bank = {layer: torch.from_numpy(m).to(device) for layer, m in multipliers.items()}
    cand = torch.from_numpy(candidates).to(device) if candidates is not None else None
    n_images = len(rows) if rows is not None else len(images)
    total = int((plan[0].sum() + plan[1:].sum() * n_draws) * n_images) if n_aug else 0
    bar = Progress(total=total, unit="img", description="masking", enabled=progress)
    with torch.inference_mode(), heap_allocations(), MaskedForward(module, bank, layouts=layouts,
                                                                       reduction=reduction) as masked:
        for a, factor in enumerate(augmentations):
            configs = np.flatnonzero(plan[a])
            draws = [None] if factor is None else single_augmentation_draws(factor, n_images, n_draws, seed, a)
            for u in draws:
                for start in range(0, n_images, batch_size):
                    position = torch.arange(start, min(start + batch_size, n_images))  # among the evaluated images
                    index = rows[position] if rows is not None else position             # in ``images``
                    x = images.batch(index, device)
                    if factor is not None and u is not None:
                        x = factor.apply_unit(x, u[position].to(device))
                    if transform is not None:
                        x = transform(x)
                    x = normalise(x).contiguous(memory_format=layout)
                    y = labels[index].to(device) if labels is not None else None
                    known = (y >= 0) if y is not None else None
                    with masked.unhooked():
                        reference = module(x).float()
                    k = min(top_k, reference.shape[-1])
                    ref_top = reference.topk(k, dim=-1).indices
                    _count_reference(tally, a, ref_top, y, known)
                    if count_predictions and tally.reference_class_predicted is None:
                        tally.class_predicted = np.zeros(shape + (reference.shape[-1],))
                        tally.reference_class_predicted = np.zeros((n_aug, reference.shape[-1]))
                    if tally.reference_class_predicted is not None:
                        np.add.at(tally.reference_class_predicted[a], ref_top[:, 0].cpu().numpy(), 1)
                    chunk = max(1, max_batch // len(index))
                    for first in range(0, len(configs), chunk):
                        part = configs[first:first + chunk]
                        part_t = torch.from_numpy(part).to(device)
                        top = masked(x, part_t).float().topk(k, dim=-1).indices  # (K', n, k)
                        _count_masked(tally, a, part, top, ref_top[:, 0], y, known,
                                      cand[part_t] if cand is not None else None)
                        if tally.class_predicted is not None:
                            predicted = top[..., 0].cpu().numpy()  # (K', n)
                            np.add.at(tally.class_predicted[a], (np.repeat(part, predicted.shape[1]),
                                                                 predicted.ravel()), 1)
                        bar.update(len(part) * len(index))
    bar.close()
    return tally


def _jaccard(top: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """(…, n, k) predictions, (…, k') candidates → (…, n) Jaccard indices."""
    overlap = (top.unsqueeze(-1) == cand.unsqueeze(-2).unsqueeze(-2)).any(-1).sum(-1).double()
    return overlap / (top.shape[-1] + cand.shape[-1] - overlap)


def _count_reference(tally: Tally, a: int, top: torch.Tensor, y: torch.Tensor | None, known: torch.Tensor | None,
                     ) -> None:
    tally.reference_n[a] += top.shape[0]
    if y is None or known is None:
        return
    hit1 = (top[:, 0] == y) & known
    tally.reference_top1[a] += float(hit1.sum())
    tally.reference_top5[a] += float(((top == y[:, None]).any(1) & known).sum())
    labels = y[known].cpu().numpy()
    np.add.at(tally.reference_class_n[a], labels, 1)
    np.add.at(tally.reference_class_top1[a], labels, hit1[known].cpu().numpy())


def _count_masked(tally: Tally, a: int, part: np.ndarray, top: torch.Tensor, reference: torch.Tensor,
                  y: torch.Tensor | None, known: torch.Tensor | None, cand: torch.Tensor | None) -> None:
    tally.n[a, part] += top.shape[1]
    tally.changed[a, part] += (top[..., 0] != reference).sum(1).cpu().numpy()
    if cand is not None:
        tally.jaccard[a, part] += _jaccard(top, cand).sum(1).cpu().numpy()
    if y is None or known is None:
        return
    hit1 = (top[..., 0] == y) & known
    tally.top1[a, part] += hit1.sum(1).cpu().numpy()
    tally.top5[a, part] += ((top == y[None, :, None]).any(-1) & known).sum(1).cpu().numpy()
    labels = y[known].cpu().numpy()
    hits = hit1[:, known].cpu().numpy()
    for row, k in enumerate(part):
        np.add.at(tally.class_n[a, k], labels, 1)
        np.add.at(tally.class_top1[a, k], labels, hits[row])


def augmentation_plan(specs: Sequence[MaskSpec], factors: Sequence[str], which: str | Sequence[str]
                      ) -> tuple[list[str], np.ndarray]:
    """Augmentation names (``"clean"`` first) and the (A, K) plan of configurations to run on each."""
    if which == "clean":
        names = [CLEAN]
    elif which in ("own", "all"):
        names = [CLEAN] + list(dict.fromkeys(factors))
    else:
        names = [CLEAN] + [name for name in dict.fromkeys(which) if name != CLEAN]
    plan = np.zeros((len(names), len(specs)), dtype=bool)
    plan[0] = True
    for k, spec in enumerate(specs):
        for a, name in enumerate(names[1:], start=1):
            plan[a, k] = which != "own" or spec.factor == name
    return names, plan


def masking_tables(specs: Sequence[MaskSpec], names: Sequence[str], plan: np.ndarray, tally: Tally,
                   class_names: Sequence[str] | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy tables: one row per (configuration, augmentation) plus the unmasked reference (kind ``none``);
    and top-1 per class (long format)."""
    labelled = bool(tally.reference_class_n.sum() > 0)
    rows, class_rows = [], []

    def rate(count: float, total: float) -> float:
        return count / total if total > 0 and labelled else math.nan

    for a, name in enumerate(names):
        total = float(tally.reference_class_n[a].sum())
        rows.append({"config": -1, "factor": None, "quantity": None, "kind": "none", "draw": 0, "q": math.nan,
                     "alpha": math.nan, "mask": "none", "augmentation": name, "n_units": 0,
                     "n_images": int(tally.reference_n[a]), "top1": rate(tally.reference_top1[a], total),
                     "top5": rate(tally.reference_top5[a], total), "changed": 0.0})
        for label in np.flatnonzero(tally.reference_class_n[a]):
            class_rows.append({"config": -1, "augmentation": name, "label": int(label),
                               "n": int(tally.reference_class_n[a, label]),
                               "top1": tally.reference_class_top1[a, label] / tally.reference_class_n[a, label]})
        for k in np.flatnonzero(plan[a]):
            spec = specs[k]
            labelled_n = float(tally.class_n[a, k].sum())
            rows.append({"config": int(k), **{f: getattr(spec, f) for f in ("factor", "quantity", "kind", "draw", "q",
                                                                             "alpha", "mask")},
                         "augmentation": name, "n_units": spec.n_units, "n_images": int(tally.n[a, k]),
                         "top1": rate(tally.top1[a, k], labelled_n), "top5": rate(tally.top5[a, k], labelled_n),
                         "changed": tally.changed[a, k] / tally.n[a, k] if tally.n[a, k] else math.nan})
            for label in np.flatnonzero(tally.class_n[a, k]):
                class_rows.append({"config": int(k), "augmentation": name, "label": int(label),
                                   "n": int(tally.class_n[a, k, label]),
                                   "top1": tally.class_top1[a, k, label] / tally.class_n[a, k, label]})
    table = pd.DataFrame(rows, columns=MASKING_COLUMNS)
    classes = pd.DataFrame(class_rows, columns=["config", "augmentation", "label", "n", "top1"])
    if class_names is not None:
        classes["class_name"] = [class_names[i] if i < len(class_names) else str(i) for i in classes["label"]]
    return table, classes


def specificity(table: pd.DataFrame, confidence: float = 0.95, metric: str = "top1") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Specificity summaries of a masking table.

    1. Spearman ρ between the accuracy profiles (over the guided configurations of one factor) on
       each pair of inputs (clean and augmentations), the distance √(1 − |ρ|) and the leaf order of
       average-linkage hierarchical clustering on it (the paper's summary).
    2. The gap guided − random for every quantile configuration and input, with a normal CI:
       se² = p(1 − p)/n (guided, binomial) + s²/R (spread of the R random draws); conservative, as
       it ignores that all masks see the same images. ``least`` is the least-sensitive baseline.

    Args:
        table: ``masking.parquet`` rows.
        metric: ``top1`` (needs labels), ``top5`` or ``changed``.
    Returns:
        (spearman, gap) DataFrames.
    """
    masked = table[table["kind"] != "none"]
    spearman_rows = []
    for (factor, quantity), group in masked[masked["kind"] == "guided"].groupby(["factor", "quantity"], sort=False):
        profiles = group.pivot_table(index="config", columns="augmentation", values=metric, aggfunc="first", dropna=False)
        names = [CLEAN] + [c for c in profiles.columns if c != CLEAN] if CLEAN in profiles.columns else list(profiles)
        profiles = profiles[names]
        m = len(names)
        rho = np.full((m, m), np.nan)
        for i in range(m):
            for j in range(m):
                x, y = profiles.iloc[:, i].to_numpy(float), profiles.iloc[:, j].to_numpy(float)
                ok = np.isfinite(x) & np.isfinite(y)
                if ok.sum() >= 3 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
                    rho[i, j] = scipy.stats.spearmanr(x[ok], y[ok]).statistic
        distance = np.sqrt(np.clip(1.0 - np.abs(rho), 0.0, None))
        order = list(range(m))
        if m >= 3 and np.isfinite(distance).all():
            condensed = scipy.spatial.distance.squareform(distance, checks=False)
            order = list(scipy.cluster.hierarchy.leaves_list(scipy.cluster.hierarchy.linkage(condensed, "average")))
        leaf = {names[i]: position for position, i in enumerate(order)}
        for i in range(m):
            for j in range(m):
                spearman_rows.append({"factor": factor, "quantity": quantity, "augmentation": names[i],
                                      "augmentation2": names[j], "rho": rho[i, j], "distance": distance[i, j],
                                      "leaf_order": leaf[names[i]]})
    spearman = pd.DataFrame(spearman_rows, columns=["factor", "quantity", "augmentation", "augmentation2", "rho",
                                                    "distance", "leaf_order"])
    z = float(scipy.stats.norm.ppf(0.5 + confidence / 2))
    gap_rows = []
    quantile = masked[masked["mask"] == "quantile"]
    keys = ["factor", "quantity", "q", "alpha", "augmentation"]
    for key, group in quantile.groupby(keys, sort=False):
        guided = group[group["kind"] == "guided"]
        random = group[group["kind"] == "random"][metric].to_numpy(float)
        least = group[group["kind"] == "least"][metric].to_numpy(float)
        if guided.empty:
            continue
        p, n = float(guided[metric].iloc[0]), float(guided["n_images"].iloc[0])
        mean = float(random.mean()) if random.size else math.nan
        sd = float(random.std(ddof=1)) if random.size >= 2 else math.nan
        se = math.sqrt(max(p * (1 - p), 0.0) / n + (sd ** 2 / random.size if random.size >= 2 else 0.0)) \
            if n > 0 and math.isfinite(p) else math.nan
        gap = p - mean
        gap_rows.append({**dict(zip(keys, key)), "n_units": int(guided["n_units"].iloc[0]), "guided": p,
                         "random_mean": mean, "random_sd": sd, "n_random": int(random.size),
                         "least": float(least[0]) if least.size else math.nan, "gap": gap,
                         "ci_low": gap - z * se, "ci_high": gap + z * se, "metric": metric})
    gap = pd.DataFrame(gap_rows, columns=keys + ["n_units", "guided", "random_mean", "random_sd", "n_random", "least",
                                                 "gap", "ci_low", "ci_high", "metric"])
    return spearman, gap


PAIR_COLUMNS = ["leaf", "augmentation", "factor", "quantity", "leaf_order", "n_configs"]
LINKAGE_COLUMNS = ["step", "left", "right", "distance", "size"]


def pair_profiles(table: pd.DataFrame, metric: str = "top1") -> tuple[pd.DataFrame, np.ndarray]:
    """The paper's masking profiles: one per (input augmentation, mask factor) pair.

    A profile is the metric over the pair's guided configurations (the q × α grid and the soft
    masks, in a fixed order), as the reference code's ``featured_measurements[aug, mask, feature]``.

    Returns:
        pairs: one row per pair (``augmentation``, ``factor``, ``quantity``, ``n_configs``);
        profiles: (n_pairs, n_configs) float array; NaN where a pair lacks a configuration.
    """
    guided = table[(table["kind"] == "guided")]
    if guided.empty:
        raise AugsenseError("the masking table has no guided configurations to profile")
    keys = ["q", "alpha", "mask"]
    configs = guided[keys].drop_duplicates().sort_values(["mask", "alpha", "q"], na_position="last", kind="stable")
    configs = configs.reset_index(drop=True).reset_index().rename(columns={"index": "feature"})
    merged = guided.merge(configs, on=keys, how="left")
    pairs = merged[["augmentation", "factor", "quantity"]].drop_duplicates().reset_index(drop=True)
    profiles = np.full((len(pairs), len(configs)), np.nan)
    index = {tuple(row): i for i, row in enumerate(pairs.itertuples(index=False))}
    for row in merged.itertuples(index=False):
        profiles[index[(row.augmentation, row.factor, row.quantity)], row.feature] = getattr(row, metric)
    pairs["n_configs"] = np.isfinite(profiles).sum(axis=1)
    return pairs, profiles


def cluster_pairs(table: pd.DataFrame, metric: str = "top1") -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Spearman ρ between the profiles of all (augmentation, mask factor) pairs, clustered together.

    Distance √(1 − |ρ|) and average linkage (``scipy.cluster.hierarchy.linkage``), as the paper's
    dendrogram; an undefined ρ (a constant profile, fewer than 3 shared configurations) counts as
    0, i.e. distance 1 (the reference code's ``custom_spearmanr`` does the same).

    Returns:
        pairs: ``leaf`` (row of the linkage's leaves), ``augmentation``, ``factor``, ``quantity``,
            ``leaf_order`` (position in the dendrogram), ``n_configs``;
        rho: long table ``leaf``, ``leaf2``, ``rho``, ``distance`` over all pairs of leaves;
        linkage: scipy's linkage matrix as rows ``step``, ``left``, ``right``, ``distance``, ``size``
            (indices < n_leaves are leaves, larger ones earlier merges); empty for fewer than 2 pairs.
    """
    pairs, profiles = pair_profiles(table, metric)
    m = len(pairs)
    rho = np.full((m, m), np.nan)
    for i in range(m):
        for j in range(i, m):
            x, y = profiles[i], profiles[j]
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.sum() >= 3 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
                rho[i, j] = rho[j, i] = scipy.stats.spearmanr(x[ok], y[ok]).statistic
    distance = np.sqrt(np.clip(1.0 - np.abs(np.nan_to_num(rho, nan=0.0)), 0.0, None))
    np.fill_diagonal(distance, 0.0)
    linkage = np.zeros((0, 4))
    order = list(range(m))
    if m >= 2:
        linkage = scipy.cluster.hierarchy.linkage(scipy.spatial.distance.squareform(distance, checks=False), "average")
        order = list(scipy.cluster.hierarchy.leaves_list(linkage))
    pairs.insert(0, "leaf", np.arange(m))
    pairs["leaf_order"] = np.argsort(order)
    pairs = pairs[PAIR_COLUMNS]
    leaf, leaf2 = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
    long = pd.DataFrame({"leaf": leaf.ravel(), "leaf2": leaf2.ravel(), "rho": rho.ravel(),
                         "distance": distance.ravel()})
    link = pd.DataFrame({"step": np.arange(len(linkage)), "left": linkage[:, 0].astype(int),
                         "right": linkage[:, 1].astype(int), "distance": linkage[:, 2],
                         "size": linkage[:, 3].astype(int)}, columns=LINKAGE_COLUMNS)
    return pairs, long, link


def load_inputs(folder: RunFolder, model: Any = None, images: Any = None, device: str = "auto",
                limit_images: int | None = None) -> tuple[Any, ImageSet, FactorSpace, torch.device, Callable | None]:
    """The run's model (or ``model``), images (or ``images``), factor space, device and preprocessing."""
    from augsense.analyses.sensitivity import minmax_stretch, pick_device
    from augsense.config import SensitivityConfig
    from augsense.io.images import images_for
    from augsense.io.models import ModelBundle, load_model

    config = SensitivityConfig.from_dict(dict(folder.info.get("config", {})))
    bundle = model if isinstance(model, ModelBundle) else load_model(model if model is not None else config.model,
                                                                     weights=config.weights, seed=config.seed,
                                                                     categories=config.categories)
    chosen = pick_device(device if device != "auto" else (config.device if config.device != "auto" else "auto"))
    bundle.module.to(chosen).eval()
    if isinstance(images, ImageSet):
        image_set = images if limit_images is None else ImageSet(images.pixels[:limit_images],
                                                                 None if images.labels is None else
                                                                 images.labels[:limit_images],
                                                                 images.sources[:limit_images])
    else:
        if limit_images is not None:
            config = dataclasses.replace(config, limit_images=limit_images)
        image_set = images_for(config, bundle, images)  # the run's subset (its seed, per_class, labels, cache)
    space = FactorSpace.from_dict(folder.info["factors"])
    transform = minmax_stretch if config.preprocessing == "paper" else None
    return bundle, image_set, space, chosen, transform


def run_masking(run_dir: str | Path | RunFolder, options: MaskingOptions | None = None, *, model: Any = None,
                images: Any = None, write: bool = True, progress: bool = False) -> MaskingResult:
    """Guided masking on a run folder's maps; writes ``masking*.parquet`` into the folder.

    Args:
        run_dir: a run folder (or a loaded :class:`RunFolder`).
        options: the grid and evaluation (defaults: the paper's grid, 2 random draws, least baseline,
            clean + each factor's own augmentation).
        model: ``nn.Module`` / ``ModelBundle`` / name overriding the run's model.
        images: labelled images (ImageSet, folder, Dataset) overriding the run's images.
        write: write ``masking.parquet``, ``masking_classes.parquet``, ``masking_spearman.parquet`` and
            ``masking_gap.parquet`` into the folder.
        progress: show a progress bar with ETA.
    """
    started = time.perf_counter()
    options = options or MaskingOptions()
    check_options(options)
    folder = run_dir if isinstance(run_dir, RunFolder) else load_run(run_dir)
    layers = mask_layers(folder, options.layers, options.quantity) if options.layers else []
    factors = check_factors(folder, options.factors)
    if not isinstance(options.augmentations, str) or options.augmentations not in ("own", "all", "clean"):
        wanted = options.augmentations if not isinstance(options.augmentations, str) else \
            [a for a in options.augmentations.split(",") if a]
        space_names = [f["name"] if isinstance(f, dict) else f for f in folder.info.get("factors", {}).get("factors", [])]
        for name in wanted:
            if name != CLEAN and name not in space_names:
                raise AugsenseError(f"augmentation {name!r} is not a factor of the run; use one of "
                                    f"{', '.join(space_names)} (or own / all / clean)")
        options = dataclasses.replace(options, augmentations=list(wanted))
    bundle, image_set, space, device, transform = load_inputs(folder, model, images, options.device,
                                                              options.limit_images)
    labelled = image_set.labelled_rows()  # gathered batch by batch: the pixels are not copied
    if not len(labelled):
        raise AugsenseError("masking measures accuracy, but these images have no labels; pass --images with a "
                            "folder of class sub-folders (or an ImageSet with labels)")
    rows = labelled if len(labelled) < len(image_set) else None
    if not layers:
        with torch.inference_mode():
            n_classes = int(bundle.module(bundle.normalise(image_set.batch(labelled[:1], device))).shape[-1])
        logits = output_layer(folder, n_classes)
        if logits is not None and [name for name in folder.layer_names if name not in (OUTPUT, logits)] == []:
            raise AugsenseError(f"the run's only layer {logits!r} is the classifier output, which is not masked by "
                                f"default; pass --mask-layers {logits} (layers=[{logits!r}]) to mask the logits anyway")
        layers = mask_layers(folder, None, options.quantity, exclude=(logits,) if logits else ())
    specs, multipliers = build_masks(folder, factors, layers, options)
    mask_factors = [f for f in factors if f in {x.name for x in space.factors}]
    names, plan = augmentation_plan(specs, mask_factors if options.augmentations != "all" else
                                    [x.name for x in space.factors], options.augmentations)
    by_name = {f.name: f for f in space.factors}
    setup = time.perf_counter() - started
    tally = evaluate_masks(bundle.module, bundle.normalise, image_set, multipliers, plan,
                           [None if name == CLEAN else by_name[name] for name in names], n_draws=options.n_draws,
                           seed=options.seed, batch_size=options.batch_size, max_batch=options.max_batch,
                           device=device, top_k=options.top_k, transform=transform,
                           n_labels=len(bundle.class_names) if bundle.class_names else None, progress=progress,
                           rows=rows, **layout_options(folder.info))
    table, classes = masking_tables(specs, names, plan, tally, bundle.class_names)
    spearman, gap = specificity(table, options.confidence)
    timings = {"setup_s": setup, "total_s": time.perf_counter() - started,
               "forwards": float((plan[0].sum() + plan[1:].sum() * options.n_draws) * len(labelled))}
    pairs, pair_rho, linkage = cluster_pairs(table)
    result = MaskingResult(table, classes, spearman, gap, timings, layers, pairs, pair_rho, linkage)
    if write:
        write_masking(result, Source.of(folder.path, folder.info))
    return result


#: Every table ``augsense mask`` writes (the pair clustering only when computed).
MASKING_TABLES = ("masking", "masking_classes", "masking_spearman", "masking_gap", "masking_pairs",
                  "masking_pair_rho", "masking_linkage")


def write_masking(result: MaskingResult, source: Source) -> None:
    """Commit the masking tables (and the pair clustering, when computed) into the run folder they were
    computed from, stamped with its result set; refused if the folder holds another set now
    (:func:`augsense.io.provenance.commit_tables`). Tables of an earlier masking run that this one does
    not write (the pair clustering) are removed, so none is shown beside the new ones."""
    frames = [("masking", result.table), ("masking_classes", result.classes), ("masking_spearman", result.spearman),
              ("masking_gap", result.gap)]
    if len(result.pairs):
        frames += [("masking_pairs", result.pairs), ("masking_pair_rho", result.pair_rho),
                   ("masking_linkage", result.linkage)]
    commit_tables(source, frames, replaces=MASKING_TABLES)
