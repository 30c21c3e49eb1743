"""The treatment–control contrast run: each augmentation alone versus the clean image, per unit.

For every factor of the config's factor space, on its own (the other factors are not applied),
every image gets ``draws`` seeded parameter draws, uniform within the factor's bounds (on/off
factors are simply "on", so they get one draw per image: further draws would be identical pairs).
Each augmented image is paired with its clean image; per unit of the chosen layers the paired
differences feed a :class:`~augsense.estimators.contrast.ContrastAccumulator` (float64 moments;
paired differences kept for the Wilcoxon signed-rank test and the rank-biserial correlation only
for reduced per-channel units; float64 group moments for the point-biserial correlation between
clean and augmented outputs, with a Fisher-z interval). Benjamini–Yekutieli (2001) FDR then runs across all units of all
layers *and* factors at once. Per-unit maps (``reduction = "none"``) get the moment statistics only
(mean difference, SD, Cohen's d_z with CI, paired t-test), and their p-values are the t-test's.

Reused building blocks: ``load_model``, ``load_images``, ``build_factor_space``,
``ActivationProbe``, ``pick_device`` and ``minmax_stretch``; nothing of the sensitivity loop.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from augsense.analyses.sensitivity import build_factor_space, minmax_stretch, pick_device
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.estimators.contrast import ContrastAccumulator, ContrastResult, contrast_fdr
from augsense.estimators.fdr import benjamini_yekutieli
from augsense.factors import Factor
from augsense.io.images import ImageSet, images_for
from augsense.io.models import ModelBundle, load_model
from augsense.probe.hooks import ActivationProbe
from augsense.progress import Progress

__all__ = ["ContrastRun", "draw_single_factor", "run_contrast", "summarise_contrast", "CONTRAST_COLUMNS"]

#: Default memory for all kept paired differences together (float32).
DEFAULT_DIFFERENCE_BYTES = 1024 * 2**20

#: Columns of ``contrast.parquet``, in order.
CONTRAST_COLUMNS = [
    "layer", "unit", "factor", "n_pairs", "mean_treated", "mean_control", "mean_difference", "sd",
    "effect_size", "effect_size_ci_low", "effect_size_ci_high", "test", "statistic", "p_value", "q_value",
    "significant", "rank_biserial", "point_biserial", "point_biserial_ci_low", "point_biserial_ci_high", "t", "p_t", "wilcoxon_statistic", "wilcoxon_z", "p_wilcoxon", "zero_variance",
]


@dataclass
class ContrastRun:
    """The outcome of a contrast run.

    Attributes:
        table: tidy results, one row per (factor, layer, unit); columns :data:`CONTRAST_COLUMNS`.
        results: factor → layer → :class:`ContrastResult` (arrays over the layer's flat units).
        factors: factor names in the config's order.
        layers, unit_shapes: the probed layers and the shape of their units.
        draws: parameter draws per image for each factor (1 for on/off factors).
        rank_layers: layers whose paired differences were kept (Wilcoxon); the others use the t-test.
    """

    config: SensitivityConfig
    table: pd.DataFrame
    results: dict[str, dict[str, ContrastResult]]
    factors: list[str]
    layers: list[str]
    unit_shapes: dict[str, tuple[int, ...]]
    draws: dict[str, int]
    rank_layers: list[str]
    alpha: float
    n_images: int
    bundle: ModelBundle
    timings: dict[str, float] = field(default_factory=dict)
    out_dir: Path | None = None

    def significant_counts(self) -> pd.DataFrame:
        """Units per layer (rows) and factor (columns) with q ≤ alpha."""
        return summarise_contrast(self.table)


def draw_single_factor(factor: Factor, n_images: int, draws: int, seed: int) -> torch.Tensor:
    """Unit-cube rows for ``factor`` alone: ``(n_images, draws, n_coords)`` float32, switch forced on.

    Parameters are uniform within the factor's bounds (via ``Parameter.from_unit``); the rows
    depend only on (seed, factor name, n_images, draws), never on the batch size.
    """
    generator = torch.Generator().manual_seed(_factor_seed(seed, factor.name))
    u = torch.rand(n_images, draws, factor.n_coords, generator=generator)
    if factor.switch:
        u[..., len(factor.parameters)] = 0.0  # u_switch ≤ p: the factor is on for every draw
    return u


def _factor_seed(seed: int, name: str) -> int:
    """A stable per-factor seed (Python's str hash is salted per process, so not that)."""
    return (seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))) % (2**63 - 1)


def _difference_bytes(n_pairs: dict[str, int], layer_units: dict[str, int], rank_layers: list[str]) -> int:
    return sum(4 * pairs * layer_units[layer] for pairs in n_pairs.values() for layer in rank_layers)


def run_contrast(config: SensitivityConfig | None = None, *, model: nn.Module | ModelBundle | None = None,
                 images: ImageSet | str | None = None, out_dir: str | Path | None = None, draws: int = 8,
                 alpha: float = 0.05, max_difference_bytes: int = DEFAULT_DIFFERENCE_BYTES,
                 progress: bool = True) -> ContrastRun:
    """Contrast each factor alone against the clean images, per unit, with BY-FDR over everything.

    Args:
        config: model, images, layers, reduction, output, factors (with bounds), seed, batch_size,
            device, preprocessing, confidence and limit_images are used; the design fields are not.
        model: an ``nn.Module`` or ``ModelBundle`` overriding ``config.model``.
        images: an ImageSet (or a source string) overriding ``config.images``.
        out_dir: folder to write ``contrast.parquet`` and ``contrast.json`` into (e.g. a run folder).
        draws: parameter draws per image for parametric factors (≥ 1).
        alpha: false discovery rate of the Benjamini–Yekutieli step.
        max_difference_bytes: memory allowed for all kept paired differences (float32, reduced
            layers only); beyond it the run refuses before starting, saying what to change.
        progress: progress bar with ETA on stderr.

    Returns:
        :class:`ContrastRun`; ``run.table`` is the tidy result also written to ``contrast.parquet``.
    """
    config = config or SensitivityConfig()
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
        raise AugsenseError(f"draws = {draws!r} must be a positive integer (parameter draws per image), e.g. 8")
    if not 0.0 < alpha < 1.0:
        raise AugsenseError(f"alpha = {alpha} must lie strictly between 0 and 1, e.g. 0.05")
    started = time.perf_counter()
    device = pick_device(config.device)
    bundle = model if isinstance(model, ModelBundle) else load_model(model if model is not None else config.model,
                                                                     weights=config.weights, seed=config.seed,
                                                                     categories=config.categories)
    bundle.module.to(device).eval()
    if model is not None:
        config = dataclasses.replace(config, model=bundle.name)
    if isinstance(images, ImageSet):
        image_set = images
        config = dataclasses.replace(config, images="python")
    else:
        image_set = images_for(config, bundle, images)
    if len(image_set) < 2:
        raise AugsenseError(f"contrast needs at least 2 images, got {len(image_set)}; add images or raise --limit-images")
    space = build_factor_space(config)
    factors = list(space.factors)
    probe = ActivationProbe(bundle.module, config.layers, reduction=config.reduction, output=config.output,  # type: ignore[arg-type]
                            input_size=bundle.input_size, device=device, layouts=config.layouts,
                            softmax_layers=config.softmax_layers)
    layers = list(probe.layers)
    layer_units = {layer: math.prod(probe.unit_shapes[layer]) for layer in layers}
    rank_layers = layers if config.reduction != "none" else []
    n_images = len(image_set)
    factor_draws = {f.name: (draws if f.parameters else 1) for f in factors}
    n_pairs = {name: n_images * k for name, k in factor_draws.items()}
    needed = _difference_bytes(n_pairs, layer_units, rank_layers)
    if needed > max_difference_bytes:
        raise AugsenseError(
            f"keeping the paired differences for the rank tests needs {needed / 2**20:.0f} MiB "
            f"(> {max_difference_bytes / 2**20:.0f} MiB allowed): use fewer images (--limit-images), "
            "fewer --draws or layers, or raise --max-difference-mib")
    rows = {f.name: draw_single_factor(f, n_images, factor_draws[f.name], config.seed) for f in factors}
    accumulators = {
        f.name: {layer: ContrastAccumulator(layer_units[layer], keep_differences=layer in rank_layers,
                                            max_pairs=n_pairs[f.name], device=device) for layer in layers}
        for f in factors}
    stretch = minmax_stretch if config.preprocessing == "paper" else None

    def forward(x: torch.Tensor) -> torch.Tensor:
        return probe(bundle.normalise(stretch(x) if stretch is not None else x))

    images_per_batch = max(1, config.batch_size // max(factor_draws.values()))
    bar = Progress(total=n_images * (1 + sum(factor_draws.values())), unit="img", description="contrast",
                   enabled=progress)
    timings = {"setup_s": time.perf_counter() - started}
    loop_started = time.perf_counter()
    with probe, torch.inference_mode():
        for start in range(0, n_images, images_per_batch):
            index = torch.arange(start, min(start + images_per_batch, n_images))
            clean = image_set.batch(index, device)
            control = forward(clean)
            bar.update(len(index))
            for factor in factors:
                k = factor_draws[factor.name]
                u = rows[factor.name][index].reshape(len(index) * k, -1).to(device)
                treated = forward(factor.apply_unit(clean.repeat_interleave(k, dim=0), u))
                paired = control.repeat_interleave(k, dim=0)
                for layer, columns in probe.slices.items():
                    accumulators[factor.name][layer].update(treated[:, columns], paired[:, columns])
                bar.update(len(index) * k)
    bar.close()
    timings["loop_s"] = time.perf_counter() - loop_started
    results = {name: {layer: acc.compute(config.confidence, control_repeats=factor_draws[name])
                      for layer, acc in per_layer.items()} for name, per_layer in accumulators.items()}
    table = contrast_table(results, alpha)
    timings["total_s"] = time.perf_counter() - started
    out = Path(out_dir) if out_dir is not None else None
    run = ContrastRun(config, table, results, [f.name for f in factors], layers, dict(probe.unit_shapes),
                      factor_draws, rank_layers, alpha, n_images, bundle, timings, out)
    if out is not None:
        write_contrast(run, out, space.to_dict(), image_set)
    return run


def contrast_table(results: dict[str, dict[str, ContrastResult]], alpha: float) -> pd.DataFrame:
    """Tidy table over factors × layers × units with BY q-values across *all* of them.

    ``contrast_fdr`` builds each factor's table (Wilcoxon p where differences were kept, t-test p
    elsewhere); the BY step is then redone on the pooled p-values, so the FDR family is every
    (factor, layer, unit) test of the run.
    """
    tables = []
    for factor, per_layer in results.items():
        table = contrast_fdr(per_layer, alpha=alpha, test="auto")
        table.insert(2, "factor", factor)
        tables.append(table)
    combined = pd.concat(tables, ignore_index=True)
    reject, q = benjamini_yekutieli(combined["p_value"].to_numpy(dtype=np.float64), alpha)
    combined["q_value"] = q
    combined["significant"] = reject
    combined["statistic"] = np.where(combined["test"] == "wilcoxon", combined["wilcoxon_statistic"], combined["t"])
    return combined[CONTRAST_COLUMNS]


def summarise_contrast(table: pd.DataFrame) -> pd.DataFrame:
    """Significant units per layer (rows, in order of appearance) and factor (columns)."""
    layers = list(dict.fromkeys(table["layer"]))
    factors = list(dict.fromkeys(table["factor"]))
    counts = table.pivot_table(index="layer", columns="factor", values="significant", aggfunc="sum")
    return counts.reindex(index=layers, columns=factors).fillna(0).astype(int)


def write_contrast(run: ContrastRun, out: Path, factor_space: dict[str, Any], images: ImageSet) -> None:
    """Write ``contrast.parquet`` (tidy table) and ``contrast.json`` (provenance) into ``out``, each atomically
    (no reader sees half a file), under the folder's lock (a second writer is refused, naming the holder)."""
    from augsense.analyses.plan import model_record
    from augsense.io.lock import ADVICE, holding, prepare_out_dir
    from augsense.io.provenance import atomic_write, write_parquet
    from augsense.io.results import versions

    prepare_out_dir(out)
    info = {
        "config": run.config.to_dict(),
        # which network the table describes: the report of a run folder shows it only for the run's own weights
        "model": model_record(run.bundle),
        "factors": factor_space,
        "draws": run.draws,
        "alpha": run.alpha,
        "fdr": "Benjamini-Yekutieli across all (factor, layer, unit) tests",
        "rank_layers": run.rank_layers,
        "layers": {layer: {"unit_shape": list(run.unit_shapes[layer])} for layer in run.layers},
        "images": {"count": len(images), "sources": images.sources},
        "timings": run.timings,
        "versions": versions(),
    }
    text = json.dumps(info, indent=2, default=str)
    with holding(out, advice=ADVICE):
        write_parquet(run.table, out / "contrast.parquet")
        atomic_write(out / "contrast.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def format_summary(run: ContrastRun) -> str:
    """One screen: pairs, tests, and significant units per layer and factor (of the layer's units)."""
    counts = run.significant_counts()
    lines = [f"contrast: {run.bundle.name}, {run.n_images} images, draws per image "
             + ", ".join(f"{name} {k}" for name, k in run.draws.items()),
             f"Benjamini–Yekutieli FDR {run.alpha:g} over {len(run.table)} tests "
             f"({'Wilcoxon signed-rank' if run.rank_layers else 't-test'}"
             + (", t-test for per-unit layers" if run.rank_layers and len(run.rank_layers) < len(run.layers) else "")
             + "); significant units / units:"]
    width = max(12, *(len(layer) for layer in run.layers))
    lines.append(" " * (width + 2) + " ".join(f"{name[:12]:>12}" for name in counts.columns))
    for layer in counts.index:
        total = math.prod(run.unit_shapes[layer])
        cells = " ".join(f"{f'{counts.loc[layer, name]}/{total}':>12}" for name in counts.columns)
        lines.append(f"  {layer:<{width}}{cells}")
    return "\n".join(lines)
