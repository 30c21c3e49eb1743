"""The examples in docs/factors.md run as written (in a fresh interpreter, so their registrations stay there)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "factors.md"


def test_factor_docs_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 3
    script = "\n".join(f"def example_{i}():\n" + "".join(f"    {line}\n" for line in block.splitlines())
                       + f"example_{i}()\n" for i, block in enumerate(blocks))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
