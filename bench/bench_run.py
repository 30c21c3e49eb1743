"""End-to-end throughput: augmented images per second through the whole run (augmentation, hooks,
estimators) versus the bare forward pass of the same model, same batch size and device, in one run.

    .venv/bin/python bench/bench_run.py [--models resnet18,alexnet,efficientnet-lite0] [--device cpu]

Prints, per model, the median bare-forward rate, the run's rate and their ratio (target ≥ 0.75 for
ResNet18 on CPU). The bare forward runs under the same allocator setting as the run
(``heap_allocations`` on the CPU); its rate with glibc's default allocator is printed beside. Random weights for torchvision models (no download); real ones for the default.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from augsense.allocator import heap_allocations
from augsense.analyses.sensitivity import run_sensitivity
from augsense.config import SensitivityConfig
from augsense.io.images import load_images
from augsense.io.models import load_model

LAYERS = {"resnet18": ["layer1", "layer2", "layer3", "layer4", "fc"],
          "alexnet": ["features.2", "features.5", "features.9", "classifier.6"],
          "efficientnet-lite0": ["_bn0", "_blocks.2", "_blocks.7", "_blocks.15", "_fc"]}


def bare_forward_rate(bundle, images, batch_size: int, device: torch.device, repeats: int) -> float:
    """Median images/s of model(normalise(x)) on a fixed batch (already decoded)."""
    index = torch.arange(batch_size) % len(images)
    x = bundle.normalise(images.batch(index, device))
    times = []
    with torch.inference_mode():
        bundle.module(x)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            bundle.module(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,alexnet,efficientnet-lite0")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--n", type=int, default=16, help="base rows of the design (evaluations = n × (d + 2))")
    parser.add_argument("--factors", default="paper-set2")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, batch {args.batch_size}, factors {args.factors}, torch threads {torch.get_num_threads()}")
    print(f"{'model':<20} {'bare img/s':>11} {'run img/s':>10} {'ratio':>7}   (bare forward with the default allocator)")
    for name in args.models.split(","):
        bundle = load_model(name, weights="random" if name != "efficientnet-lite0" else None)
        bundle.module.to(device)
        images = load_images("bundled", bundle.input_size, bundle.resize_size)
        config = SensitivityConfig(model=name, layers=LAYERS[name], factors=[args.factors], n=args.n,
                                   batch_size=args.batch_size, device=str(device), report=False, checkpoint_every=0)
        run = run_sensitivity(config, model=bundle, images=images, progress=False)
        batch = run.design.block_size * run.design.group_size  # the run's forward size: whole pick-freeze groups
        with heap_allocations():  # the run's own allocator setting, so the comparison is like for like
            bare = bare_forward_rate(bundle, images, batch, device, args.repeats)
        plain = bare_forward_rate(bundle, images, batch, device, args.repeats)
        # the run's own rate, measured over its loop; the bare rate again right after, to bracket drift
        with heap_allocations():
            bare_after = bare_forward_rate(bundle, images, batch, device, args.repeats)
        reference = statistics.median([bare, bare_after])
        ours = run.timings["images_per_s"]
        print(f"{name:<20} {reference:>11.1f} {ours:>10.1f} {ours / reference:>7.2f}   ({plain:.1f} img/s; forward batch {batch})")


if __name__ == "__main__":
    main()
