"""Throughput of one run split over 1 and 2 processes on the CPU (gloo), as under torchrun.

Each process gets one thread, so the comparison is of processes, not of thread pools. The model
is a torchvision CNN with random weights (rank 0's weights are broadcast to the others) on random
224×224 images, three factors, Sobol' design; both runs compute the same blocks. Prints wall
time of the measured loop (slowest rank), images/s and the speed-up; repeats are interleaved so a
change in machine load hits both alike, and medians are reported. On a machine with fewer free
cores than processes the speed-up cannot exceed the free cores.

    .venv/bin/python bench/bench_scaling.py [--model mobilenet_v3_small] [--n 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
from pathlib import Path

import torch
import torch.multiprocessing as mp

LAYERS = {"mobilenet_v3_small": ["features.6", "classifier"], "resnet18": ["layer2", "fc"],
          "shufflenet_v2_x0_5": ["stage3", "fc"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker(rank: int, world: int, port: int, model: str, n: int, result: str) -> None:
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from augsense.analyses.sensitivity import run_sensitivity
    from augsense.config import SensitivityConfig
    from augsense.io.images import ImageSet
    from augsense.io.models import load_model

    # different random weights per rank: the run must broadcast rank 0's
    bundle = load_model(model, weights="random", seed=rank)
    pixels = torch.randint(0, 256, (16, 3, bundle.input_size, bundle.input_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    config = SensitivityConfig(model=model, layers=LAYERS[model], factors=["brightness", "saturation", "hflip"],
                               n=n, batch_size=20, device="cpu", checkpoint_every=0, report=False)
    run = run_sensitivity(config, model=bundle, images=ImageSet(pixels, None, [f"random:{i}" for i in range(16)]),
                          progress=False)
    loop = torch.tensor([run.timings["loop_s"]], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(loop, op=dist.ReduceOp.MAX)
        dist.destroy_process_group()
    if rank == 0:
        Path(result).write_text(json.dumps({"loop_s": float(loop), "images": run.design.n_evaluations,
                                            "total_order_mean": float(abs(run.result.total_order).mean())}))


def measure(world: int, model: str, n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        result = str(Path(folder) / "result.json")
        mp.start_processes(worker, nprocs=world, start_method="fork", join=True,
                           args=(world, free_port(), model, n, result))
        return json.loads(Path(result).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet_v3_small", choices=sorted(LAYERS))
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.model}, N={args.n}, 3 factors, 1 thread per process, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    rates: dict[int, list[float]] = {1: [], 2: []}
    answers: dict[int, float] = {}
    for repeat in range(args.repeats):
        for world in (1, 2):
            row = measure(world, args.model, args.n)
            rates[world].append(row["images"] / row["loop_s"])
            answers[world] = row["total_order_mean"]
            print(f"repeat {repeat}: {world} process(es): {row['images']} images in {row['loop_s']:.2f} s "
                  f"= {rates[world][-1]:.1f} images/s")
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"median: 1 process {one:.1f} images/s, 2 processes {two:.1f} images/s, speed-up {two / one:.2f}x")
    print(f"same answer on 1 and 2 processes (mean |ST|): {answers[1]:.12g} vs {answers[2]:.12g}")


if __name__ == "__main__":
    main()
