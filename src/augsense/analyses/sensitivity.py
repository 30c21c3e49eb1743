"""The sensitivity run: design blocks → augmented batches → hooked forward → accumulators.

One streaming pass: each design block is regenerated from (seed, block), its rows become
per-sample augmentation parameters, the augmented images go through the model with hooks that
reduce activations in place, and the (rows, group, units) outputs update float64 accumulators.
Nothing per sample outlives its batch. Finished blocks are checkpointed; a killed run resumes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from augsense.allocator import heap_allocations
from augsense.blockset import BlockSet
from augsense.analyses.feed import ImageFeed, channels_last, group_of, to_device
from augsense.analyses.plan import RunPlan, check_ranks_agree
from augsense.config import SensitivityConfig
from augsense.design import Design, DesignBlock, layouts, make_design
from augsense.errors import AugsenseError
from augsense.estimators import make_accumulator
from augsense.factors import FactorSpace, get_factor, preset
from augsense.factors.chunks import row_chunks
from augsense.factors.registry import PRESETS
from augsense.io.checkpoints import checkpoint_path, remove_checkpoint, resume_run_checkpoint, save_run_checkpoint
from augsense.interrupts import RunInterrupted, StopRequest
from augsense.io.images import ImageSet, images_for
from augsense.io.models import ModelBundle, load_model
from augsense.parallel import (BlockSchedule, Shard, broadcast_module, current_shard, gather_states,
                               union_blocks)
from augsense.probe.hooks import ActivationProbe
from augsense.progress import Progress


#: images augmented at once inside a forward batch (their temporaries are several copies of the images)
AUGMENT_CHUNK = 128
#: On the CPU the model sees at most this many images per forward pass; ``batch_size`` still sets the design's
#: blocks and how many evaluations are grouped. Larger CPU passes are no faster (bare channels-last forward, 2 cores,
#: images/s at 128 / 512 per pass: AlexNet 215 / 197, ResNet18 56 / 46, EfficientNet-B0 38 / 26; 64 was slower inside
#: the run) and their activations cost memory (the reference workload at batch 512: peak RSS 2.30–2.64 → 1.71–1.75
#: GB). In eval mode a sample's outputs do not depend on which images share its pass: equal to a full-batch forward
#: up to rounding (bitwise on AlexNet, ResNet18).
CPU_FORWARD_IMAGES = 128


def forward_images(batch_size: int, device: torch.device) -> int:
    """Images per forward pass on ``device``: ``batch_size``, at most :data:`CPU_FORWARD_IMAGES` on the CPU."""
    return min(batch_size, CPU_FORWARD_IMAGES) if device.type == "cpu" else batch_size


def build_factor_space(config: SensitivityConfig) -> FactorSpace:
    """The factors of a config: presets expanded, bounds narrowed, switches added."""
    factors = []
    for name in config.factors:
        factors.extend(preset(name) if name in PRESETS else [get_factor(name)])
    names = [factor.name for factor in factors]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise AugsenseError(f"factor {duplicated[0]!r} is chosen twice")
    for key in list(config.bounds) + list(config.switches):
        if key not in names:
            raise AugsenseError(f"bounds/switches name factor {key!r}, which the run does not include "
                                f"(factors: {', '.join(names)})")
    chosen = []
    for factor in factors:
        if factor.name in config.bounds:
            factor = factor.with_bounds(**{k: tuple(v) for k, v in config.bounds[factor.name].items()})
        if factor.name in config.switches:
            factor = factor.with_switch()
        chosen.append(factor)
    image_factors = ["partition"] * (config.images_partition is not None) + ["class"] * config.class_factor
    return FactorSpace(chosen, random_order=config.random_order, image_mode=config.image_mode,  # type: ignore[arg-type]
                       image_factors=image_factors)


def design_for(config: SensitivityConfig, space: FactorSpace) -> Design:
    """The run's design: whole pick-freeze groups per block, at most ``batch_size`` evaluations.

    Stimulus export rebuilds a run's rows with this too, so both must come from here.
    """
    group = layouts.group_size(config.estimator, len(space.dims))
    return make_design(config.estimator, space.dims, config.n, seed=config.seed,
                       block_size=max(1, config.batch_size // group))


def run_warnings(config: SensitivityConfig, bundle: ModelBundle, n_images: int) -> list[str]:
    """What the user must know before trusting the numbers: random weights, images never used, small N, few images."""
    from augsense.report.trust import input_warnings

    notices = []
    if bundle.random_weights:
        notices.append(f"the model has random weights ({bundle.weights}): the indices describe an untrained "
                       "network")
    if config.image_mode == "within" and config.n < n_images:
        notices.append(f"n = {config.n} base rows for {n_images} images: within-image mode gives each base row one "
                       f"image, so only {config.n} images (drawn at random) are used; use n >= {n_images}")
    return notices + input_warnings(config.n, n_images)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise AugsenseError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AugsenseError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return device


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA out-of-memory errors and CPU allocation failures."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text
                                                 or "failed to allocate" in text)


def smaller_chunk(chunk: int, error: str, device: torch.device) -> int:
    """Half the forward chunk after an out-of-memory error, or fail with advice when it is 1 image."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if chunk <= 1:
        raise AugsenseError(f"out of memory on {device} even with one image per forward pass ({error}); choose "
                            "fewer or smaller layers, --reduction mean instead of none, or a larger device")
    return chunk // 2


def minmax_stretch(images: torch.Tensor) -> torch.Tensor:
    """The paper's preprocessing: stretch each image's channels to [0, 1]. (n,3,H,W) → same."""
    low = images.amin(dim=(2, 3), keepdim=True)
    high = images.amax(dim=(2, 3), keepdim=True)
    return (images - low) / (high - low).clamp_min(1e-8)


def normalise_into(images: torch.Tensor, out: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                   stretch: bool = False) -> torch.Tensor:
    """Write the model inputs of ``images`` (n, 3, H, W) in [0, 1] into ``out`` (same shape, any layout).

    ``(x − mean) / std`` per channel, after the paper's min-max stretch (:func:`minmax_stretch`) with
    ``stretch``: ``(x − low)·scale + shift`` with one scale and shift per image and channel (from float64),
    in one pass over ``out`` (e.g. a channels-last input buffer) instead of five and a copy (with the stretch,
    ``x − low`` is formed a few images at a time, :func:`~augsense.factors.chunks.row_chunks`).
    The subtraction comes first, as in the stretch, so a flat or low-contrast channel loses no precision.
    Equal to ``normalise(minmax_stretch(images))`` up to float32 rounding.
    """
    n, c = images.shape[:2]
    mean_t = torch.tensor(mean, dtype=torch.float64, device=images.device).view(1, c, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64, device=images.device).view(1, c, 1, 1)
    shift = (-mean_t / std_t).to(images.dtype).expand(n, c, 1, 1)
    if not stretch:
        return torch.addcmul(shift, images, (1.0 / std_t).to(images.dtype).expand(n, c, 1, 1), out=out)
    planes = images.reshape(n, c, -1)  # amin and amax: aminmax(dim=2) is unvectorised on the CPU (8x slower)
    low, high = planes.amin(dim=2).view(n, c, 1, 1), planes.amax(dim=2).view(n, c, 1, 1)
    span = (high.double() - low.double()).clamp_min(1e-8)
    scale = (1.0 / (span * std_t)).to(images.dtype)
    for rows in row_chunks(images):  # x − low of a few images stays in cache; out is written once
        torch.addcmul(shift[rows], images[rows] - low[rows], scale[rows], out=out[rows])
    return out


@dataclass
class SensitivityRun:
    """The outcome of a run: the estimator result and what is needed to read it."""

    config: SensitivityConfig
    result: Any  # augsense.estimators.SensitivityResult
    players: list[str]
    layers: list[str]
    unit_shapes: dict[str, tuple[int, ...]]
    slices: dict[str, slice]
    space: FactorSpace
    design: Design
    images: ImageSet
    bundle: ModelBundle
    clean_accuracy: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    shard: Shard = field(default_factory=Shard)
    complete: bool = True
    out_dir: Path | None = None
    device: str = "cpu"
    warnings: list[str] = field(default_factory=list)
    plan: RunPlan | None = None
    #: each layer's output layout as `augsense layers` names it ("nchw", "nhwc", "tokens 1+14×14", …),
    #: with " + softmax" for a softmax layer
    layouts: dict[str, str] = field(default_factory=dict)

    def dominant_factors(self, quantity: str = "total_order") -> dict[str, list[tuple[str, float]]]:
        """Per layer, the factors ranked by their aggregated share of variance."""
        aggregated = self.result.aggregated
        table = getattr(aggregated, quantity, None) if aggregated is not None else None
        if table is None:
            table = getattr(aggregated, "shapley", None)
        ranking = {}
        for g, layer in enumerate(self.layers):
            values = table[g]
            order = sorted(range(len(values)), key=lambda i: -float(values[i]) if math.isfinite(values[i]) else 0.0)
            ranking[layer] = [(self.players[i], float(values[i])) for i in order]
        return ranking


def layer_layouts(probe: ActivationProbe) -> dict[str, str]:
    """Each probed layer's layout label (see :class:`SensitivityRun`), for run.json."""
    softmax = set(getattr(probe, "softmax_layers", ()))
    layouts = getattr(probe, "layouts", {})
    return {name: (layouts[name].label if name in layouts else "vector") + (" + softmax" if name in softmax else "")
            for name in probe.layers}


def clean_top1(bundle: ModelBundle, images: ImageSet, device: torch.device, batch_size: int,
               transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float | None:
    """Top-1 accuracy of the model on the labelled, unaugmented images (None without labels).

    The labelled images are gathered batch by batch from the whole set (a partially labelled, memory-mapped
    image set is not copied)."""
    labelled = images.labelled_rows()
    if not len(labelled):
        return None
    correct = 0
    batch_size = forward_images(batch_size, device)
    with torch.inference_mode():
        for start in range(0, len(labelled), batch_size):
            index = labelled[start:start + batch_size]
            x = images.batch(index, device)
            if transform is not None:
                x = transform(x)
            logits = bundle.module(bundle.normalise(x))
            correct += int((logits.argmax(1).cpu() == images.labels[index]).sum())
    return correct / len(labelled)


@dataclass
class RunFolderState:
    """What rank 0 found in the run folder before the run, and what the run has written there."""

    previous: str | None = None  # run.json status before this run (None: no run.json)
    started: bool = False  # this run wrote config.toml and run.json "running"


def _on_every_rank(work: Callable[[], Any], shard: Shard) -> Any:
    """Rank 0 does ``work``; an AugsenseError there is raised on every rank (so none waits forever)."""
    outcome: list[Any] = [None, None]
    if shard.rank == 0:
        try:
            outcome = [work(), None]
        except AugsenseError as error:
            outcome = [None, str(error)]
    if shard.distributed:
        import torch.distributed as dist

        dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:
        raise AugsenseError(outcome[1])
    return outcome[0]


def _signal_on_any_rank(stop: StopRequest, shard: Shard) -> int:
    """Collective: the signal that stopped the run on any rank (the largest number), 0 if none did."""
    mine = stop.signum or 0
    if not shard.distributed:
        return mine
    import torch.distributed as dist

    value = torch.tensor([mine], dtype=torch.int32, device=shard.device or torch.device("cpu"))
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item())


def run_sensitivity(config: SensitivityConfig | None = None, *, model: nn.Module | ModelBundle | None = None,
                    images: ImageSet | torch.utils.data.Dataset | None = None, out_dir: str | Path | None = None,
                    resume: bool = False, progress: bool = True, stop_after_blocks: int | None = None,
                    overwrite: bool = False, warn: bool = True) -> SensitivityRun:
    """Run a sensitivity analysis and (with ``out_dir``) write its results.

    With ``out_dir``, rank 0 first checks the folder (a folder, writable), takes its lock
    (:mod:`augsense.io.lock`) for the whole run and refuses a folder holding a finished run or a
    checkpoint unless ``resume`` or ``overwrite``. SIGINT/SIGTERM stop the run at a block boundary
    with a checkpoint and raise :class:`~augsense.interrupts.RunInterrupted` (see
    :mod:`augsense.interrupts`).

    Args:
        config: what to measure (defaults: the demo configuration).
        model: an ``nn.Module`` or ``ModelBundle`` overriding ``config.model``.
        images: an ImageSet or torch Dataset overriding ``config.images``.
        out_dir: run folder for results and checkpoints (None keeps everything in memory).
        resume: continue from the checkpoint in ``out_dir``.
        progress: show a progress bar with ETA on stderr.
        stop_after_blocks: stop early after this many blocks of this process (for tests of resume).
        overwrite: replace the finished run or the checkpoint in ``out_dir`` (the old results stay
            whole until the new set is committed).
        warn: print the run's warnings on stderr (they are in ``run.warnings`` and run.json either way;
            a caller running several sub-runs prints them once).
    Returns:
        A :class:`SensitivityRun`; ``run.result`` holds indices and CIs for every unit.
    """
    from augsense.io.lock import open_run_folder
    from augsense.io.results import mark_run

    config = config or SensitivityConfig()
    shard = current_shard(config.device)
    out = Path(out_dir) if out_dir is not None else None
    held, folder = None, RunFolderState()
    with StopRequest(rank=shard.rank) as stop:
        try:
            if out is not None:
                opened = _on_every_rank(lambda: open_run_folder(out, resume=resume, overwrite=overwrite), shard)
                if shard.rank == 0:
                    held, folder = opened[0], RunFolderState(opened[1])
            return _run_sensitivity(config, model=model, images=images, out=out, resume=resume, progress=progress,
                                    stop_after_blocks=stop_after_blocks, overwrite=overwrite, stop=stop,
                                    folder=folder, warn=warn)
        except BaseException as error:
            if out is not None and shard.rank == 0 and folder.started and not isinstance(error, RunInterrupted):
                mark_run(out, "failed", reason=f"{type(error).__name__}: {error}"[:500])
            elif out is not None and shard.rank == 0 and folder.started and getattr(error, "immediate", False):
                mark_run(out, "interrupted", reason=str(error))
            raise
        finally:
            if held is not None:
                held.release()


def _run_sensitivity(config: SensitivityConfig, *, model: nn.Module | ModelBundle | None,
                     images: ImageSet | torch.utils.data.Dataset | None, out: Path | None, resume: bool, progress: bool,
                     stop_after_blocks: int | None, overwrite: bool, stop: StopRequest,
                     folder: RunFolderState, warn: bool = True) -> SensitivityRun:
    """The run itself (see :func:`run_sensitivity`); the run folder is already checked and locked.

    ``stop`` is the SIGINT/SIGTERM request (true: stop at the next block round), ``folder`` what rank 0
    found in ``out`` and whether this run has marked it "running".
    """
    started, started_unix = time.perf_counter(), time.time()
    shard = current_shard(config.device)
    device = pick_device(config.device) if shard.device is None else shard.device
    bundle = model if isinstance(model, ModelBundle) else load_model(model if model is not None else config.model,
                                                                     weights=config.weights, seed=config.seed,
                                                                     categories=config.categories)
    bundle.module.to(device).eval()
    model_s = time.perf_counter() - started
    broadcast_module(bundle.module, shard)
    if model is not None:
        config = dataclasses.replace(config, model=bundle.name)
    if images is not None and not isinstance(images, str):
        config = dataclasses.replace(config, images="python")
    if isinstance(images, ImageSet):
        image_set = images
    else:
        image_set = images_for(config, bundle, images)
    images_s = time.perf_counter() - started - model_s
    space = build_factor_space(config)
    probe = ActivationProbe(bundle.module, config.layers, reduction=config.reduction, output=config.output,  # type: ignore[arg-type]
                            input_size=bundle.input_size, device=device, layouts=config.layouts,
                            softmax_layers=config.softmax_layers)
    design = design_for(config, space)
    plan = RunPlan.build(config, space=space, design=design, images=image_set, bundle=bundle, probe=probe)
    check_ranks_agree(plan, shard)
    groups = torch.cat([torch.full((s.stop - s.start,), g, dtype=torch.long)
                        for g, s in enumerate(probe.slices.values())]).to(device)
    accumulator = make_accumulator(design, probe.n_units, denominator="paired" if config.image_mode == "within"
                                   else "pooled", groups=groups, device=device,
                                   second_order_intervals=config.second_order_intervals)
    stretch = minmax_stretch if config.preprocessing == "paper" else None
    # seconds of each step (on CUDA the loop's steps count their launch time only); started_unix: the run's start
    # (time.time()), so a caller timing the whole process can tell the imports before it from the run
    timings: dict[str, float] = {"started_unix": started_unix, "model_s": model_s, "images_s": images_s,
                                 "setup_s": time.perf_counter() - started}
    notices = image_set.notices + run_warnings(config, bundle, len(image_set))

    checkpoint = checkpoint_path(out) if out is not None else None
    done = BlockSet()
    if resume:  # before anything is written: a refused resume leaves the killed run's folder as it was
        if checkpoint is None:
            raise AugsenseError("--resume needs the run folder (--out DIR) of the killed run")
        done = resume_run_checkpoint(checkpoint, plan=plan, accumulator=accumulator, shard=shard)
    if shard.rank == 0 and warn:  # once the run is valid: a refused run prints its one error line only
        for line in notices:
            print(f"augsense: warning: {line}", file=sys.stderr)
    if out is not None:  # rank 0, before the forward passes: free space, then config.toml + run.json "running"
        def start() -> None:
            from augsense.io.results import check_free_space, expected_bytes, write_run_start

            assert out is not None and checkpoint is not None
            check_free_space(out, expected_bytes(probe.n_units, len(space.players),
                                                 pairwise=config.estimator in ("sobol2", "shapley-exact")))
            if overwrite:  # the user asked to replace the old run: its checkpoint goes now, its results at commit
                checkpoint.unlink(missing_ok=True)
            if folder.previous != "complete":  # a complete set stays whole until the new one is committed
                write_run_start(SensitivityRun(config=config, result=None, players=list(space.players),
                                               layers=list(config.layers), unit_shapes=dict(probe.unit_shapes),
                                               slices=dict(probe.slices), space=space, design=design,
                                               images=image_set, bundle=bundle, timings=timings, shard=shard,
                                               complete=False, out_dir=out, device=str(device), warnings=notices,
                                               plan=plan, layouts=layer_layouts(probe)), out)
                folder.started = True

        _on_every_rank(start, shard)

    def save(finished: BlockSet) -> None:
        assert checkpoint is not None
        save_run_checkpoint(checkpoint, plan=plan, accumulator=accumulator, done=finished,
                            shard=shard)

    schedule = BlockSchedule(design.n_blocks, shard, done, checkpoint_every=config.checkpoint_every,
                             on_checkpoint=save if checkpoint is not None else None, stop_after=stop_after_blocks,
                             stop_requested=lambda: bool(stop))
    my_blocks, todo = shard.blocks(design.n_blocks), schedule.todo

    top1_started = time.perf_counter()
    accuracy = clean_top1(bundle, image_set, device, config.batch_size, stretch) if shard.rank == 0 else None
    timings["clean_top1_s"] = time.perf_counter() - top1_started
    n_images = image_set.strata() if space.image_factors else len(image_set)
    loop_started = time.perf_counter()
    bar = Progress(total=len(my_blocks) * design.block_size * design.group_size, initial=(len(my_blocks) - len(todo))
                   * design.block_size * design.group_size, unit="img", description="sensitivity",
                   enabled=progress and shard.rank == 0)
    chunk, evaluated = forward_images(config.batch_size, device), 0
    allocator = heap_allocations() if device.type == "cpu" else contextlib.nullcontext()
    feed = ImageFeed(image_set, device)
    per_batch = max(1, config.batch_size // (design.block_size * design.group_size))  # whole blocks per forward

    # the bundle's own normalise, unless it is ModelBundle's (x - mean) / std: that one is fused with the paper's
    # stretch and the write into the channels-last input buffer (normalise_into)
    fused = type(bundle).normalise is ModelBundle.normalise

    def write_inputs(index: torch.Tensor, u: torch.Tensor, out: torch.Tensor) -> None:
        """The model inputs of rows ``u`` (augmented, stretched with the paper's preprocessing, normalised)
        written into ``out``."""
        x = space.apply(feed.batch(index), u)
        if fused:
            normalise_into(x, out, bundle.mean, bundle.std, stretch=stretch is not None)
        else:
            out.copy_(bundle.normalise(stretch(x) if stretch is not None else x))

    buffers: dict[str, torch.Tensor] = {}
    seconds = {"augment": 0.0, "forward": 0.0}  # the loop's augmentation and forward passes

    def reused(name: str, shape: tuple[int, ...], layout: torch.memory_format) -> torch.Tensor:
        """A float32 buffer of ``shape`` (in ``layout``) kept across forward passes: the first rows of the
        largest one asked for. Allocating them afresh per group fragmented the CPU heap (+0.5 GB RSS)."""
        held = buffers.get(name)
        if held is None or held.shape[0] < shape[0] or held.shape[1:] != shape[1:] or \
                not held.is_contiguous(memory_format=layout):
            buffers.pop(name, None)
            held = buffers[name] = torch.empty(shape, device=device, memory_format=layout)
        return held[:shape[0]]

    def group_rows(blocks: list[DesignBlock]) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """The rows of several blocks: their sizes, design points ``u`` (rows, D) and image indices (rows,)."""
        sizes = [b.points.shape[0] * b.points.shape[1] for b in blocks]
        dims = blocks[0].points.shape[2]
        u = to_device(np.concatenate([b.points.reshape(-1, dims) for b in blocks]), device)
        if config.image_mode == "within":
            index = torch.from_numpy(np.concatenate([design.image_of(b.base_rows, n_images).repeat(b.points.shape[1])
                                                     for b in blocks]))
        else:
            index = space.image_index(u, n_images)
        return sizes, u, index

    def model_inputs(u: torch.Tensor, index: torch.Tensor, part: slice, x: torch.Tensor) -> torch.Tensor:
        """The normalised inputs of rows ``part`` written into ``x``, augmented AUGMENT_CHUNK images at a time,
        so the augmentation's temporaries scale with the sub-chunk, not the batch."""
        augmenting = time.perf_counter()
        for low in range(0, part.stop - part.start, AUGMENT_CHUNK):
            sub = slice(part.start + low, min(part.start + low + AUGMENT_CHUNK, part.stop))
            write_inputs(index[sub], u[sub], x[low:low + sub.stop - sub.start])
        seconds["augment"] += time.perf_counter() - augmenting
        return x

    def inputs_buffer(n: int, layout: torch.memory_format) -> torch.Tensor:
        return reused("inputs", (n, 3, feed.images.size, feed.images.size), layout)

    def forward(blocks: list[DesignBlock], layout: torch.memory_format) -> dict[int, tuple[DesignBlock, torch.Tensor]]:
        """One forward pass (in chunks) over several blocks: {block index: (block, (rows, G, m) outputs)}."""
        nonlocal chunk
        sizes, u, index = group_rows(blocks)
        total = sum(sizes)
        outputs = reused("outputs", (total, probe.n_units), torch.contiguous_format)

        def forwarded(inputs: torch.Tensor) -> torch.Tensor:
            forwarding = time.perf_counter()
            reduced = probe(inputs)
            seconds["forward"] += time.perf_counter() - forwarding
            return reduced

        start = 0
        while start < total:  # forward chunks; halve them when the device runs out of memory
            part = slice(start, min(start + chunk, total))
            try:
                outputs[part] = forwarded(model_inputs(u, index, part, inputs_buffer(part.stop - part.start, layout)))
            except RuntimeError as error:
                if not is_out_of_memory(error):
                    raise
                failure = str(error)
            else:
                start, failure = part.stop, ""
            if failure:  # outside the handler, so the failed batch's tensors are already freed
                buffers.pop("inputs", None)  # sized for the failed chunk
                chunk = smaller_chunk(chunk, failure, device)
        pieces = outputs.split(sizes)
        return {b.index: (b, piece.view(b.points.shape[0], b.points.shape[1], probe.n_units))
                for b, piece in zip(blocks, pieces)}

    ready: dict[int, tuple[DesignBlock, torch.Tensor]] = {}
    accumulating = 0.0  # seconds in the accumulator's updates (on CUDA: their launch time only)
    with probe, torch.inference_mode(), allocator, channels_last(bundle.module) as layout:
        for k in schedule:
            if k not in ready:  # forward the blocks of k's group together (a resumed run: the same groups)
                ready = forward([design.block(j) for j in group_of(my_blocks, per_batch, k)], layout)
            block, outputs = ready.pop(k)
            updating = time.perf_counter()
            accumulator.update(block, outputs)
            accumulating += time.perf_counter() - updating
            rows, group_size = outputs.shape[:2]
            evaluated += rows * group_size
            bar.update(rows * group_size)
            del outputs
        ready.clear()
        buffers.clear()
    bar.close()
    complete = schedule.complete
    signum = _signal_on_any_rank(stop, shard) if not complete else 0
    if signum:  # SIGINT/SIGTERM on some rank: every rank stopped at one round and a checkpoint was written
        finished = len(union_blocks(schedule.done, shard))
        if out is not None and shard.rank == 0 and folder.started:
            from augsense.io.results import mark_run

            mark_run(out, "interrupted", reason=f"{signal.Signals(signum).name} after {finished} of {design.n_blocks} "
                     "blocks; resume with --resume", blocks_done=finished, blocks=design.n_blocks)
        raise RunInterrupted(signum, done=finished, total=design.n_blocks, checkpoint=checkpoint is not None,
                             rank=shard.rank)
    timings["loop_s"] = time.perf_counter() - loop_started
    timings["accumulate_s"] = accumulating
    timings["augment_s"], timings["forward_s"] = seconds["augment"], seconds["forward"]
    timings["images_per_s"] = evaluated / timings["loop_s"] if timings["loop_s"] > 0 else float("nan")
    accumulator = gather_states(accumulator, shard)
    result = accumulator.compute(confidence=config.confidence) if accumulator is not None else None
    timings["total_s"] = time.perf_counter() - started
    run = SensitivityRun(config, result, list(space.players), list(config.layers), dict(probe.unit_shapes),
                         dict(probe.slices), space, design, image_set, bundle, accuracy, timings, shard, complete, out,
                         str(device), notices, plan, layer_layouts(probe))
    if out is not None and shard.rank == 0 and result is not None:
        from augsense.io.results import write_run

        write_run(run, out)
        if complete and checkpoint is not None:
            remove_checkpoint(checkpoint)
    return run

