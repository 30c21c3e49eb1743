"""Single-class sensitivity analysis: does damaging a factor's units bias the network to its classes?

Paper series 2 of Kharyuk, Matveev & Oseledets (2025, arXiv 2503.03283): for each factor take the
k output classes most sensitive to it (candidates), damage or amplify the units most sensitive to
that factor (guided quantile masks, ``augsense.analyses.masking``), and compare the mean Jaccard
index between the candidates and each image's top-k predictions with the Tukey fence of its null
(independent random k-subsets). The statistics come from ``augsense.estimators.jaccard``.

Candidates come from the classifier output's map: the run's ``output`` layer when it has one,
otherwise its last 1-D layer (e.g. the final linear layer's logits). That layer is *not* masked by
default, so a bias cannot come from scaling the candidates' own logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from augsense.analyses.masking import (CLEAN, MAX_BATCH, MaskingOptions, MaskSpec, augmentation_plan, build_masks,
                                       check_factors, check_options, evaluate_masks, factor_map, load_inputs,
                                       mask_layers)
from augsense.errors import AugsenseError
from augsense.estimators.jaccard import confirmed_biases, jaccard_null_threshold, top_k_sensitive_classes
from augsense.io.provenance import Source, commit_tables
from augsense.io.results import RunFolder, load_run
from augsense.probe.hooks import OUTPUT
from augsense.probe.masks import layout_options

SINGLE_CLASS_COLUMNS = ["factor", "quantity", "config", "q", "alpha", "mask", "augmentation", "k", "candidates",
                        "candidate_names", "n_images", "mean_jaccard", "unmasked_jaccard", "threshold", "ratio",
                        "confirmed", "null_method"]


@dataclass
class SingleClassOptions:
    """Candidates, targeted masks and evaluation of the single-class analysis.

    Default masks: the units ≥ the 0.9-quantile damaged (α = 0) and amplified (α = 1.5) in every
    masked layer; evaluated on clean images (``augmentations`` as in :class:`MaskingOptions`).
    """

    factors: list[str] | None = None
    quantity: str = "total_order"
    k: int = 5
    layers: list[str] | None = None
    candidates_layer: str | None = None
    quantiles: Sequence[float] = (0.9,)
    alphas: Sequence[float] = (0.0, 1.5)
    soft: bool = False
    augmentations: str | list[str] = "clean"
    n_draws: int = 1
    seed: int = 0
    batch_size: int = 32
    max_batch: int = MAX_BATCH
    device: str = "auto"
    limit_images: int | None = None
    null_method: str = "auto"


def candidates_layer(folder: RunFolder, name: str | None) -> str:
    """The layer whose map ranks the output classes: ``name``, else ``output``, else the last 1-D layer."""
    shapes = {layer: tuple(spec.get("unit_shape", ())) for layer, spec in folder.info.get("layers", {}).items()}
    if name is not None:
        if name not in shapes:
            raise AugsenseError(f"candidates layer {name!r} is not in the run; its layers are {', '.join(shapes)}")
        chosen = name
    elif OUTPUT in shapes:
        chosen = OUTPUT
    else:
        flat = [layer for layer, shape in shapes.items() if len(shape) == 1]
        if not flat:
            raise AugsenseError("the single-class analysis needs the classifier output's map; rerun with the "
                                "`output` layer (or a final linear layer) among --layers")
        chosen = flat[-1]
    if len(shapes[chosen]) != 1:
        raise AugsenseError(f"candidates layer {chosen!r} has unit shape {shapes[chosen]}; it must be the class "
                            "outputs (one unit per class)")
    return chosen


@dataclass
class Candidates:
    """Each factor's candidate classes: the k outputs of ``layer`` most sensitive to it.

    ``maps`` (n_classes, len(factors)): the factors' maps of the candidates layer; ``chosen``: factor →
    its k class indices, most sensitive first; ``mask_layers``: the layers to mask (not ``layer``).
    """

    layer: str
    mask_layers: list[str]
    factors: list[str]
    maps: np.ndarray
    chosen: dict[str, np.ndarray]


def candidate_classes(folder: RunFolder, *, factors: list[str] | None, quantity: str, k: int,
                      layer: str | None, layers: list[str] | None) -> Candidates:
    """The candidates layer (:func:`candidates_layer`), the masked layers, the checked factors and each
    factor's k most sensitive classes; an AugsenseError when k exceeds the classes."""
    class_layer = candidates_layer(folder, layer)
    masked = mask_layers(folder, layers, quantity, exclude=(class_layer,))
    checked = check_factors(folder, factors)
    players = folder.players
    maps = np.stack([factor_map(folder, class_layer, quantity, players.index(f)) for f in checked], 1)
    if k > maps.shape[0]:
        raise AugsenseError(f"k={k} exceeds the {maps.shape[0]} classes of layer {class_layer!r}")
    return Candidates(class_layer, masked, checked, maps, dict(zip(checked, top_k_sensitive_classes(maps, k))))


def run_single_class(run_dir: str | Path | RunFolder, options: SingleClassOptions | None = None, *,
                     model: Any = None, images: Any = None, write: bool = True, progress: bool = False
                     ) -> pd.DataFrame:
    """Single-class analysis on a run folder; writes ``single_class.parquet`` there.

    Args:
        run_dir: a run folder with maps for the candidates layer and the masked layers.
        options: see :class:`SingleClassOptions`.
        model, images: override the run's model and images (labels are not needed).
    Returns:
        One row per (factor, mask configuration, input) with the columns ``SINGLE_CLASS_COLUMNS``
        (documented in docs/masking.md), sorted by decreasing mean Jaccard.
    """
    options = options or SingleClassOptions()
    folder = run_dir if isinstance(run_dir, RunFolder) else load_run(run_dir)
    grid = MaskingOptions(factors=options.factors, quantity=options.quantity, layers=options.layers,
                          quantiles=options.quantiles, alphas=options.alphas, soft=options.soft, n_random=0,
                          least=False, augmentations=options.augmentations, n_draws=options.n_draws, seed=options.seed,
                          batch_size=options.batch_size, max_batch=options.max_batch, device=options.device,
                          limit_images=options.limit_images)
    check_options(grid)
    if not isinstance(options.k, int) or options.k < 1:
        raise AugsenseError(f"k must be a positive integer (candidate classes per factor), got {options.k!r}")
    found = candidate_classes(folder, factors=options.factors, quantity=options.quantity, k=options.k,
                              layer=options.candidates_layer, layers=options.layers)
    class_layer, layers, factors, chosen = found.layer, found.mask_layers, found.factors, found.chosen
    n_classes = found.maps.shape[0]

    specs, multipliers = build_masks(folder, factors, layers, grid)
    identity = [MaskSpec(f, options.quantity, "guided", 0, math.nan, 1.0, "none", 0) for f in factors]  # type: ignore[arg-type]
    specs = specs + identity
    multipliers = {layer: np.concatenate([m, np.ones((len(identity),) + m.shape[1:], np.float32)])
                   for layer, m in multipliers.items()}
    bundle, image_set, space, device, transform = load_inputs(folder, model, images, options.device,
                                                              options.limit_images)
    with torch.inference_mode():
        n_outputs = int(bundle.module(bundle.normalise(image_set.batch(torch.arange(1), device))).shape[-1])
    if n_outputs != n_classes:
        raise AugsenseError(f"candidates layer {class_layer!r} has {n_classes} units but the model has {n_outputs} "
                            "outputs; it must be the class outputs (`output` or the final linear layer)")
    which = options.augmentations
    if isinstance(which, str) and which not in ("own", "all", "clean"):
        which = [a for a in which.split(",") if a]
    space_names = [f.name for f in space.factors]
    if not isinstance(which, str):
        unknown = [a for a in which if a != CLEAN and a not in space_names]
        if unknown:
            raise AugsenseError(f"augmentation {unknown[0]!r} is not a factor of the run; use one of "
                                f"{', '.join(space_names)} (or own / all / clean)")
    names, plan = augmentation_plan(specs, [f for f in factors if f in space_names] if which != "all" else space_names,
                                    which)
    candidates = np.stack([chosen[spec.factor] for spec in specs])
    tally = evaluate_masks(bundle.module, bundle.normalise, image_set, multipliers, plan,
                           [None if name == CLEAN else space.factors[space_names.index(name)] for name in names],
                           n_draws=options.n_draws, seed=options.seed, batch_size=options.batch_size,
                           max_batch=options.max_batch, device=device, top_k=options.k, candidates=candidates,
                           transform=transform, progress=progress, **layout_options(folder.info))
    n_identity = len(specs) - len(identity)
    observed: dict[int, float] = {}
    meta: dict[int, dict[str, Any]] = {}
    nulls: dict[int, Any] = {}
    for a, name in enumerate(names):
        n = int(tally.reference_n[a])
        null = nulls.setdefault(n, jaccard_null_threshold(n_classes, options.k, n, method=options.null_method,
                                                          seed=options.seed))  # type: ignore[arg-type]
        for k in np.flatnonzero(plan[a, :n_identity]):
            spec = specs[k]
            base = n_identity + factors.index(spec.factor)
            key = len(observed)
            observed[key] = float(tally.jaccard[a, k] / tally.n[a, k])
            meta[key] = {"factor": spec.factor, "quantity": spec.quantity, "config": int(k), "q": spec.q,
                         "alpha": spec.alpha, "mask": spec.mask, "augmentation": name, "k": options.k,
                         "n_images": int(tally.n[a, k]),
                         "unmasked_jaccard": float(tally.jaccard[a, base] / tally.n[a, base]),
                         "threshold": null.threshold, "null_method": null.method}
    if not observed:
        return pd.DataFrame(columns=SINGLE_CLASS_COLUMNS)
    fences = {key: meta[key]["threshold"] for key in observed}
    parts = []
    for fence in sorted(set(fences.values())):
        keys = [key for key in observed if fences[key] == fence]
        # a fence of 0 (few images, many classes: most null means are 0) means "any overlap beats
        # chance"; confirmed_biases wants a positive fence, and the smallest positive float is equivalent
        part = confirmed_biases({key: chosen[meta[key]["factor"]] for key in keys},
                                {key: observed[key] for key in keys}, max(fence, float(np.nextafter(0.0, 1.0))),
                                class_names=bundle.class_names if bundle.class_names and
                                len(bundle.class_names) >= n_classes else None)
        parts.append(part)
    biases = pd.concat(parts, ignore_index=True)
    rows = []
    for _, row in biases.iterrows():
        info = meta[int(row["factor"])]
        rows.append({**info, "candidates": row["classes"],
                     "candidate_names": row["class_names"] if row["class_names"] is not None else
                     [str(c) for c in row["classes"]],
                     "mean_jaccard": row["mean_jaccard"],
                     "ratio": row["mean_jaccard"] / info["threshold"] if info["threshold"] > 0 else math.inf,
                     "confirmed": bool(row["confirmed"])})
    table = pd.DataFrame(rows, columns=SINGLE_CLASS_COLUMNS)
    table = table.sort_values("mean_jaccard", ascending=False, kind="stable").reset_index(drop=True)
    if write:
        commit_tables(Source.of(folder.path, folder.info), [("single_class", table)])
    return table


DECAY_COLUMNS = ["factor", "quantity", "kind", "alpha", "q", "masked_fraction", "n_draws", "augmentation", "classes",
                 "rank", "class", "class_name", "n_images", "share", "share_sd", "n_labelled", "top1"]


@dataclass
class ClassDecayOptions:
    """The class-decay grid: guided and random masks at growing masked fractions, on clean images.

    ``quantiles``: the units ≥ each q-quantile of the factor's map are masked (masked fraction ≈ 1 − q
    of each layer's live units); ``alphas``: their multiplier (0 damages); ``n_random``: random masks
    of the same size per quantile. ``classes``: ``"candidates"`` (each factor's k most sensitive
    outputs) or ``"predicted"`` (the k classes the unmasked model predicts most often on these
    images, the same for every factor: on a few images the candidates are rarely predicted at all).
    """

    factors: list[str] | None = None
    quantity: str = "total_order"
    k: int = 5
    layers: list[str] | None = None
    candidates_layer: str | None = None
    quantiles: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95)
    alphas: Sequence[float] = (0.0,)
    n_random: int = 2
    classes: str = "candidates"
    seed: int = 0
    batch_size: int = 32
    max_batch: int = MAX_BATCH
    device: str = "auto"
    limit_images: int | None = None


def class_decay(run_dir: str | Path | RunFolder, options: ClassDecayOptions | None = None, *, model: Any = None,
                images: Any = None, write: bool = True, progress: bool = False) -> pd.DataFrame:
    """Per candidate class, its share of top-1 predictions (and top-1 accuracy on its images) as more of the
    factor's units are masked, for the guided masks and random ones of the same size; writes
    ``class_decay.parquet``.

    Candidates: each factor's k output classes most sensitive to it (as :func:`run_single_class`).
    Rows (columns :data:`DECAY_COLUMNS`): ``kind`` guided / random (mean and SD over draws) / none
    (the unmasked model, masked_fraction 0); ``share`` = predictions of the class / images;
    ``top1`` = accuracy on the images labelled with the class (NaN when none is).
    """
    options = options or ClassDecayOptions()
    folder = run_dir if isinstance(run_dir, RunFolder) else load_run(run_dir)
    grid = MaskingOptions(factors=options.factors, quantity=options.quantity, layers=options.layers,
                          quantiles=options.quantiles, alphas=options.alphas, soft=False, n_random=options.n_random,
                          least=False, augmentations="clean", seed=options.seed, batch_size=options.batch_size,
                          max_batch=options.max_batch, device=options.device, limit_images=options.limit_images)
    check_options(grid)
    if not options.quantiles:
        raise AugsenseError("class decay needs at least one quantile (e.g. 0.5,0.7,0.9)")
    if not isinstance(options.k, int) or options.k < 1:
        raise AugsenseError(f"k must be a positive integer (candidate classes per factor), got {options.k!r}")
    if options.classes not in ("candidates", "predicted"):
        raise AugsenseError(f"classes must be 'candidates' or 'predicted', got {options.classes!r}")
    found = candidate_classes(folder, factors=options.factors, quantity=options.quantity, k=options.k,
                              layer=options.candidates_layer, layers=options.layers)
    layers, factors, chosen, n_classes = found.mask_layers, found.factors, found.chosen, found.maps.shape[0]
    specs, multipliers = build_masks(folder, factors, layers, grid)
    total_units = sum(int(np.prod(m.shape[1:])) for m in multipliers.values())
    bundle, image_set, _, device, transform = load_inputs(folder, model, images, options.device, options.limit_images)
    plan = np.ones((1, len(specs)), dtype=bool)
    labels = image_set.labels
    n_labels = int(labels.max()) + 1 if labels is not None and len(labels) and int(labels.max()) >= 0 else None
    tally = evaluate_masks(bundle.module, bundle.normalise, image_set, multipliers, plan, [None],
                           seed=options.seed, batch_size=options.batch_size, max_batch=options.max_batch,
                           device=device, transform=transform, n_labels=max(n_labels or 1, n_classes),
                           progress=progress, count_predictions=True, **layout_options(folder.info))
    names = bundle.class_names
    predicted, reference = tally.class_predicted[0], tally.reference_class_predicted[0]  # type: ignore[index]
    n_images = float(tally.reference_n[0])
    if options.classes == "predicted":  # most often predicted first; ties by class id
        frequent = np.lexsort((np.arange(len(reference)), -reference))[:options.k]
        chosen = {factor: frequent for factor in factors}

    def class_top1(hits: np.ndarray, counts: np.ndarray, c: int) -> tuple[int, float]:
        n = int(counts[c]) if c < counts.shape[-1] else 0
        return n, float(hits[c] / n) if n else math.nan

    rows = []
    for factor in factors:
        for rank, c in enumerate(chosen[factor]):
            c = int(c)
            base = {"factor": factor, "quantity": options.quantity, "augmentation": CLEAN, "classes": options.classes,
                    "rank": rank, "class": c,
                    "class_name": names[c] if names and c < len(names) else str(c)}
            n_lab, top1 = class_top1(tally.reference_class_top1[0], tally.reference_class_n[0], c)
            for alpha in options.alphas:
                rows.append({**base, "kind": "none", "alpha": float(alpha), "q": math.nan, "masked_fraction": 0.0,
                             "n_draws": 1, "n_images": int(n_images), "share": reference[c] / n_images,
                             "share_sd": math.nan, "n_labelled": n_lab, "top1": top1})
            groups: dict[tuple[str, float, float], list[int]] = {}
            for k, spec in enumerate(specs):
                if spec.factor == factor:
                    groups.setdefault((spec.kind, spec.q, spec.alpha), []).append(k)
            for (kind, q, alpha), configs in groups.items():
                shares = np.array([predicted[k, c] / tally.n[0, k] for k in configs])
                accuracies = [class_top1(tally.class_top1[0, k], tally.class_n[0, k], c) for k in configs]
                top1s = np.array([a for _, a in accuracies])
                rows.append({**base, "kind": kind, "alpha": alpha, "q": q,
                             "masked_fraction": float(np.mean([specs[k].n_units for k in configs]) / total_units),
                             "n_draws": len(configs), "n_images": int(tally.n[0, configs[0]]),
                             "share": float(shares.mean()),
                             "share_sd": float(shares.std(ddof=1)) if len(shares) > 1 else math.nan,
                             "n_labelled": accuracies[0][0],
                             "top1": float(np.nanmean(top1s)) if np.isfinite(top1s).any() else math.nan})
    table = pd.DataFrame(rows, columns=DECAY_COLUMNS)
    if write:
        commit_tables(Source.of(folder.path, folder.info), [("class_decay", table)])
    return table


__all__ = ["DECAY_COLUMNS", "SINGLE_CLASS_COLUMNS", "Candidates", "ClassDecayOptions", "SingleClassOptions",
           "candidate_classes", "candidates_layer",
           "class_decay", "run_single_class"]
