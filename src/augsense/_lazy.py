"""Modules imported on first use, for the run path.

``augsense run`` reaches the modules that write tables (``io.results``, ``io.provenance``) at its start,
for run.json, but makes its first table after the loop. pandas costs 84 MB resident and 0.2 s to
import; loaded before the loop it adds to the loop's peak RSS (the forward's), loaded after it the
memory comes from the heap the loop freed.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name``, imported at the first attribute read (then as the module itself)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        module: ModuleType = importlib.import_module(self._name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


pandas: Any = LazyModule("pandas")
