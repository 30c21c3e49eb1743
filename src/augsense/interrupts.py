"""SIGINT/SIGTERM during a run: stop at a block boundary, checkpoint, then exit with a resume hint.

The first signal only asks the run to stop: the current block finishes, all ranks agree at the
same round (:class:`augsense.parallel.BlockSchedule`), a checkpoint is written, and
:class:`RunInterrupted` is raised. A second signal aborts at once (also raising
:class:`RunInterrupted`, with ``immediate`` set; the last periodic checkpoint stays). Exit codes
follow the shell convention 128 + signal number: 130 for SIGINT, 143 for SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


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
    _previous: dict[int, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "no signal"

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise RunInterrupted(signum, immediate=True, rank=self.rank)
        self.signum = signum
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
