"""``augsense paper RUN_DIR``: the paper's other analyses on a finished run, quickly, and its report again.

After ``augsense demo`` (or ``run``), this adds to the run folder what the paper's figures need
(Kharyuk, Matveev & Oseledets 2025), at a reduced size by default (``--full`` for the paper's):

1. **maps** — a small per-unit run (``reduction = "none"``) of the run's spatial layers into
   ``RUN_DIR/paper_spatial/``; its per-pixel correlations and (factor, channel)-map LDA
   (``map_pixel_correlations.parquet``, ``map_lda_paper.parquet``, ``map_lda_paper_confusion.parquet``)
   are written into RUN_DIR;
2. **masking** — guided masks with a random baseline on clean and each factor's own augmentation,
   with the clustering of all (augmentation, mask) profiles (``masking*.parquet``);
3. **single-class** — candidate-class biases (``single_class.parquet``) and class-decay curves
   (``class_decay.parquet``);
4. **segments** — the network's stem fed H, S, V and their subsets at the input size, on the
   paper's selected units (each factor's most sensitive channels of the stem in the run)
   (``RUN_DIR/segments/``, with ``segments_indices.parquet`` and ``segments_neurons.parquet``);

masked forwards run in chunks of ``max_batch`` = 64 images × configurations (memory),

then rewrites ``RUN_DIR/report.html`` with the section "The paper's figures".
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from augsense.errors import AugsenseError

__all__ = ["PaperOptions", "STEPS", "register", "run_paper"]

STEPS = ("maps", "masking", "single-class", "segments")


@dataclass
class PaperOptions:
    """Sizes of the paper analyses; the defaults are the quick ones (``full()`` gives the paper's).

    ``spatial_layers``: layers of the per-unit run (default: the last two of the run's layers that
    have a spatial map of at most ``max_spatial_units`` units); ``segment``: the block for the HSV
    runs (default: the network's first two modules, e.g. the stem ``_conv_stem,_bn0``);
    ``segment_neurons``: its units (``auto``: the paper's selected units, here each factor's
    ``segment_top`` most sensitive channels of the segment's last module in the run; ``all``; or a
    ``--neurons`` spec such as ``_bn0:1,5``).
    """

    steps: tuple[str, ...] = STEPS
    spatial_layers: list[str] | None = None
    max_spatial_units: int = 40_000
    spatial_n: int = 32
    lda_repeats: int = 10
    quantiles: tuple[float, ...] = (0.5, 0.9)
    alphas: tuple[float, ...] = (0.0, 1.5)
    n_random: int = 1
    decay_quantiles: tuple[float, ...] = (0.5, 0.8, 0.95)
    decay_classes: str = "predicted"
    max_batch: int = 64
    k: int = 5
    segment: str | None = None
    segment_channels: str = "subsets"
    segment_n: int = 32
    segment_neurons: str = "auto"
    segment_top: int = 2
    limit_images: int | None = 12
    device: str = "auto"
    seed: int = 0

    @classmethod
    def full(cls, **changes: Any) -> PaperOptions:
        """The paper's sizes: 5 × 100 LDA folds, the q × α grid, all images, larger runs."""
        values: dict[str, Any] = dict(spatial_n=256, lda_repeats=100, quantiles=(0.5, 0.6, 0.7, 0.8, 0.9),
                                      alphas=(0.0, 0.5, 1.5), n_random=2, decay_quantiles=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
                                      segment_n=256, limit_images=None)
        values.update(changes)
        return cls(**values)


def _spatial_layers(bundle: Any, folder: Any, options: PaperOptions, device: Any) -> list[str]:
    from augsense.probe.hooks import OUTPUT, ActivationProbe

    if options.spatial_layers:
        return list(options.spatial_layers)
    candidates = [name for name in folder.layer_names if name != OUTPUT]
    probe = ActivationProbe(bundle.module, candidates, reduction="none", input_size=bundle.input_size, device=device)
    spatial = [name for name in candidates if len(probe.unit_shapes[name]) == 3
               and math.prod(probe.unit_shapes[name]) <= options.max_spatial_units]
    return spatial[-2:]


def _default_segment(bundle: Any) -> str:
    children = [name for name, _ in bundle.module.named_children()]
    if len(children) < 2:
        raise AugsenseError("the model has fewer than two top-level modules; name the block with --segment")
    return ",".join(children[:2])


def _segment_neurons(options: PaperOptions, folder: Any, bundle: Any, segment: str) -> tuple[Any, Any]:
    """(neurons, selected_for) for the segment runs: ``auto`` keeps each factor's ``segment_top`` most sensitive
    channels of the segment's last module in the run's total-order (else Shapley) map, as the paper ran its
    HSV segments on selected units; all channels when the run did not measure that module per channel."""
    from augsense.analyses.segments import parse_segment, top_neurons

    choice = (options.segment_neurons or "auto").strip()
    if choice.lower() == "all":
        return None, None
    if choice.lower() != "auto":
        return choice, None
    last = parse_segment(bundle.module, segment, bundle.input_size).modules[-1]
    quantity = next((q for q in ("total_order", "shapley") if f"{last}/{q}" in folder.maps), None)
    layout = str(folder.info.get("layers", {}).get(last, {}).get("layout", "nchw")).split(" ")[0]
    if quantity is None or layout not in ("nchw", "vector"):
        print(f"augsense paper: note: segments on all channels (the run has no per-channel map of {last!r} to "
              "select the units from; --neurons names them)", file=sys.stderr)
        return None, None
    chosen = top_neurons(folder.map(last, quantity), folder.players, options.segment_top)
    return ({last: list(chosen)}, chosen) if chosen else (None, None)


def run_paper(run_dir: str | Path, options: PaperOptions | None = None, *, model: Any = None, images: Any = None,
              progress: bool = False, report: bool = True) -> dict[str, float]:
    """Run the chosen steps on a run folder, holding its lock throughout (see :func:`_run_paper`)."""
    from augsense.io.lock import holding
    from augsense.io.results import load_run

    if not Path(run_dir).is_dir():
        load_run(run_dir)  # says what is wrong with the folder
    with holding(run_dir):  # one writer at a time: a run --overwrite or another analysis is refused meanwhile
        return _run_paper(run_dir, options, model=model, images=images, progress=progress, report=report)


def _run_paper(run_dir: str | Path, options: PaperOptions | None = None, *, model: Any = None, images: Any = None,
               progress: bool = False, report: bool = True) -> dict[str, float]:
    """Run the chosen steps on a run folder; returns the wall time of each step in seconds.

    Args:
        run_dir: a finished run folder (``augsense demo`` / ``run``).
        options: :class:`PaperOptions` (quick sizes by default).
        model, images: override the run's model (``nn.Module`` / ``ModelBundle``) and images.
        progress: progress bars.
        report: rewrite ``report.html`` at the end.
    """
    from augsense.analyses.masking import MaskingOptions, load_inputs, run_masking
    from augsense.analyses.segments import run_segments
    from augsense.analyses.sensitivity import run_sensitivity
    from augsense.analyses.single_class import ClassDecayOptions, SingleClassOptions, class_decay, run_single_class
    from augsense.commands.maps import map_statistics_of_run
    from augsense.config import SensitivityConfig
    from augsense.io.provenance import Source, commit_tables
    from augsense.io.results import load_run

    options = options or PaperOptions()
    unknown = [s for s in options.steps if s not in STEPS]
    if unknown:
        raise AugsenseError(f"unknown step {unknown[0]!r}; choose from {', '.join(STEPS)}")
    run_dir = Path(run_dir)
    folder = load_run(run_dir)
    source = Source.of(run_dir, folder.info)  # the result set the steps' tables are stamped with
    config = SensitivityConfig.from_dict(dict(folder.info.get("config", {})))
    bundle, image_set, _, device, _ = load_inputs(folder, model, images, options.device, options.limit_images)
    timings: dict[str, float] = {}
    if min(options.spatial_n, options.segment_n) < 128 and {"maps", "segments"} & set(options.steps):
        print(f"augsense paper: note: the per-unit and segment sub-runs use quick sizes (N = {options.spatial_n} "
              f"and {options.segment_n}, {len(image_set)} images): wide intervals, for the figures' shape only; "
              "--full for the paper's sizes", file=sys.stderr)

    def step(name: str) -> bool:
        if name in options.steps:
            done = [f"{n} {t:.0f} s" for n, t in list(timings.items())[-1:]]
            print(f"augsense paper: {name} …" + (f" ({done[0]})" if done else ""), file=sys.stderr)
            return True
        return False

    if step("maps"):
        started = time.perf_counter()
        layers = _spatial_layers(bundle, folder, options, device)
        if not layers:
            print("augsense paper: maps skipped (the run has no spatial layer small enough; give spatial_layers)",
                  file=sys.stderr)
        else:
            spatial = dataclasses.replace(config, layers=layers, reduction="none", n=options.spatial_n, report=False,
                                          output="logits", device=options.device, checkpoint_every=0.0)
            run_sensitivity(spatial, model=bundle, images=image_set, out_dir=run_dir / "paper_spatial",
                            progress=progress, overwrite=True, warn=False)  # quick sizes, said once below
            tables = map_statistics_of_run(run_dir / "paper_spatial", quantities=["total_order"],
                                           paper_repeats=options.lda_repeats, seed=options.seed)
            paper_tables = (("map_pixel_correlations", tables.pixel), ("map_lda_paper", tables.paper_lda),
                            ("map_lda_paper_confusion", tables.paper_confusion))
            commit_tables(source, [(name, table.assign(source="paper_spatial")) for name, table in paper_tables
                                   if len(table)], replaces=[name for name, _ in paper_tables])
            for note in (n for n in tables.notes if "--replicate" not in n):  # no replicate here, by design
                print(f"augsense paper: note: {note}", file=sys.stderr)
        timings["maps"] = time.perf_counter() - started
    labelled = image_set.labels is not None and bool((image_set.labels >= 0).any())
    if step("masking"):
        started = time.perf_counter()
        if not labelled:
            print("augsense paper: masking skipped (the images have no labels)", file=sys.stderr)
        else:
            run_masking(folder, MaskingOptions(quantiles=options.quantiles, alphas=options.alphas, n_random=options.n_random,
                                               least=False, augmentations="own", device=options.device, seed=options.seed,
                                               max_batch=options.max_batch),
                        model=bundle, images=image_set, progress=progress)
        timings["masking"] = time.perf_counter() - started
    if step("single-class"):
        started = time.perf_counter()
        run_single_class(folder, SingleClassOptions(k=options.k, device=options.device, seed=options.seed,
                                                    max_batch=options.max_batch),
                         model=bundle, images=image_set, progress=progress)
        class_decay(folder, ClassDecayOptions(k=min(options.k, 3), quantiles=options.decay_quantiles, alphas=(0.0,),
                                              n_random=max(1, options.n_random), classes=options.decay_classes,
                                              device=options.device, seed=options.seed, max_batch=options.max_batch),
                    model=bundle, images=image_set, progress=progress)
        timings["single-class"] = time.perf_counter() - started
    if step("segments"):
        started = time.perf_counter()
        segment = options.segment or _default_segment(bundle)
        segment_config = dataclasses.replace(config, n=options.segment_n, report=False, layers=[segment.split(",")[-1]],
                                             device=options.device, checkpoint_every=0.0)
        channels: Any = options.segment_channels if options.segment_channels in ("all", "subsets") else \
            [c for c in options.segment_channels.split(",") if c]
        neurons, selected_for = _segment_neurons(options, folder, bundle, segment)
        segments = run_segments(segment_config, segment, channels=channels, model=bundle, images=image_set,
                                out_dir=run_dir / "segments", progress=progress, overwrite=True, warn=False,
                                neurons=neurons, selected_for=selected_for)
        commit_tables(source, [("segments", segments.attribution), ("segments_indices", segments.indices),
                               ("segments_neurons", segments.neuron_summary)],
                      into=run_dir / "segments")  # stamped with the run's set, for the report
        timings["segments"] = time.perf_counter() - started
    if report:
        from augsense.report.html import write_report
        from augsense.report.trust import FOREIGN_TABLES

        started = time.perf_counter()
        warnings: list[str] = []
        write_report(run_dir, warnings)
        for line in warnings:  # tables of another result set, left out of the report: on the console too
            if line.startswith(FOREIGN_TABLES):
                print(f"augsense paper: warning: {line}", file=sys.stderr)
        timings["report"] = time.perf_counter() - started
    return timings


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "paper", help="the paper's other analyses on a run folder (maps, masking, single-class, segments), quickly",
        description="Adds the paper's per-pixel correlations and (factor, channel)-map LDA (from a small per-unit "
                    "run), guided masking with the dendrogram of all (augmentation, mask) profiles, single-class "
                    "biases and class-decay curves, and HSV segment runs of the stem, then rewrites the report. "
                    "Quick sizes by default (a few minutes on a CPU for the demo); --full for the paper's.")
    parser.add_argument("run_dir", help="a finished run folder (e.g. runs/demo)")
    parser.add_argument("--full", action="store_true", help="the paper's sizes (5 × 100 LDA folds, the q × α grid, "
                        "all images); much slower")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {', '.join(STEPS)}")
    parser.add_argument("--spatial-layers", default=None, help="layers of the per-unit run (default: the last two "
                        "spatial layers of at most 40 000 units)")
    parser.add_argument("--segment", default=None, help="block for the HSV runs (default: the first two modules)")
    parser.add_argument("--neurons", default="auto", help="segment units: auto (each factor's 2 most sensitive "
                        "channels of the segment's last module in the run, as the paper's selected units), all, or "
                        "MODULE:INDICES (e.g. _bn0:1,5)")
    parser.add_argument("--channels", default="subsets", help="segment input channels: subsets (h, s, v, hs, sv, hv, "
                        "hsv), all (h, s, v) or comma-separated ones")
    parser.add_argument("--limit-images", type=int, default=None, help="images used (default 12; all with --full)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=cmd_paper)


def cmd_paper(args: argparse.Namespace) -> int:
    steps = tuple(s.strip() for s in args.steps.split(",") if s.strip())
    changes: dict[str, Any] = {"steps": steps, "segment": args.segment, "segment_channels": args.channels,
                               "segment_neurons": args.neurons, "device": args.device}
    if args.spatial_layers:
        changes["spatial_layers"] = [s.strip() for s in args.spatial_layers.split(",") if s.strip()]
    if args.limit_images is not None:
        if args.limit_images < 2:
            raise AugsenseError(f"--limit-images must be at least 2, got {args.limit_images}")
        changes["limit_images"] = args.limit_images
    options = PaperOptions.full(**changes) if args.full else PaperOptions(**changes)
    from augsense.interrupts import RunInterrupted

    started = time.perf_counter()
    try:
        timings = run_paper(args.run_dir, options, progress=not args.quiet)
    except RunInterrupted as stop:  # the sub-runs are not resumable from here: say so, not `--resume`
        if stop.rank == 0:
            print(f"augsense: {stop.describe()}; run `augsense paper {args.run_dir}` again (its steps start over)",
                  file=sys.stderr)
        return stop.exit_code
    print("augsense paper: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in timings.items())
          + f"; total {time.perf_counter() - started:.0f} s")
    print(f"report: {Path(args.run_dir) / 'report.html'} (section \"The paper's figures\")")
    return 0
