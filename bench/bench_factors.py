"""Time the paper's factor sets on one batch (64×3×224×224, per-sample parameters) against a ResNet18 forward.

Prints medians over repeats of: the ResNet18 forward pass (weights=None), each factor alone (all samples
on), paper-set1 and paper-set2 through FactorSpace.apply with a random design (switches as drawn), with
and without the order factor, and the ratios augmentation / forward, each paired within one repeat.
Large CPU tensors come from glibc's reusable heap, as in the run loop (``heap_allocations``): otherwise
fresh pages' faults dominate the cheaper factors. Repeats on CUDA when available.

    .venv/bin/python bench/bench_factors.py [--batch 64] [--size 224] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torchvision

from augsense.allocator import heap_allocations
from augsense.factors import FactorSpace, factor_names, get_factor, preset


def timed_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def run(device: torch.device, batch: int, size: int, repeats: int) -> None:
    """Each repeat times the forward pass and every augmentation back to back, so each ratio is paired
    within one repeat (robust to the load of a shared machine); medians over repeats are printed."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g).to(device)
    model = torchvision.models.resnet18(weights=None).eval().to(device)
    jobs: dict[str, Callable[[], object]] = {}
    for name in factor_names():
        factor = get_factor(name)
        params, _ = factor.parameters_from_unit(torch.rand(batch, factor.n_coords, generator=g, dtype=torch.float64))
        jobs[f"  {name} (all on)"] = (lambda f=factor, p=params.to(device): f.apply(images, p))
    for set_name in ["paper-set1", "paper-set2"]:
        for random_order in (False, True):
            space = FactorSpace(preset(set_name), random_order=random_order)
            u = torch.rand(batch, space.n_coords, generator=g, dtype=torch.float64).to(device)
            jobs[f"{set_name}{' +order' if random_order else ''}"] = (lambda s=space, u=u: s.apply(images, u))
    forward_ms: list[float] = []
    job_ms: dict[str, list[float]] = {label: [] for label in jobs}
    with torch.inference_mode(), heap_allocations():
        model(images)  # warm-up
        for job in jobs.values():
            job()
        for _ in range(repeats):
            forward = timed_ms(lambda: model(images), device)
            forward_ms.append(forward)
            for label, job in jobs.items():
                job_ms[label].append(timed_ms(job, device))
    forward = statistics.median(forward_ms)
    print(f"\n== device {device}, batch {batch}×3×{size}×{size}, CPU threads {torch.get_num_threads()}, "
          f"median of {repeats} paired repeats, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} ==")
    print(f"{'resnet18 forward':<34}{forward:9.1f} ms")
    for label, times in job_ms.items():
        ratio = statistics.median(t / f for t, f in zip(times, forward_ms))
        target = "  (target <= 25%)" if not label.startswith(" ") else ""
        print(f"{label:<34}{statistics.median(times):9.1f} ms  {ratio:6.1%} of forward{target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    args = parser.parse_args()
    devices = []
    if args.device in ("cpu", "all"):
        devices.append(torch.device("cpu"))
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    for device in devices:
        run(device, args.batch, args.size, args.repeats)


if __name__ == "__main__":
    main()
