"""Progress with ETA on stderr for long loops (tqdm), silent when disabled or not a terminal log."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


class Progress:
    """A counter with rate and ETA. ``update(n)`` after each unit of work; ``close()`` at the end."""

    def __init__(self, total: int, *, initial: int = 0, unit: str = "it", description: str = "",
                 enabled: bool = True) -> None:
        self._bar = tqdm(total=total, initial=initial, unit=unit, desc=description, disable=not enabled,
                         file=sys.stderr, dynamic_ncols=True, mininterval=1.0, smoothing=0.1) if enabled else None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
