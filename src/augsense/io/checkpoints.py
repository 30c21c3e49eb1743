"""Checkpoints: merged accumulator state and the finished blocks, one file, atomic, checksummed, code-free.

File layout (format 2)::

    AUGSENSE-CHECKPOINT 2 sha256=<hex of everything after this line>\\n
    <8-byte little-endian length L><L bytes of UTF-8 JSON header><raw tensor bytes>

The JSON header holds the state as a tree of dicts, lists, strings, numbers, booleans and null, in
which every tensor or array is replaced by a reference ``{"__tensor__": i}`` / ``{"__ndarray__":
i}`` to entry ``i`` of its ``"buffers"`` list (dtype from a fixed whitelist, shape, byte offset,
byte length); the bytes are little-endian, C-ordered and start at multiples of 8 bytes, so a read
file's buffers become the tensors in place. Reading parses JSON and maps bytes as arrays, nothing
else: a checkpoint cannot carry code, so a crafted file (e.g. a pickle payload, as
the format-1 files of earlier versions were ``torch.save`` pickles) is refused without executing
anything. Format-1 files are refused for that reason.

The SHA-256 detects corruption (a flipped bit, a file cut short), not tampering: whoever writes the
file writes the checksum too. Safety against crafted files comes from the code-free format.

Writes go to a temporary file, are fsynced and renamed over the old one, so a process killed at
any instant leaves either the previous checkpoint or the new one, never half of one. A failed
write (disk full, read-only folder) raises :class:`AugsenseError` with one line and keeps the
previous checkpoint.

In a distributed run the checkpoint is collective: every rank's accumulator is merged on rank 0
(:func:`augsense.parallel.merged_state`), which writes one file. Resuming reads it on rank 0 and
sends the finished blocks to every rank, so a run may be resumed with a different world size.
The checkpoint stores the run plan (:mod:`augsense.analyses.plan`); a resume whose plan differs
is refused naming the differing keys. The accumulator's state names the layout of its sums
(``"layout"``; absent = 1): Sobol sums moved to layout 2 (the denominator's sums once per output),
so a format-2 file written before that holds layout-1 Sobol sums and is refused by name
("cannot be resumed: state has sums in layout 1 of an earlier augsense"); layout 3 adds the
layer-level second-order sums of sobol2 runs, whose layout-2 checkpoints are refused the same way
(other layout-2 Sobol states hold the same sums and resume); the file format itself is unchanged,
and Shapley checkpoints of either version resume.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import torch.distributed as dist

from augsense.blockset import BlockSet
from augsense.errors import AugsenseError
from augsense.io.lock import pid_alive
from augsense.parallel import Shard, merged_state, union_blocks

FORMAT = 2
MAGIC = b"AUGSENSE-CHECKPOINT "
#: The checkpoint file inside a run folder.
CHECKPOINT_NAME = "checkpoint.pt"

#: dtypes a checkpoint may hold (name → little-endian numpy dtype); anything else is refused.
_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in
           ("float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint8", "bool")}
_TORCH_DTYPES = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16",
                 torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8",
                 torch.uint8: "uint8", torch.bool: "bool"}
_TAGS = ("__tensor__", "__ndarray__", "__tuple__")


def checkpoint_path(run_dir: str | Path) -> Path:
    """Where a run folder keeps its checkpoint."""
    return Path(run_dir) / CHECKPOINT_NAME


def remove_checkpoint(path: str | Path) -> None:
    """Delete a checkpoint, this process's temporary file beside it (``.<name>.tmp<pid>``) and those
    of writers that died mid-write (a checkpoint-sized file each).

    A temporary file named with the PID of a live process here may belong to another writer and is
    left alone.
    """
    path = Path(path)
    path.unlink(missing_ok=True)
    path.with_name(f".{path.name}.tmp{os.getpid()}").unlink(missing_ok=True)
    prefix = f".{path.name}.tmp"
    try:
        leftovers = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for leftover in leftovers:
        pid = leftover.name[len(prefix):]
        if pid.isascii() and pid.isdecimal() and not pid_alive(int(pid)):
            try:
                if leftover.is_file() and not leftover.is_symlink():
                    leftover.unlink()
            except OSError:
                pass



def _digest(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def describe_os_error(error: OSError) -> str:
    """``No space left on device (ENOSPC)``: the reason of an OSError in a few words, for one-line messages."""
    name = errno.errorcode.get(error.errno or 0)
    reason = error.strerror or type(error).__name__
    return f"{reason} ({name})" if name else reason


# -- encoding -------------------------------------------------------------------------------------
_ALIGN = 8  # buffers start at multiples of 8 bytes in the file, so they are read in place, uncopied


def _encode(value: Any, buffers: list[dict[str, Any]], chunks: list[np.ndarray], offset: list[int]) -> Any:
    """The JSON tree of ``value``; tensors and arrays become references into ``buffers``.

    ``chunks`` collects each buffer's bytes as a flat uint8 view (no copy when already contiguous
    and little-endian), preceded by zero padding up to the next multiple of 8 bytes.
    """
    if isinstance(value, (torch.Tensor, np.ndarray)):
        is_tensor = isinstance(value, torch.Tensor)
        if is_tensor:
            if value.dtype not in _TORCH_DTYPES:
                raise TypeError(f"a checkpoint cannot hold a {value.dtype} tensor")
            dtype = _TORCH_DTYPES[value.dtype]
            array = value.detach().cpu().contiguous().numpy()
        else:
            dtype = value.dtype.name
            if dtype not in _DTYPES:
                raise TypeError(f"a checkpoint cannot hold a {dtype} array")
            array = value
        data = np.ascontiguousarray(array, dtype=_DTYPES[dtype]).reshape(-1).view(np.uint8)
        pad = -offset[0] % _ALIGN
        if pad:
            chunks.append(np.zeros(pad, dtype=np.uint8))
            offset[0] += pad
        buffers.append({"dtype": dtype, "shape": list(array.shape), "offset": offset[0], "nbytes": int(data.size)})
        chunks.append(data)
        offset[0] += int(data.size)
        return {"__tensor__" if is_tensor else "__ndarray__": len(buffers) - 1}
    if isinstance(value, dict):
        if any(not isinstance(k, str) for k in value) or any(k in _TAGS for k in value):
            raise TypeError(f"checkpoint dict keys must be strings other than {_TAGS}: {list(value)[:5]}")
        return {k: _encode(v, buffers, chunks, offset) for k, v in value.items()}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, buffers, chunks, offset) for v in value]}
    if isinstance(value, list):
        return [_encode(v, buffers, chunks, offset) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a checkpoint cannot hold a {type(value).__name__}")


def _encode_parts(state: dict[str, Any], lead: int = 0) -> tuple[bytes, list[np.ndarray]]:
    """The payload as (8-byte length + JSON header, buffer chunks); the header is padded with spaces so
    that the buffers start at a multiple of 8 bytes when ``lead`` bytes precede the payload in the file."""
    buffers: list[dict[str, Any]] = []
    chunks: list[np.ndarray] = []
    tree = _encode(state, buffers, chunks, [0])
    header = json.dumps({"state": tree, "buffers": buffers}, separators=(",", ":"), allow_nan=True).encode()
    header += b" " * (-(lead + 8 + len(header)) % _ALIGN)  # JSON allows trailing whitespace
    return struct.pack("<Q", len(header)) + header, chunks


def encode_state(state: dict[str, Any]) -> bytes:
    """A state tree as the checkpoint payload: length, JSON header, raw little-endian buffers."""
    prefix, chunks = _encode_parts(state)
    return prefix + b"".join(chunk.tobytes() for chunk in chunks)


class _Malformed(ValueError):
    pass


def _decode(node: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(node, dict):
        if len(node) == 1 and next(iter(node)) in _TAGS:
            tag, ref = next(iter(node.items()))
            if tag == "__tuple__":
                if not isinstance(ref, list):
                    raise _Malformed("bad tuple")
                return tuple(_decode(v, arrays) for v in ref)
            if not isinstance(ref, int) or isinstance(ref, bool) or not 0 <= ref < len(arrays):
                raise _Malformed(f"bad buffer reference {ref!r}")
            return torch.from_numpy(arrays[ref]) if tag == "__tensor__" else arrays[ref]
        return {k: _decode(v, arrays) for k, v in node.items()}
    if isinstance(node, list):
        return [_decode(v, arrays) for v in node]
    return node


def decode_state(payload: bytes | bytearray | memoryview) -> dict[str, Any]:
    """Inverse of :func:`encode_state`; raises ValueError on anything malformed (never runs code).

    Arrays are views of ``payload`` when it is writable (a bytearray) and aligned, else copies; a
    buffer referenced twice gives one array.
    """
    payload = memoryview(payload)
    if len(payload) < 8:
        raise _Malformed("too short")
    (length,) = struct.unpack("<Q", payload[:8])
    if length > len(payload) - 8:
        raise _Malformed("header longer than the file")
    try:
        header = json.loads(bytes(payload[8:8 + length]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise _Malformed(f"header is not JSON ({error})") from None
    if not isinstance(header, dict) or not isinstance(header.get("buffers"), list) or "state" not in header:
        raise _Malformed("header lacks state or buffers")
    data = payload[8 + length:]
    arrays = []
    for entry in header["buffers"]:
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            offset, nbytes = int(entry["offset"]), int(entry["nbytes"])
        except (KeyError, TypeError, ValueError) as error:
            raise _Malformed(f"bad buffer entry ({error!r})") from None
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if min(shape, default=0) < 0 or offset < 0 or nbytes != count * dtype.itemsize or offset + nbytes > len(data):
            raise _Malformed("buffer entry outside the file or of the wrong size")
        array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
        array = array.astype(dtype.newbyteorder("="), copy=False)
        if not (array.flags.writeable and array.flags.aligned):
            array = array.copy()
        arrays.append(array)
    state = _decode(header["state"], arrays)
    if not isinstance(state, dict):
        raise _Malformed("the state is not a table")
    return state


# -- files ----------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename), checksum in the header.

    ``state``: nested dicts (string keys), lists, tuples, numbers, strings, None, torch tensors and
    numpy arrays of the whitelisted dtypes. A failed write raises AugsenseError (one line) and
    leaves the previous checkpoint in place.
    """
    path = Path(path)
    lead = len(MAGIC) + len(f"{FORMAT} sha256=") + 64 + 1  # the header line
    prefix, chunks = _encode_parts(state, lead)
    digest = hashlib.sha256(prefix)
    for chunk in chunks:
        digest.update(chunk)
    line = MAGIC + f"{FORMAT} sha256={digest.hexdigest()}\n".encode()
    assert len(line) == lead
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as handle:
                handle.write(line)
                handle.write(prefix)
                for chunk in chunks:
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as error:
        raise AugsenseError(f"cannot write the checkpoint {str(path)!r}: {describe_os_error(error)}; the previous "
                            "checkpoint (if any) is kept — free space or fix the folder's permissions, then "
                            "continue with --resume") from None
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
    """Read a checkpoint, verifying its checksum and (optionally) its ``"fingerprint"`` entry.

    Nothing in the file is executed: it is parsed as JSON plus raw arrays (see the module docstring).
    """
    path = Path(path)
    if not path.exists():
        raise AugsenseError(f"no checkpoint at {str(path)!r}; run without --resume to start afresh")
    if not path.is_file():
        raise AugsenseError(f"the checkpoint {str(path)!r} is not a file; remove it and run without --resume")
    try:
        with open(path, "rb") as handle:  # into a bytearray: the arrays are views of it, not copies
            data = bytearray(os.fstat(handle.fileno()).st_size)
            del data[handle.readinto(data):]  # in place (a file that shrank meanwhile fails the checksum)
    except OSError as error:
        raise AugsenseError(f"cannot read the checkpoint {str(path)!r}: {describe_os_error(error)}; fix its "
                            "permissions, or run without --resume in a new --out to start afresh") from None
    newline = data.find(b"\n")
    header = bytes(data[:newline]) if newline >= 0 else bytes(data[:200])
    payload = memoryview(data)[newline + 1:] if newline >= 0 else memoryview(b"")
    fields = header[len(MAGIC):].decode("ascii", "replace").split(" ", 1) if header.startswith(MAGIC) else []
    if len(fields) != 2 or not fields[1].startswith("sha256="):
        raise AugsenseError(f"{str(path)!r} is not an augsense checkpoint (bad header); delete it and start afresh "
                            "without --resume")
    if fields[0] != str(FORMAT):
        raise AugsenseError(f"checkpoint {str(path)!r} has format {fields[0]!r}; this version reads only format "
                            f"{FORMAT} (format 1 was a pickle, which is never loaded because a pickle can run "
                            "code); delete it and run without --resume to start afresh")
    if _digest(payload) != fields[1][len("sha256="):].strip():
        raise AugsenseError(f"checkpoint {str(path)!r} is corrupt (checksum mismatch: the file was changed or cut "
                            "short); delete it and run without --resume to start afresh")
    try:
        state = decode_state(payload)
    except (ValueError, struct.error) as error:
        raise AugsenseError(f"checkpoint {str(path)!r} is malformed ({error}); delete it and run without --resume "
                            "to start afresh") from None
    if fingerprint is not None and state.get("fingerprint") != fingerprint:
        raise AugsenseError(f"checkpoint {str(path)!r} belongs to another design (config, seed or factors changed); "
                            "resume with the same config or start afresh in a new folder")
    return state


# -- collective run checkpoints --------------------------------------------------------------------
def _raise_everywhere(message: str | None, shard: Shard) -> None:
    """Collective: rank 0's error message (or None) raised on every rank, so no rank waits forever."""
    box: list[Any] = [message]
    if shard.distributed:
        dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise AugsenseError(box[0])


def save_run_checkpoint(path: str | Path, *, plan: Any, accumulator: Any, done: Iterable[int],
                        shard: Shard = Shard()) -> None:
    """Collective: merge all ranks' accumulators and finished blocks; rank 0 writes one checkpoint.

    ``plan``: the run's :class:`augsense.analyses.plan.RunPlan`, stored (as JSON) beside the sums.
    A failed write is raised on every rank.
    """
    blocks = union_blocks(done, shard)
    state = merged_state(accumulator, shard)
    message = None
    if shard.rank == 0:
        assert state is not None
        try:
            save_checkpoint(path, {"fingerprint": plan.fingerprint, "plan": plan.to_dict(), "done": blocks.ranges,
                                   "accumulator": state, "world_size": shard.world_size})
        except AugsenseError as error:
            message = str(error)
    _raise_everywhere(message, shard)


def finished_blocks(state: dict[str, Any]) -> BlockSet:
    """The finished blocks of a run checkpoint's state: its ``"done"`` entry, a (k, 2) array of ranges [start, stop)."""
    return BlockSet(state["done"])


def _read_run_checkpoint(path: Path, plan: Any) -> dict[str, Any]:
    state = load_checkpoint(path)
    if state.get("fingerprint") != plan.fingerprint:
        raise AugsenseError(plan.refusal(state.get("plan")))
    try:
        done = finished_blocks(state)
        seen = BlockSet.from_mask(state["accumulator"]["blocks_seen"])
    except (KeyError, TypeError, ValueError) as error:
        raise AugsenseError(f"checkpoint {str(path)!r} lacks its finished blocks or accumulator ({error}); "
                            "start afresh without --resume") from error
    if done != seen:
        raise AugsenseError(f"checkpoint {str(path)!r} is inconsistent: its finished blocks do not match its "
                            "accumulator; start afresh without --resume")
    return state


def resume_run_checkpoint(path: str | Path, *, plan: Any, accumulator: Any, shard: Shard = Shard()) -> BlockSet:
    """Collective: load the checkpoint into rank 0's accumulator; every rank gets the finished blocks.

    The checkpoint's plan must equal ``plan`` (else one line naming the differing keys). Only rank
    0 reads the file (no shared file system needed across nodes); an error there is raised on every
    rank, so no rank waits forever.
    """
    outcome: list[Any] = [None]
    if shard.rank == 0:
        try:
            state = _read_run_checkpoint(Path(path), plan)
            try:
                accumulator.load_state_dict(state["accumulator"])
            except AugsenseError as error:  # e.g. sums in the layout of an earlier version
                raise AugsenseError(f"checkpoint {str(path)!r} cannot be resumed: {error}") from None
            except (KeyError, IndexError, TypeError, ValueError, AttributeError, RuntimeError) as error:
                raise AugsenseError(f"checkpoint {str(path)!r} holds sums that do not fit this run ({error!r}); "
                                    "start afresh without --resume") from None
            outcome = [finished_blocks(state).ranges]
        except AugsenseError as error:
            outcome = [str(error)]
    if shard.distributed:
        dist.broadcast_object_list(outcome, src=0)
    if isinstance(outcome[0], str):
        raise AugsenseError(outcome[0])
    return BlockSet(outcome[0])
