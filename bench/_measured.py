"""Run a command in a process of its own and measure it: wall and CPU seconds, and its own peak RSS.

Linux carries the peak RSS of the process that starts a program into the program's ``ru_maxrss``: at
``exec`` the kernel keeps the larger of the old and the new address space's high-water mark (the old one
is the parent's when Python starts children with vfork). A child started by a bench that has itself grown
(a model, a forward pass measured in-process) therefore reports the bench's peak, not its own: a child
measured at 2.5 GB after the bench's own batch-512 forward peaked at 1.5 GB under ``/usr/bin/time``.

:func:`measured` starts every command from a small fresh launcher process and reports the launcher's
``getrusage(RUSAGE_CHILDREN)``: the command's own peak, on top of at most the launcher's ~10 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass

LAUNCHER = r"""
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True)
wall = time.perf_counter() - start
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stdout.buffer.write(done.stdout)
sys.stderr.buffer.write(done.stderr)
print("\n" + json.dumps({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_kib": usage.ru_maxrss,
                         "returncode": done.returncode}))
"""


@dataclass
class Measured:
    """A finished command: wall and CPU (user + sys) seconds, its own peak RSS, exit status, stdout, stderr."""

    wall: float
    cpu: float
    peak_kib: int
    returncode: int
    stdout: str
    stderr: str

    @property
    def peak_gb(self) -> float:
        return self.peak_kib * 1024 / 1e9


def measured(argv: list[str]) -> Measured:
    """Run ``argv`` from a fresh launcher; its peak RSS is its own, whatever this process has grown to."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the launcher failed ({done.returncode}): {done.stderr[-2000:]}")
    output, _, last = done.stdout.rstrip("\n").rpartition("\n")
    report = json.loads(last)
    return Measured(report["wall"], report["cpu"], report["peak_kib"], report["returncode"],
                    output.removesuffix("\n"), done.stderr)
