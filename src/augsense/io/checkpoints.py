"""Checkpoints: merged accumulator state and the finished blocks, one file, atomic, checksummed.

File layout: a header line ``AUGSENSE-CHECKPOINT 1 sha256=<hex>`` followed by a ``torch.save``
payload whose SHA-256 is in the header. It is written to a temporary file, fsynced and renamed
over the old one, so a process killed at any instant leaves either the previous checkpoint or the
new one, never half of one. A file whose checksum does not match, that is not a checkpoint, or
that belongs to another design is refused with a message, never silently used.

In a distributed run the checkpoint is collective: every rank's accumulator is merged on rank 0
(:func:`augsense.parallel.merged_state`), which writes one file. Resuming reads it on rank 0 and
sends the finished blocks to every rank, so a run may be resumed with a different world size.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist

from augsense.errors import AugsenseError
from augsense.parallel import Shard, merged_state, union_blocks

MAGIC = b"AUGSENSE-CHECKPOINT 1 sha256="
#: The checkpoint file inside a run folder.
CHECKPOINT_NAME = "checkpoint.pt"


def checkpoint_path(run_dir: str | Path) -> Path:
    """Where a run folder keeps its checkpoint."""
    return Path(run_dir) / CHECKPOINT_NAME


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint and any temporary file a killed writer left beside it."""
    path = Path(path)
    path.unlink(missing_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        stale.unlink(missing_ok=True)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename), checksum in the header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(MAGIC + _digest(payload).encode() + b"\n")
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(directory)
    except OSError:
        pass
    finally:
        os.close(directory)


def load_checkpoint(path: str | Path, *, fingerprint: str | None = None) -> dict[str, Any]:
    """Read a checkpoint, verifying its checksum and (optionally) its design fingerprint."""
    path = Path(path)
    if not path.is_file():
        raise AugsenseError(f"no checkpoint at {str(path)!r}; run without --resume to start afresh")
    data = path.read_bytes()
    header, _, payload = data.partition(b"\n")
    if not header.startswith(MAGIC):
        raise AugsenseError(f"{str(path)!r} is not an augsense checkpoint (bad header); delete it and start afresh "
                            "without --resume")
    if _digest(payload) != header[len(MAGIC):].decode("ascii", "replace").strip():
        raise AugsenseError(f"checkpoint {str(path)!r} is corrupt (checksum mismatch: the file was changed or cut "
                            "short); delete it and run without --resume to start afresh")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    except Exception as error:
        raise AugsenseError(f"checkpoint {str(path)!r} cannot be read: {error}") from error
    if not isinstance(state, dict):
        raise AugsenseError(f"checkpoint {str(path)!r} does not hold a run state")
    if fingerprint is not None and state.get("fingerprint") != fingerprint:
        raise AugsenseError(f"checkpoint {str(path)!r} belongs to another design (config, seed or factors changed); "
                            "resume with the same config or start afresh in a new folder")
    return state


def save_run_checkpoint(path: str | Path, *, fingerprint: str, accumulator: Any, done: Iterable[int],
                        shard: Shard = Shard()) -> None:
    """Collective: merge all ranks' accumulators and finished blocks; rank 0 writes one checkpoint."""
    blocks = union_blocks(done, shard)
    state = merged_state(accumulator, shard)
    if shard.rank == 0:
        assert state is not None
        save_checkpoint(path, {"fingerprint": fingerprint, "done": blocks, "accumulator": state,
                               "world_size": shard.world_size})


def _read_run_checkpoint(path: Path, fingerprint: str) -> dict[str, Any]:
    state = load_checkpoint(path, fingerprint=fingerprint)
    try:
        done = sorted(int(k) for k in state["done"])
        seen = np.flatnonzero(np.asarray(state["accumulator"]["blocks_seen"], dtype=bool)).tolist()
    except (KeyError, TypeError, ValueError) as error:
        raise AugsenseError(f"checkpoint {str(path)!r} lacks its finished blocks or accumulator ({error}); "
                            "start afresh without --resume") from error
    if done != seen:
        raise AugsenseError(f"checkpoint {str(path)!r} is inconsistent: its finished blocks do not match its "
                            "accumulator; start afresh without --resume")
    return state


def resume_run_checkpoint(path: str | Path, *, fingerprint: str, accumulator: Any,
                          shard: Shard = Shard()) -> set[int]:
    """Collective: load the checkpoint into rank 0's accumulator; every rank gets the finished blocks.

    Only rank 0 reads the file (no shared file system needed across nodes); an error there is
    raised on every rank, so no rank waits forever.
    """
    outcome: list[Any] = [None]
    if shard.rank == 0:
        try:
            state = _read_run_checkpoint(Path(path), fingerprint)
            accumulator.load_state_dict(state["accumulator"])
            outcome = [sorted(int(k) for k in state["done"])]
        except AugsenseError as error:
            outcome = [str(error)]
    if shard.distributed:
        dist.broadcast_object_list(outcome, src=0)
    if isinstance(outcome[0], str):
        raise AugsenseError(outcome[0])
    return set(outcome[0])
