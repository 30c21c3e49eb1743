"""Decoding an image folder serially vs in threads, and what a second rank's memory does with the cache.

    .venv/bin/python bench/bench_image_cache.py [--images 2000] [--side 400] [--repeats 5]

Writes a synthetic folder of JPEGs (side × side+8 px, 10 class folders) under a temporary folder,
then prints, interleaving the settings in each repeat so that a shared machine's load hits them
alike: the median seconds to decode it at 224 px with 1 thread and with ``decode_workers`` threads,
the cache's build and reuse times, the time the run plan would spend hashing the pixels (stored in
the cache index instead), and a second process's memory (/proc/self/status) after mapping the cache,
after reading every pixel, and after decoding the same set again without the cache.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_image_cache import second_rank, write_set  # noqa: E402

from augsense.analyses.plan import pixels_digest  # noqa: E402
from augsense.io.images import decode_workers, load_folder  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="augsense-bench-cache-"))
    try:
        write_set(root, args.images, side=args.side, classes=10, fmt="jpg")
        workers = decode_workers()
        settings = sorted({1, workers, 2 * workers})
        times: dict[int, list[float]] = {w: [] for w in settings}
        for _ in range(args.repeats):
            for w in settings:
                started = time.perf_counter()
                images = load_folder(root, 224, cache="off", workers=w)
                times[w].append(time.perf_counter() - started)
        serial = statistics.median(times[1])
        print(f"{args.images} JPEGs {args.side}x{args.side + 8} -> 224 px ({images.pixels.numel() / 2**20:.0f} MiB), "
              f"{workers} cores, medians of {args.repeats}:")
        for w in settings:
            median = statistics.median(times[w])
            print(f"  decode_workers {w:>2}: {median:6.2f} s  ({args.images / median:7.0f} images/s, "
                  f"{serial / median:.2f}x serial)")
        started = time.perf_counter()
        cached = load_folder(root, 224, cache="auto")
        built = time.perf_counter() - started
        started = time.perf_counter()
        cached = load_folder(root, 224, cache="auto")
        reused = time.perf_counter() - started
        started = time.perf_counter()
        pixels_digest(cached.pixels)
        hashing = time.perf_counter() - started
        print(f"cache: build {built:.2f} s (decode + write + hash), reuse {reused:.3f} s; hashing the pixels "
              f"{hashing:.2f} s (read from the index instead)")
        memory = second_rank(root, 224)

        def growth(key: str, stage: str, since: str = "before") -> float:
            return (memory[stage][key] - memory[since][key]) / 2**20

        print(f"second process, set of {memory['bytes'] / 2**20:.0f} MiB: after mapping the cache VmRSS "
              f"+{growth('VmRSS', 'loaded'):.1f} MiB; after reading every pixel RssAnon +{growth('RssAnon', 'touched'):.1f}"
              f" MiB (private), RssFile +{growth('RssFile', 'touched'):.1f} MiB (shared page cache); the same set "
              f"decoded without the cache: RssAnon +{growth('RssAnon', 'private', 'touched'):.1f} MiB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
