"""bench/_measured.py: a measured command's peak RSS is its own, not that of the process that started it.

Linux carries the starting process's peak RSS into a child at exec, so a bench that has grown (an in-process
forward pass) and reads its child's ``ru_maxrss`` directly reports its own peak instead of the child's.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from _measured import measured  # noqa: E402

MIB = 1024 * 1024
ALLOCATE = "x = bytearray({mib} * 1024 * 1024)\nfor i in range(0, len(x), 4096): x[i] = 1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the carried-over peak is Linux's")
def test_a_child_reports_its_own_peak_after_this_process_has_grown():
    grown = bytearray(400 * MIB)
    for i in range(0, len(grown), 4096):
        grown[i] = 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss > 400 * 1024  # KiB
    direct = subprocess.Popen([sys.executable, "-c", "pass"])
    _, _, usage = os.wait4(direct.pid, 0)
    assert usage.ru_maxrss > 400 * 1024  # the fault measured() avoids: this process's peak, carried over
    small = measured([sys.executable, "-c", "pass"])
    big = measured([sys.executable, "-c", ALLOCATE.format(mib=200)])
    del grown
    assert small.returncode == big.returncode == 0
    assert small.peak_kib < 100 * 1024 < 200 * 1024 < big.peak_kib < 350 * 1024
    assert big.wall > 0 and big.cpu > 0


def test_the_output_and_the_exit_status_come_back():
    done = measured([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"])
    assert (done.returncode, done.stdout, done.stderr.strip()) == (3, "out", "err")
