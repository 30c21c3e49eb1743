"""Guarding a run folder: checks before any computing, and the lock that lets one run at a time write it.

:func:`preflight` (stdlib only, so the command line refuses within a fraction of a second) checks
``--out`` is a writable folder, that no live run holds it and that it holds no finished run or
checkpoint that this run would overwrite (unless ``--resume`` / ``--overwrite``).

``DIR/augsense.lock`` is held for the whole run (under torchrun by rank 0 only). It is an
``fcntl.flock`` on that file, which the kernel drops when the holder dies, plus a JSON record of
the holder (host, PID, start time, command) so that a refusal can say who holds it:

- another live run on this host holds the flock → refused, naming its host and PID;
- the record names a process on this host that is dead (killed, crashed, or a file system that
  does not support flock) → a stale lock, taken over with a notice;
- the record names another host and the flock is free → that host's run may still be alive (many
  shared file systems do not pass flocks between hosts), so it is refused with advice: delete the
  file if that run is gone.

On release the record is emptied and the file removed. A file system without flock falls back
to the record alone.

Every command that writes into a folder holds its lock while it writes (:func:`holding`): ``run``
and ``demo`` for the whole run, ``mask``, ``single-class``, ``maps``, ``paper``, ``report``,
``segments``, ``contrast``, ``responses`` and ``stimuli`` for theirs, so a second writer is refused
with one line naming the holder. Within one process the lock is reentrant: :func:`acquire` of a
folder this process already holds returns a handle that releases nothing (``augsense paper`` holds
the run folder while its steps write into it).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from augsense.errors import AugsenseError

#: The lock file inside a run folder.
LOCK_NAME = "augsense.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]


def host_name() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists on this host (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # a zombie (killed, not yet reaped by its parent) holds nothing any more
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _printable(value: Any, limit: int = 300) -> str:
    """``value`` as one line of printable text (a crafted lock record may hold newlines or terminal escapes)."""
    return "".join(c if c.isprintable() else "?" for c in str(value)[:limit])


def describe(holder: dict[str, Any]) -> str:
    """'PID 123 on host h (since 2026-01-01 10:00:00 UTC: augsense run …)', always one printable line."""
    since = holder.get("started")
    try:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, (int, float)) else "?"
    except (OverflowError, OSError, ValueError):
        when = "?"
    command = holder.get("command")
    return (f"PID {_printable(holder.get('pid', '?'), 20)} on host {_printable(holder.get('host', '?'), 100)} "
            f"(since {when}" + (f": {_printable(command)}" if command else "") + ")")


def _read_record(fd: int) -> dict[str, Any] | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    if not data.strip():
        return None
    try:
        record = json.loads(data)
    except ValueError:
        return {"host": "?", "pid": "?", "damaged": True}
    return record if isinstance(record, dict) else {"host": "?", "pid": "?", "damaged": True}


#: The folders whose lock this process holds: real path → the owning RunLock (see :func:`acquire`).
_HELD: dict[str, "RunLock"] = {}
_HELD_GUARD = threading.Lock()


def _key(folder: str | Path) -> str:
    return os.path.realpath(folder)


@dataclass
class RunLock:
    """A held run-folder lock; release it with :meth:`release` or use it as a context manager.

    ``fd`` is -1 for a nested handle (the folder was already held by this process): its release is a no-op.
    """

    path: Path
    fd: int
    record: dict[str, Any]
    notice: str | None = None

    @property
    def nested(self) -> bool:
        return self.fd < 0

    def release(self) -> None:
        """Drop the lock: remove the file (if it is still ours), then the flock."""
        if self.fd < 0:
            return
        with _HELD_GUARD:
            if _HELD.get(_key(self.path.parent)) is self:
                del _HELD[_key(self.path.parent)]
        try:
            current = os.stat(self.path)
            if current.st_ino == os.fstat(self.fd).st_ino:
                os.ftruncate(self.fd, 0)
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock(fd: int) -> bool | None:
    """Try to take the flock without waiting: True got it, False held elsewhere, None unsupported."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


ADVICE = "wait for that run to finish or choose another --out"


def acquire(folder: str | Path, *, command: str | None = None, advice: str = ADVICE) -> RunLock:
    """Take the lock of run folder ``folder`` (which must exist) or raise :class:`AugsenseError`.

    Args:
        folder: the run folder.
        command: what to show other runs about this one (default: this process's command line).
        advice: the end of the refusal: what the user can do.
    Returns:
        The held :class:`RunLock`; ``notice`` says when a stale lock was taken over. A folder this
        process already holds gives a nested handle (``fd`` -1) whose release does nothing.
    """
    with _HELD_GUARD:
        owner = _HELD.get(_key(folder))
    if owner is not None and owner.fd >= 0:
        return RunLock(owner.path, -1, owner.record)
    held = _acquire(folder, command=command, advice=advice)
    with _HELD_GUARD:
        _HELD[_key(folder)] = held
    return held


def _acquire(folder: str | Path, *, command: str | None, advice: str) -> RunLock:
    path = Path(folder) / LOCK_NAME
    me = {"host": host_name(), "pid": os.getpid(), "started": time.time(),
          "command": command if command is not None else " ".join(["augsense", *sys.argv[1:]])[:300]}
    for _ in range(20):  # retried only when the file is replaced under us
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise AugsenseError(f"cannot create the lock file {str(path)!r}: {error.strerror or error}") from None
        try:
            got = _flock(fd)
            holder = _read_record(fd)
            if got is False:
                for _ in range(8):  # the winner truncates the file before writing its record: read it again briefly
                    if holder is not None and not holder.get("damaged"):
                        break
                    time.sleep(0.025)
                    holder = _read_record(fd)
                raise AugsenseError(f"run folder {str(path.parent)!r} is in use by "
                                    f"{describe(holder or {'host': '?', 'pid': '?'})}; {advice}")
            try:  # the file we locked may have been removed by its releasing holder meanwhile
                if os.stat(path).st_ino != os.fstat(fd).st_ino:
                    os.close(fd)
                    continue
            except FileNotFoundError:
                os.close(fd)
                continue
            notice = None
            if holder is not None and holder.get("pid") != me["pid"]:
                same_host = holder.get("host") == me["host"]
                pid = holder.get("pid")
                dead = same_host and isinstance(pid, int) and not pid_alive(pid)
                if got is None and same_host and not dead:
                    raise AugsenseError(f"run folder {str(path.parent)!r} is in use by {describe(holder)}; {advice}")
                if not same_host and not holder.get("damaged"):
                    raise AugsenseError(f"run folder {str(path.parent)!r} is locked by {describe(holder)}, another "
                                        "host, which this one cannot check; if that run is no longer running, delete "
                                        f"{str(path)!r} and start again")
                notice = (f"took over the stale lock of {describe(holder)}, which is no longer running"
                          if not holder.get("damaged") else f"replaced an unreadable lock file {str(path)!r}")
            try:
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                record = json.dumps(me).encode()
                if os.write(fd, record) != len(record):
                    raise OSError(errno.ENOSPC, "the lock record was written in part")
                os.fsync(fd)
            except OSError as error:  # disk full …: no half-written lock file stays behind
                try:
                    if os.stat(path).st_ino == os.fstat(fd).st_ino:
                        os.unlink(path)
                except OSError:
                    pass
                raise AugsenseError(f"cannot write the lock file {str(path)!r}: {error.strerror or error} (free "
                                    "space, then run again)") from None
            return RunLock(path, fd, me, notice)
        except BaseException:
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise
    raise AugsenseError(f"could not take the lock {str(path)!r}: it keeps being replaced by other processes")


#: The refusal's advice for the commands that write into an existing folder (no --out to change).
WAIT_ADVICE = "wait for it to finish, then run this command again"


@contextmanager
def holding(folder: str | Path, *, command: str | None = None, advice: str = WAIT_ADVICE) -> Iterator[RunLock]:
    """Hold the lock of ``folder`` (which must exist) for the ``with`` block; reentrant within a process.

    A stale lock taken over is said on stderr. Raises :class:`AugsenseError` (one line naming the
    holder: command, PID, host) when another live process holds it.
    """
    held = acquire(folder, command=command, advice=advice)
    try:
        if held.notice:
            print(f"augsense: notice: {held.notice}", file=sys.stderr)
        yield held
    finally:
        held.release()


def prepare_out_dir(out: str | Path, *, create: bool = True) -> Path:
    """Check ``--out`` before any computing: a folder (created if absent) in which files can be written.

    With ``create=False`` (a resume) a missing folder is an error instead.

    A probe file is created, written, fsynced and removed, so read-only mounts, permissions and
    quotas show up now, not after the run. Raises :class:`AugsenseError` with one line.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AugsenseError(f"--out {str(out)!r} is a file, not a folder; choose a folder for the run")
    if not create and not out.exists():
        raise AugsenseError(f"--resume: there is no run folder {str(out)!r} to continue; check --out, or run without "
                            "--resume to start afresh")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise AugsenseError(f"cannot create the run folder {str(out)!r}: a part of its path is a file") from None
    except OSError as error:
        raise AugsenseError(f"cannot create the run folder {str(out)!r}: {error.strerror or error}; choose "
                            "another --out") from None
    probe = out / f".augsense-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"augsense write test\n")
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        raise AugsenseError(f"cannot write into the run folder {str(out)!r}: {error.strerror or error}; choose "
                            "another --out") from None
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return out


#: The result files whose presence means a folder holds another run's results.
TABLES = ("indices.parquet", "layers.parquet", "maps.npz")


def read_status(folder: str | Path) -> str | None:
    """The ``status`` in ``folder/run.json``: None without one, "damaged" when it cannot be read."""
    try:
        info = json.loads((Path(folder) / "run.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "damaged"
    return str(info.get("status", "unknown")) if isinstance(info, dict) else "damaged"


def inspect_run_folder(folder: str | Path, *, resume: bool, overwrite: bool,
                       checkpoint: str = "checkpoint.pt") -> str | None:
    """Refuse (one line) to start a fresh run over another run's checkpoint or results; the old status.

    Without ``resume`` or ``overwrite``: a checkpoint, a run.json saying "complete", or result tables
    are refused. A folder holding only the config.toml/run.json of a run that died before its first
    checkpoint holds nothing to lose and is accepted.
    """
    folder = Path(folder)
    if resume and overwrite:
        raise AugsenseError("--resume continues the run in --out and --overwrite replaces it; choose one")
    previous = read_status(folder)
    if resume and previous == "complete" and not (folder / checkpoint).exists():
        raise AugsenseError(f"{str(folder)!r} holds a finished run (status: complete): there is nothing to resume. "
                            f"Its results are in that folder (`augsense report {folder}` redraws the report); to run "
                            "it again into the same folder pass --overwrite instead of --resume")
    if resume or overwrite:
        return previous
    tables = [name for name in TABLES if (folder / name).exists()]
    if (folder / checkpoint).exists():
        raise AugsenseError(f"{str(folder)!r} holds the checkpoint of an unfinished run (status: "
                            f"{previous or 'unknown'}); continue it with --resume, or pass --overwrite to start "
                            "afresh and replace it")
    if previous == "complete":
        raise AugsenseError(f"{str(folder)!r} holds the results of a finished run; choose another --out, or pass "
                            "--overwrite to replace them")
    if tables or previous in ("partial", "damaged", "unknown"):
        raise AugsenseError(f"{str(folder)!r} holds results of another run (status: {previous or 'unknown'}; "
                            f"{', '.join(tables) or 'run.json'}); choose another --out, or pass --overwrite to "
                            "replace them")
    return previous


def open_run_folder(folder: str | Path, *, resume: bool = False, overwrite: bool = False) -> tuple[RunLock, str | None]:
    """Check ``--out`` (:func:`prepare_out_dir`), take its lock and refuse to overwrite another run's data
    (:func:`inspect_run_folder`); returns the held lock and the folder's previous run status."""
    folder = prepare_out_dir(folder, create=not resume)
    held = acquire(folder)
    try:
        if held.notice:
            print(f"augsense: notice: {held.notice}", file=sys.stderr)
        return held, inspect_run_folder(folder, resume=resume, overwrite=overwrite)
    except BaseException:
        held.release()
        raise


def preflight(folder: str | Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """All checks of a run folder that need no model: writable folder, lock free, nothing overwritten.

    Takes the lock and drops it again at once: the run takes it for good when it starts.
    """
    held, _ = open_run_folder(folder, resume=resume, overwrite=overwrite)
    held.release()


def holder_of(folder: str | Path) -> dict[str, Any] | None:
    """The record of whoever holds (or held, if it died) the lock of ``folder``, or None."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return _read_record(fd)
    finally:
        os.close(fd)
