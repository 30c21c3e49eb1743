"""The reference code's own test workload as one whole `augsense run` process, against the bare forward floor.

    .venv/bin/python bench/bench_reference_workload.py [--n 64] [--batch-size 512] [--repeats 2] [--runs 3] [--device cpu]

Workload (the paper's code, its test configuration): AlexNet (random weights: no download), ``features.5``
per element (reduction none, 192×13×13 units) and the softmax output, factors paper-set1 with the order
factor and the image as a factor (``--random-order --image-mode joint``), ``--preprocessing paper``,
second-order Sobol' (sobol2), N = 64 (N × (2d + 2) = 1024 evaluations for d = 7 players), batch 512.

The run is timed as a subprocess from its start to its exit: imports, model and image loading, the clean
top-1 pass, the loop and writing the results all count. The floor is the bare forward of the same model
on the same number of images, in the faster of the NCHW and channels-last layouts and of two pass sizes (the
batch, and on the CPU the run's own pass of at most ``CPU_FORWARD_IMAGES`` images), measured in this process
before and after the run (median), under the run's allocator setting.
Prints the ratio (wall time of the run / floor time), the run's own timings and the peak RSS of the
run process, and of the process floor below (each its own: started from a fresh launcher, see
``_measured.py``); the run is repeated ``--runs`` times (the median wall time is used, the peak RSS
printed as a range).

The floor leaves out the interpreter's start and ``import torch``, which the run process pays, so the
script also times, as processes of their own (median of three): ``python -c pass``, ``import torch`` and
``import torch, torchvision``; and the *process floor*: one process that imports torch and torchvision,
builds AlexNet and forwards the same number of random images in the floor's faster layout and pass
size (the run's work minus augsense's). Ratios are printed raw, with the ``import torch`` process
subtracted from the run, and against the process floor; each also in CPU seconds (user + sys of the
process), which a shared machine's load disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _measured import Measured, measured

from augsense.allocator import heap_allocations
from augsense.analyses.sensitivity import forward_images
from augsense.io.images import load_images
from augsense.io.models import load_model

PLAYERS = 7  # five paper-set1 factors, order, image


def run_command(out: Path, args: argparse.Namespace) -> list[str]:
    augsense = str(Path(sys.executable).with_name("augsense"))
    return [augsense, "run", "--model", "alexnet", "--weights", "random", "--layers", "features.5,output",
            "--reduction", args.reduction, "--output", "softmax", "--factors", "paper-set1", "--random-order",
            "--image-mode", "joint", "--preprocessing", "paper", "--estimator", "sobol2", "--n", str(args.n),
            "--batch-size", str(args.batch_size), "--device", args.device, "--no-report", "--checkpoint-every", "0",
            "--quiet", "--overwrite", "--out", str(out)]


def forward_seconds(module: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one bare forward of the batch ``x`` (after a warm-up)."""
    times = []
    with torch.inference_mode():
        module(x)
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            if x.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


PROCESS_FLOOR = """
import ctypes, sys, time
import torch, torchvision
ctypes.CDLL(None).mallopt(-4, 0); ctypes.CDLL(None).mallopt(-1, 1 << 30)  # as augsense.allocator.heap_allocations
evaluations, batch, layout = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
model = torchvision.models.alexnet(weights=None).eval()
fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
model = model.to(memory_format=fmt)
with torch.inference_mode():
    for start in range(0, evaluations, batch):
        x = torch.rand(min(batch, evaluations - start), 3, 224, 224).contiguous(memory_format=fmt)
        model(x)
"""


def checked(argv: list[str]) -> Measured:
    """``argv`` run and measured alone (:func:`_measured.measured`); exits with its error when it fails."""
    done = measured(argv)
    if done.returncode != 0:
        sys.exit(f"{argv[:3]} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done


def median_process(argv: list[str], repeats: int = 3) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``repeats`` runs of a short process."""
    runs = [checked(argv) for _ in range(repeats)]
    return statistics.median(r.wall for r in runs), statistics.median(r.cpu for r in runs)


def floor_batches(args: argparse.Namespace) -> list[int]:
    """Forward batch sizes the floor is measured at: ``--batch-size``, and on the CPU also the run's own forward
    pass (at most ``CPU_FORWARD_IMAGES`` images), so the floor is the faster of the two."""
    return sorted({args.batch_size, forward_images(args.batch_size, torch.device(args.device))}, reverse=True)


def floors(args: argparse.Namespace, evaluations: int) -> dict[tuple[str, int], float]:
    """Seconds of the bare forward over ``evaluations`` images, per (layout, images per forward pass)."""
    device = torch.device(args.device)
    bundle = load_model("alexnet", weights="random", seed=0)
    module = bundle.module.to(device).eval()
    images = load_images("bundled", bundle.input_size, bundle.resize_size)
    out = {}
    with heap_allocations():
        for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
            module = module.to(memory_format=fmt)
            for batch in floor_batches(args):
                x = bundle.normalise(images.batch(torch.arange(batch) % len(images), device))
                out[layout, batch] = forward_seconds(module, x.contiguous(memory_format=fmt), args.repeats) \
                    * evaluations / batch
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per floor measurement")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=3, help="runs of the workload (median wall time; peak RSS range)")
    parser.add_argument("--keep", help="run folder to keep (default: a temporary folder)")
    parser.add_argument("--reduction", default="none", help="none (the workload) or mean: isolates the loop from "
                        "the per-element accumulator and writing")
    args = parser.parse_args()
    evaluations = args.n * (2 * PLAYERS + 2)
    load = os.getloadavg()[0]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, "
          f"load average {load:.2f}; {evaluations} evaluations, batch {args.batch_size}")
    before = floors(args, evaluations)
    python = sys.executable
    starts = {label: median_process([python, "-c", code]) for label, code in
              (("python -c pass", "pass"), ("import torch", "import torch"),
               ("import torch, torchvision", "import torch, torchvision"))}
    fastest = min(before, key=before.get)  # (layout, batch) of the faster floor
    layout, floor_batch = fastest
    floor_argv = [python, "-c", PROCESS_FLOOR, str(evaluations), str(floor_batch), layout]
    process_floor = [checked(floor_argv)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.keep) if args.keep else Path(tmp) / "run"
        command = run_command(out, args)
        print("run:", " ".join(command[:1] + [c for c in command[1:]]).replace(str(Path(sys.executable).parent) + "/", ""))
        runs = []  # (Measured, run.json, seconds from launch to the run's own start), one per --runs
        for _ in range(args.runs):
            launched = time.time()
            done = checked(command)
            info = json.loads((out / "run.json").read_text())
            runs.append((done, info, info.get("timings", {}).get("started_unix", float("nan")) - launched))
        sizes = {p.name: p.stat().st_size / 1e6 for p in sorted(out.rglob("*")) if p.is_file()}
    # the run of median wall time stands for all (its timings are printed); peak RSS is given as a range
    run, info, before_run = sorted(runs, key=lambda r: r[0].wall)[len(runs) // 2]
    wall, cpu, peak = run.wall, run.cpu, run.peak_gb
    peaks = sorted(r[0].peak_gb for r in runs)
    process_floor.append(checked(floor_argv))
    after = floors(args, evaluations)
    medians = {key: statistics.median([before[key], after[key]]) for key in before}
    nchw = min(seconds for (lay, _), seconds in medians.items() if lay == "nchw")
    last = min(seconds for (lay, _), seconds in medians.items() if lay == "channels_last")
    floor = min(nchw, last)
    timings = info.get("timings", {})
    nan = float("nan")
    t = {key: timings.get(key, nan) for key in ("model_s", "images_s", "setup_s", "clean_top1_s", "loop_s",
                                                  "augment_s", "forward_s", "accumulate_s", "total_s")}
    after_run = wall - before_run - t["total_s"]  # final indices are in total_s; this is writing + exit
    print("floor (bare forward of the same images; faster layout and pass size counts): " + ", ".join(
        f"{lay.replace('nchw', 'NCHW').replace('_', '-')} batch {batch} {seconds:.2f} s ({evaluations / seconds:.0f} "
        f"img/s) [before/after the run: {before[lay, batch]:.2f}/{after[lay, batch]:.2f}]"
        for (lay, batch), seconds in medians.items()))
    print("process starts (median of 3, wall / CPU s): " + ", ".join(f"{label} {w:.2f}/{c:.2f}"
                                                                    for label, (w, c) in starts.items()))
    floor_wall = statistics.median(p.wall for p in process_floor)
    floor_cpu = statistics.median(p.cpu for p in process_floor)
    print(f"process floor (import torch, torchvision; AlexNet; {evaluations} forwards {layout}, batch {floor_batch}): "
          f"{floor_wall:.2f} s wall, {floor_cpu:.2f} s CPU, peak RSS {max(p.peak_gb for p in process_floor):.2f} GB  "
          "[before/after the run: " + "/".join(f"{p.wall:.2f}" for p in process_floor) + " s]")
    print(f"run (median of {len(runs)}: " + " / ".join(f"{r[0].wall:.2f}" for r in runs) + f" s): {wall:.2f} s wall, "
          f"{cpu:.2f} s CPU ({evaluations / wall:.0f} img/s)")
    print(f"  start + imports {before_run:.2f} s | model {t['model_s']:.2f} s, images {t['images_s']:.2f} s, setup "
          f"{t['setup_s']:.2f} s in all | clean top-1 {t['clean_top1_s']:.2f} s | loop {t['loop_s']:.2f} s = "
          f"augment {t['augment_s']:.2f} + forward {t['forward_s']:.2f} + accumulate {t['accumulate_s']:.2f} + "
          f"other {t['loop_s'] - t['augment_s'] - t['forward_s'] - t['accumulate_s']:.2f} | indices "
          f"{t['total_s'] - t['setup_s'] - t['clean_top1_s'] - t['loop_s']:.2f} s | write + exit {after_run:.2f} s")
    print("files (MB): " + ", ".join(f"{name} {size:.1f}" for name, size in sizes.items()))
    torch_wall, torch_cpu = starts["import torch"]
    print(f"ratio to the faster floor: {wall / floor:.2f}x  (to NCHW {wall / nchw:.2f}x, to channels-last "
          f"{wall / last:.2f}x); without the import-torch process {(wall - torch_wall) / floor:.2f}x; in-process "
          f"{t['total_s'] / floor:.2f}x; loop alone {t['loop_s'] / floor:.2f}x (forward alone "
          f"{t['forward_s'] / floor:.2f}x)")
    print(f"ratio to the process floor: {wall / floor_wall:.2f}x wall, {cpu / floor_cpu:.2f}x CPU "
          f"(CPU, without the import-torch process: {(cpu - torch_cpu) / (floor_cpu - torch_cpu):.2f}x)")
    print(f"peak RSS of the run process: {peak:.2f} GB in the median run; {peaks[0]:.2f}-{peaks[-1]:.2f} GB over "
          f"{len(runs)} runs  (load average now {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
