"""SIGINT/SIGTERM during a run: stop at a block boundary, checkpoint, then exit with a resume hint.

The first signal only asks the run to stop: the current block finishes, all ranks agree at the
same round (:class:`augsense.parallel.BlockSchedule`), a checkpoint is written, and
:class:`RunInterrupted` is raised. A second signal more than :data:`REPEAT_S` seconds later aborts
at once (also raising :class:`RunInterrupted`, with ``immediate`` set; the last periodic
checkpoint stays). Signals within :data:`REPEAT_S` of the first count as the same request: torchrun
delivers its SIGTERM to a worker twice within milliseconds, and a terminal's Ctrl-C reaches the
workers both directly and through torchrun. Exit codes follow the shell convention 128 + signal
number: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Seconds after the first signal during which further signals repeat it instead of aborting.
REPEAT_S = 2.0


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM (a KeyboardInterrupt, so ``except Exception`` lets it pass).

    Attributes:
        signum: the signal number; ``exit_code`` is 128 + signum.
        done, total: design blocks finished (by all ranks) and in the design; None when unknown.
        checkpoint: whether a checkpoint with ``done`` blocks was written.
        immediate: True after a second signal (aborted without a new checkpoint).
        rank: the process's rank (only rank 0 should print).
    """

    def __init__(self, signum: int, *, done: int | None = None, total: int | None = None, checkpoint: bool = False,
                 immediate: bool = False, rank: int = 0) -> None:
        self.signum, self.done, self.total = signum, done, total
        self.checkpoint, self.immediate, self.rank = checkpoint, immediate, rank
        super().__init__(self.describe())

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def describe(self) -> str:
        if self.immediate:
            return f"{self.name} received twice: aborted at once; the last periodic checkpoint (if any) is kept"
        blocks = f" after {self.done} of {self.total} blocks" if self.done is not None else ""
        return f"interrupted ({self.name}){blocks}; " + ("checkpoint written" if self.checkpoint
                                                         else "no run folder, nothing saved")


@dataclass
class StopRequest:
    """SIGINT/SIGTERM handlers for the life of a run (only in the main thread; a no-op elsewhere).

    ``signum`` is the first signal received (None if none); ``bool(request)`` says whether to stop.
    """

    rank: int = 0
    signum: int | None = None
    received: float = 0.0  # time.monotonic() of the first signal
    _previous: dict[int, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "no signal"

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            if time.monotonic() - self.received < REPEAT_S:
                return  # the same request delivered twice (torchrun, a terminal's Ctrl-C)
            raise RunInterrupted(signum, immediate=True, rank=self.rank)
        self.signum, self.received = signum, time.monotonic()
        if self.rank == 0:
            print(f"\naugsense: {signal.Signals(signum).name} received: finishing the current block and writing a "
                  "checkpoint (send it again to abort at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
