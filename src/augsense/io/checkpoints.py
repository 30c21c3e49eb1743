"""Checkpoints: accumulator state and the finished blocks, written atomically with a checksum.

A checkpoint is a torch file plus a SHA-256 of its bytes. A file whose checksum does not match,
or that belongs to another design, is refused with a message, never silently used.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

from augsense.errors import AugsenseError


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename) with ``path.sha256``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    for target, payload in ((path, data), (path.with_suffix(path.suffix + ".sha256"), _digest(data).encode())):
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)


def load_checkpoint(path: str | Path, *, fingerprint: str | None = None) -> dict[str, Any]:
    """Read a checkpoint, verifying its checksum and (optionally) its design fingerprint."""
    path = Path(path)
    sums = path.with_suffix(path.suffix + ".sha256")
    if not path.is_file():
        raise AugsenseError(f"no checkpoint at {str(path)!r}; run without --resume to start afresh")
    data = path.read_bytes()
    expected = sums.read_text().strip() if sums.is_file() else ""
    if _digest(data) != expected:
        raise AugsenseError(f"checkpoint {str(path)!r} is corrupt (checksum mismatch); delete it and the run folder's "
                            "partial results to start afresh")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as error:
        raise AugsenseError(f"checkpoint {str(path)!r} cannot be read: {error}") from error
    if fingerprint is not None and state.get("fingerprint") != fingerprint:
        raise AugsenseError(f"checkpoint {str(path)!r} belongs to another design (config, seed or factors changed); "
                            "resume with the same config or start afresh in a new folder")
    return state
