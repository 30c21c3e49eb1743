"""Which result set an analysis table was computed from, and writing tables no reader sees half-written.

Every commit of a result set (``augsense run``/``demo``, ``augsense responses``) writes a fresh
random id into ``run.json`` (``result_set``). The analyses that compute tables from a run folder's
results (``augsense mask``, ``single-class``, ``maps``, ``paper``) read that id when they load the
run and write it into each table's Parquet metadata (key ``augsense.result_set``) when they commit,
under the folder's lock, after checking that ``run.json`` still names the same set
(:func:`commit_tables`). A new set committed in between (another run with ``--overwrite``) makes the
commit refuse: the tables would describe the old results beside the new ones.

The report reads that stamp back (:func:`table_stamp`) and shows an analysis table only when it names
the run's current set; the commit of a new set also removes the known analysis outputs
(``io.results.ANALYSIS_OUTPUTS``), so the stamp is the second line of defence (old tables written
by a process that started before the commit, copied or crafted files).

Run folders written before ``result_set`` existed get an id derived from run.json's finish time,
host, PID and design fingerprint (:func:`result_set_of`), so tables computed on them are checked too;
their unstamped tables are shown as before.

Writes are atomic and durable (:func:`atomic_write`): a temporary file named with the writer's PID,
fsynced, renamed over the target, then the folder fsynced; a writer killed mid-write leaves only
its temporary file (removed by the next commit into the folder), never a partial table.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from augsense._lazy import pandas as pd  # imported at the first table: after a run's loop
from augsense.errors import AugsenseError
from augsense.io.lock import holding, pid_alive

#: run.json's key for the id of the result set in the folder.
RESULT_SET = "result_set"
#: The Parquet schema-metadata key holding the id of the result set a table was computed from.
STAMP_KEY = b"augsense.result_set"

#: The key in ``maps.npz`` holding the id of the result set its arrays belong to (a 0-d string array).
MAPS_STAMP = "__result_set__"
#: The result tables a commit stamps with its set (``indices.parquet``, ``layers.parquet``: Parquet metadata).
CORE_TABLES = ("indices.parquet", "layers.parquet")

_TEMPORARY = re.compile(r"^\..+\.tmp(\d+)$")


def new_result_set_id() -> str:
    """A fresh id for a result set being committed (128 random bits, hex)."""
    return uuid.uuid4().hex


def result_set_of(info: Mapping[str, Any] | None) -> str | None:
    """The id of the result set a run.json describes: its ``result_set``; for a run folder written before
    that key existed, ``legacy-`` + a hash of its finish time, host, PID and design fingerprint; None when
    run.json describes no committed set (a run that has not finished, no run.json)."""
    if not isinstance(info, Mapping):
        return None
    recorded = info.get(RESULT_SET)
    if isinstance(recorded, str) and recorded:
        return recorded
    finished = info.get("finished")
    if not finished:
        return None
    design = info.get("design") if isinstance(info.get("design"), Mapping) else {}
    key = json.dumps([str(finished), str(info.get("host")), str(info.get("pid")), str(design.get("fingerprint"))])
    return "legacy-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def current_result_set(folder: str | Path) -> str | None:
    """The id of the result set now in ``folder`` (read from its run.json; None without a readable one)."""
    try:
        info = json.loads((Path(folder) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result_set_of(info if isinstance(info, dict) else None)


def short(result_set: str | None) -> str:
    """An id as shown to people: the first 12 characters (``none`` for no id)."""
    return result_set[:12] if result_set else "none"


def fsync_folder(folder: Path) -> None:
    """fsync a folder so a rename in it is durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Write ``path`` atomically and durably: ``write(tmp)`` to ``.<name>.tmp<pid>``, fsync, rename, fsync folder.

    A failure (disk full, an exception in ``write``) removes the temporary file and leaves ``path`` as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_folder(path.parent)


def stamped_table(frame: pd.DataFrame, result_set: str | None) -> Any:
    """The Arrow table ``frame.to_parquet(index=False)`` writes, with ``result_set`` in its schema metadata."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if result_set is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), STAMP_KEY: result_set.encode()})
    return table


def write_parquet(frame: pd.DataFrame, path: str | Path, *, result_set: str | None = None) -> None:
    """``frame.to_parquet(path, index=False)``, atomically, with ``result_set`` in the file's metadata."""
    import pyarrow.parquet as pq

    table = stamped_table(frame, result_set)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def table_stamp(path: str | Path) -> str | None:
    """The result-set id a table records (None: none recorded, or not a Parquet file).

    Raises OSError / pyarrow errors for an unreadable file (the reader reports those as it reads the table).
    """
    path = Path(path)
    if path.suffix != ".parquet":
        return None
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    value = metadata.get(STAMP_KEY)
    return value.decode("utf-8", "replace") if value is not None else None


def belongs(stamp: str | None, run_set: str | None) -> bool:
    """Whether a table stamped ``stamp`` may be shown with a run whose result set is ``run_set``.

    A stamped table must name the run's set; an unstamped one is accepted only beside a run folder
    written before ids existed (``legacy-`` or none), whose own tables carry no stamp.
    """
    if stamp is not None:
        return stamp == run_set
    return run_set is None or run_set.startswith("legacy-")


def pop_maps_stamp(maps: dict[str, Any]) -> str | None:
    """Remove the result-set stamp from the arrays read from ``maps.npz``; the id (None: none recorded)."""
    value = maps.pop(MAPS_STAMP, None)
    if value is None:
        return None
    try:
        return str(value.item() if hasattr(value, "item") else value)
    except (ValueError, TypeError):
        return "unreadable"


def foreign_core_tables(folder: str | Path, run_set: str | None, maps_stamp: str | None) -> list[tuple[str, str]]:
    """The result tables of ``folder`` whose stamp names another set than ``run_set`` (copied in from another
    run): (file name, the set it records). Unstamped tables (written before the stamp existed) pass; an
    unreadable table is left to its reader. A run.json that records no set (written before ids existed)
    cannot be checked against: nothing is reported."""
    found: list[tuple[str, str]] = []
    if run_set is None or run_set.startswith("legacy-"):
        return found
    for name in CORE_TABLES:
        try:
            stamp = table_stamp(Path(folder) / name)
        except Exception:  # noqa: BLE001 - missing or damaged: its reader says so
            continue
        if stamp is not None and stamp != run_set:
            found.append((name, stamp))
    if maps_stamp is not None and maps_stamp != run_set:
        found.append(("maps.npz", maps_stamp))
    return found


def foreign_core_message(tables: Sequence[tuple[str, str]], run_set: str | None) -> str:
    items = ", ".join(f"{name} (set {short(stamp)})" for name, stamp in tables)
    return (f"result tables of another run: {items} — run.json names set {short(run_set)}, so these files were "
            "copied in from another run (another seed?) and do not belong to this run's header; run it again "
            "with --overwrite, or copy the whole run folder")


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove ``.<name>.tmp<pid>`` files of writers that no longer run on this host (killed mid-write)."""
    removed = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match and entry.is_file() and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


@dataclass(frozen=True)
class Source:
    """The result set an analysis computes from: run folder ``folder`` holding set ``result_set`` when read."""

    folder: Path
    result_set: str | None

    @classmethod
    def of(cls, folder: str | Path, info: Mapping[str, Any] | None) -> "Source":
        return cls(Path(folder), result_set_of(info))

    def check(self, what: str = "its tables") -> None:
        """Refuse (one line) when the folder no longer holds the set this analysis read."""
        now = current_result_set(self.folder)
        if now != self.result_set:
            raise AugsenseError(f"the results in {str(self.folder)!r} were replaced while this analysis ran "
                                f"(result set {short(self.result_set)} → {short(now)}); {what} were not written, "
                                "since they describe the old results: run it again")

    def covers(self, path: Path) -> bool:
        """Whether ``path`` lies inside this run folder."""
        try:
            Path(os.path.realpath(path)).relative_to(os.path.realpath(self.folder))
            return True
        except ValueError:
            return False


def commit_tables(source: Source, tables: Sequence[tuple[str, pd.DataFrame]], *, replaces: Sequence[str] = (),
                  into: str | Path | None = None) -> list[Path]:
    """Write an analysis's tables into its run folder as one commit, stamped with the set they come from.

    Under the folder's lock: refuse (:meth:`Source.check`) if the folder now holds another result set;
    write every table to a temporary file and fsync it; remove the files of ``replaces`` (names without
    ``.parquet``) this commit does not write, so no table of an earlier commit of the same analysis
    stays beside the new ones; rename the new tables into place. Returns the written paths.

    Args:
        source: the run folder and the result set the tables were computed from.
        tables: (name without ``.parquet``, table) pairs.
        replaces: the analysis's other table names (written by earlier commits, absent from this one).
        into: a sub-folder of the run folder to write into (default: the run folder).
    """
    import pyarrow.parquet as pq

    folder = Path(into) if into is not None else source.folder
    if not source.covers(folder):
        raise AugsenseError(f"{str(folder)!r} is not inside the run folder {str(source.folder)!r}")
    with holding(source.folder):
        source.check()
        remove_stale_temporaries(folder)
        staged: list[tuple[Path, Path]] = []
        try:
            for name, frame in tables:
                target = folder / f"{name}.parquet"
                tmp = folder / f".{name}.parquet.tmp{os.getpid()}"
                staged.append((tmp, target))
                pq.write_table(stamped_table(frame, source.result_set), tmp)
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            written = {target.name for _, target in staged}
            for name in replaces:
                if f"{name}.parquet" not in written:
                    (folder / f"{name}.parquet").unlink(missing_ok=True)
            for tmp, target in staged:
                os.replace(tmp, target)
        except OSError as error:
            raise AugsenseError(f"cannot write the tables into {str(folder)!r}: {error.strerror or error} (the "
                                "tables there are unchanged; free space, then run again)") from None
        finally:
            for tmp, _ in staged:
                tmp.unlink(missing_ok=True)
        fsync_folder(folder)
    return [target for _, target in staged]


__all__ = ["CORE_TABLES", "MAPS_STAMP", "RESULT_SET", "STAMP_KEY", "foreign_core_message", "foreign_core_tables",
           "pop_maps_stamp", "Source", "atomic_write", "belongs", "commit_tables", "current_result_set",
           "new_result_set_id", "remove_stale_temporaries", "result_set_of", "short", "stamped_table", "table_stamp", "write_parquet"]
