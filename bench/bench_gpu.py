"""GPU check in one script (≤ 8 minutes on one GPU): the CUDA tests, then run throughput against the bare forward.

    .venv/bin/python bench/bench_gpu.py [--batch-size 512] [--seconds 25] [--skip-tests]

1. Runs the CUDA tests (tests/test_cuda.py and the factors' CUDA-vs-CPU tests) with pytest.
2. For AlexNet, VGG11, ResNet18 (random weights: no download) and EfficientNet-Lite0 (embedded weights):
   the bare forward rate at the run's forward batch (the faster of NCHW and channels-last, synchronised), and a
   sensitivity run on the GPU: paper-set1 with the order and image players (joint mode, ``--preprocessing
   paper``), Sobol' (S1 + ST), every unit of the paper's checkpoints (reduction none). N is picked from a
   short pilot run so that the measured run lasts about ``--seconds``. Prints images/s of the run's loop and
   its ratio to the bare forward (run time per image / floor time per image: 1.00 is the floor).
3. The projected wall time of the paper's AlexNet set-1 Sobol' run: 2.36 M evaluations (N = 2**18 base
   rows × 9 members) at the measured AlexNet rate, eight checkpoints per element (≈ 205 k outputs).

Without CUDA it prints why and exits 0 (nothing to measure). ``--device cpu --pilot-n 4 --min-n 4 --skip-tests``
smoke-tests the script itself on a CPU.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: the checkpoints measured per model (every unit: reduction none); AlexNet's are the paper's eight
LAYERS = {
    "alexnet": "features.2,features.5,features.7,features.9,avgpool,classifier.2,classifier.5,output",
    "vgg11": "features.2,features.5,features.10,features.15,features.20,classifier.2,classifier.5,output",
    "resnet18": "maxpool,layer1,layer2,layer3,layer4,avgpool,output",
    "efficientnet-lite0": "_bn0,_blocks.2,_blocks.7,_blocks.15,_fc",
}
PAPER_EVALUATIONS = 2**18 * 9  # AlexNet, set 1: 5 factors + order + image, Sobol' (d + 2 members): 2.36 M
BUDGET_S = 8 * 60


def run_tests(timeout: int) -> bool:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py",
               "tests/test_factors.py::test_cuda_matches_cpu",
               "tests/test_factors_reference.py::test_reference_variants_on_cuda_match_cpu"]
    print("$", " ".join(command[1:]), flush=True)
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"CUDA tests: timed out after {timeout} s")
        return False
    tail = (done.stdout + done.stderr).strip().splitlines()
    print("\n".join(tail[-15:]))
    return done.returncode == 0


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_rate(bundle, images, batch: int, device: torch.device, repeats: int = 10) -> tuple[float, float]:
    """Images/s of model(normalise(x)) at ``batch`` in NCHW and channels-last (median of synchronised repeats)."""
    index = torch.arange(batch) % len(images)
    x = bundle.normalise(images.batch(index, device))
    rates = []
    with torch.inference_mode():
        for layout in (torch.contiguous_format, torch.channels_last):
            module = bundle.module.to(memory_format=layout)
            xx = x.contiguous(memory_format=layout)
            for _ in range(3):
                module(xx)
            sync(device)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                module(xx)
                sync(device)
                times.append(time.perf_counter() - start)
            rates.append(batch / statistics.median(times))
    bundle.module.to(memory_format=torch.contiguous_format)
    return rates[0], rates[1]


def run_rate(name: str, bundle, images, n: int, batch: int, device: torch.device) -> dict[str, float]:
    from augsense.analyses.sensitivity import run_sensitivity
    from augsense.config import SensitivityConfig

    config = SensitivityConfig(model=name, layers=LAYERS[name].split(","), reduction="none", output="softmax",
                               factors=["paper-set1"], random_order=True, image_mode="joint",
                               preprocessing="paper", estimator="sobol", n=n, batch_size=batch, device=str(device),
                               report=False, checkpoint_every=0.0)
    sync(device)
    start = time.perf_counter()
    run = run_sensitivity(config, model=bundle, images=images, progress=False)
    sync(device)
    wall = time.perf_counter() - start
    evaluations = run.design.n_evaluations
    block = run.design.block_size * run.design.group_size
    forward = max(1, batch // block) * block  # whole blocks per forward pass (the run loop's batch)
    return {"n": n, "evaluations": evaluations, "wall_s": wall, "loop_s": run.timings["loop_s"], "forward": forward,
            "loop_rate": run.timings["images_per_s"], "setup_s": run.timings["setup_s"],
            "outputs": sum(math.prod(s) for s in run.unit_shapes.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seconds", type=float, default=25.0, help="target length of each measured run")
    parser.add_argument("--models", default=",".join(LAYERS))
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--pilot-n", type=int, default=64, help="N of the pilot run that estimates the rate")
    parser.add_argument("--min-n", type=int, default=64)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_gpu: no CUDA device here (torch.cuda.is_available() is False): nothing measured; "
              "the CPU figures of bench/bench_reference_workload.py stand")
        return
    started = time.perf_counter()
    device = torch.device(args.device)
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}, torch {torch.__version__}, batch {args.batch_size}, "
          f"CPU load average {os.getloadavg()[0]:.2f}", flush=True)
    tests_ok = True if args.skip_tests else run_tests(timeout=180)
    from augsense.io.images import load_images
    from augsense.io.models import load_model

    print(f"\n{'model':<20} {'outputs':>9} {'batch':>6} {'bare NCHW':>10} {'bare CL':>9} {'run img/s':>10} "
          f"{'ratio':>6} {'N':>7} {'wall s':>7}", flush=True)
    rates: dict[str, dict[str, float]] = {}
    for name in args.models.split(","):
        if time.perf_counter() - started > BUDGET_S - 90:
            print(f"{name:<20} skipped: the 8-minute budget is nearly spent")
            continue
        bundle = load_model(name, weights="random" if name != "efficientnet-lite0" else None)
        bundle.module.to(device).eval()
        images = load_images("bundled", bundle.input_size, bundle.resize_size)
        pilot = run_rate(name, bundle, images, args.pilot_n, args.batch_size, device)  # warm-up and rate estimate
        per_eval = pilot["loop_s"] / pilot["evaluations"]
        target = max(args.min_n, args.seconds / max(per_eval, 1e-9) / 9)
        n = 1 << int(math.log2(target))
        measured = run_rate(name, bundle, images, n, args.batch_size, device)
        nchw, last = bare_rate(bundle, images, int(measured["forward"]), device)  # at the run's forward batch
        floor = max(nchw, last)
        rates[name] = measured
        print(f"{name:<20} {measured['outputs']:>9} {int(measured['forward']):>6} {nchw:>10.0f} {last:>9.0f} {measured['loop_rate']:>10.0f} "
              f"{floor / measured['loop_rate']:>5.2f}x {n:>7} {measured['wall_s']:>7.1f}", flush=True)
        del bundle
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "alexnet" in rates:
        a = rates["alexnet"]
        projected = PAPER_EVALUATIONS / a["loop_rate"] + a["setup_s"]
        print(f"\nprojected wall time of the paper's AlexNet set-1 Sobol' run ({PAPER_EVALUATIONS / 1e6:.2f} M "
              f"evaluations, {a['outputs']} outputs per element): {projected / 60:.1f} min at {a['loop_rate']:.0f} img/s")
    print(f"\nCUDA tests {'passed' if tests_ok else 'FAILED'}; total {time.perf_counter() - started:.0f} s")
    sys.exit(0 if tests_ok else 1)


if __name__ == "__main__":
    main()
