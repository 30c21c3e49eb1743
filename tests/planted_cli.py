"""``augsense`` on the planted network and images, for tests that need a real process.

Usage: python tests/planted_cli.py [--forward-delay SECONDS] ARGS... — the augsense command line
with the model and image loaders swapped for tests/planted.py's, each forward pass slowed down by
the delay (time to signal or kill a run). Environment, for tests that must act mid-run:
GATE/PAUSE_AT (forward PAUSE_AT writes GATE.reached and waits while GATE exists; forward 1 is the
clean top-1 pass, forward k + 1 is block k's), START (write START.ready, then wait until START is
gone before running, to line ranks up).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import augsense.analyses.sensitivity as sensitivity  # noqa: E402
from planted import planted_bundle, planted_images  # noqa: E402

GATE, PAUSE_AT = os.environ.get("GATE"), int(os.environ.get("PAUSE_AT", "0"))
calls = [0]
delay = 0.0


def hook(module, args) -> None:
    calls[0] += 1
    if delay:
        time.sleep(delay)
    if GATE and calls[0] == PAUSE_AT:
        open(GATE + ".reached", "w").close()
        while os.path.exists(GATE):
            time.sleep(0.01)


def load_model(name, weights=None, **kwargs):
    bundle = planted_bundle()
    bundle.module.register_forward_pre_hook(hook)
    return bundle


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and argv[0].startswith("--forward-delay="):
        delay = float(argv.pop(0).split("=", 1)[1])
    start = os.environ.get("START")
    if start:
        open(start + ".ready", "w").close()
        while os.path.exists(start):
            time.sleep(0.01)
    sensitivity.load_model = load_model
    sensitivity.images_for = lambda *args, **kwargs: planted_images()
    from augsense.cli import main

    sys.exit(main(argv))
