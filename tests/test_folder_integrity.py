"""A run folder never reads as one complete run while its files come from two: a commit killed between
renames, tables copied in from another run, damaged maps, a full disk while writing the report or the lock."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from augsense.analyses.sensitivity import run_sensitivity
from augsense.cli import main
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.io.results import load_run, write_run
from augsense.report.data import read_report_data
from planted import PLANTED_CONFIG, planted_bundle, planted_images, planted_run_folder


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(run folder, its SensitivityRun): a small finished run of the planted network."""
    return planted_run_folder(tmp_path_factory.mktemp("planted_integrity") / "run")


@pytest.fixture
def folder(planted, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(planted[0], copy)
    return copy


class Killed(BaseException):
    """SIGKILL: nothing after it runs (no except OSError clause)."""


def _die_after(monkeypatch, k: int) -> None:
    real = os.replace
    calls = [0]

    def replace(src, dst):
        calls[0] += 1
        if calls[0] > k:
            raise Killed()
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("k", range(9))  # 3 staged tables, the marker, 5 renames
def test_a_commit_killed_between_renames_never_reads_as_complete(planted, folder, monkeypatch, k):
    before = json.loads((folder / "run.json").read_text())
    assert before["status"] == "complete"
    _die_after(monkeypatch, k)
    with pytest.raises(Killed):
        write_run(planted[1], folder)
    monkeypatch.undo()
    info = json.loads((folder / "run.json").read_text())
    if info == before:  # died before anything of the new set reached the folder
        assert load_run(folder).missing == []
    elif info.get("status") == "complete":  # the commit finished (run.json renamed last)
        assert info["result_set"] != before["result_set"]
        assert load_run(folder).missing == []
    else:  # a partial commit: flagged by load_run and the report
        assert info["status"] == "committing"
        with pytest.raises(AugsenseError, match="may mix two runs"):
            load_run(folder)
        assert any("may mix two runs" in n for n in read_report_data(folder).notices)
        write_run(planted[1], folder)  # what a rerun with --overwrite commits
        assert json.loads((folder / "run.json").read_text())["status"] == "complete"
        assert load_run(folder).missing == []


def test_a_rerun_with_overwrite_recovers_a_killed_commit(planted, folder, monkeypatch, capsys):
    _die_after(monkeypatch, 5)  # 3 staged tables, the marker, then indices.parquet renamed: killed
    with pytest.raises(Killed):
        write_run(planted[1], folder)
    monkeypatch.undo()
    assert json.loads((folder / "run.json").read_text())["status"] == "committing"
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images", "layers")}
    config = SensitivityConfig(**values, layers=["readout", "output"], n=64)
    with pytest.raises(AugsenseError):  # without --overwrite the folder is refused
        run_sensitivity(config, model=planted_bundle(), images=planted_images(), out_dir=folder, progress=False)
    run_sensitivity(config, model=planted_bundle(), images=planted_images(), out_dir=folder, progress=False,
                    overwrite=True)
    assert json.loads((folder / "run.json").read_text())["status"] == "complete"
    assert load_run(folder).missing == []
    assert not any("may mix" in n for n in read_report_data(folder).notices)


def test_the_result_tables_record_the_set_and_a_table_of_another_run_is_noticed(planted, folder, tmp_path, capsys):
    from augsense.io.provenance import current_result_set, table_stamp

    run_set = current_result_set(folder)
    assert table_stamp(folder / "indices.parquet") == run_set
    assert table_stamp(folder / "layers.parquet") == run_set
    assert "__result_set__" not in load_run(folder).maps  # the stamp is no map
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    write_run(planted[1], other)  # another run (a new set) …
    for name in ("indices.parquet", "maps.npz"):  # … whose tables are copied into this folder
        shutil.copy(other / name, folder / name)
    with pytest.raises(AugsenseError, match="indices.parquet.*maps.npz"):
        load_run(folder)
    assert main(["report", str(folder)]) == 0
    capsys.readouterr()
    page = (folder / "report.html").read_text(encoding="utf-8")
    banner = page.split("Before trusting these numbers", 1)[1].split("</div>", 1)[0]
    assert "result tables of another run" in banner and "indices.parquet" in banner and "maps.npz" in banner
    assert "layers.parquet" not in banner


def test_a_folder_written_before_the_stamp_still_loads(folder):
    import numpy as np
    import pandas as pd

    pd.read_parquet(folder / "indices.parquet").to_parquet(folder / "indices.parquet", index=False)
    with np.load(folder / "maps.npz") as data:
        arrays = {k: data[k] for k in data.files if k != "__result_set__"}
    np.savez(folder / "maps.npz", **arrays)
    loaded = load_run(folder)
    assert loaded.missing == [] and loaded.maps
    assert not any("another run" in w for w in read_report_data(folder).info.get("warnings") or [])


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_a_damaged_maps_file_is_one_clear_line(folder, capsys, damage):
    maps = folder / "maps.npz"
    if damage == "truncate":
        os.truncate(maps, 5000)
    else:
        maps.write_bytes(b"not a zip file at all" * 100)
    with pytest.raises(AugsenseError, match="maps.npz .* is damaged or unreadable"):
        load_run(folder)
    assert main(["maps", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "damaged or unreadable" in err and "Traceback" not in err and "missing" not in err


def test_report_of_a_plain_file_says_it_is_not_a_folder(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["report", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "not a run folder" in err and "does not exist" not in err


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_the_report_page_is_one_line_and_leaves_no_temporary(folder, monkeypatch, capsys):
    from pathlib import Path as P

    real = P.write_text

    def write_text(self, *args, **kwargs):
        if self.name.startswith(".report.html.tmp"):
            real(self, "half a page", encoding="utf-8")  # part of it reached the disk
            _enospc()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(P, "write_text", write_text)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "augsense: error: cannot write the report" in err and "No space left" in err and "Traceback" not in err
    assert not list(folder.glob(".report.html.tmp*"))


def test_a_full_disk_while_writing_a_figure_is_one_line_and_leaves_no_half_figure(folder, monkeypatch, capsys):
    from pathlib import Path as P

    real = P.write_bytes
    calls = [0]

    def write_bytes(self, data):
        calls[0] += 1
        if calls[0] == 2 and self.suffix == ".png":
            real(self, data[:10])
            _enospc()
        return real(self, data)

    monkeypatch.setattr(P, "write_bytes", write_bytes)
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "augsense: error: cannot write the figures" in err and "Traceback" not in err
    assert all(p.stat().st_size > 10 for p in (folder / "figures").glob("*.png"))
    assert not list(folder.glob(".report.html.tmp*"))


def test_a_full_disk_while_writing_the_lock_is_one_line_and_leaves_no_lock_file(tmp_path, monkeypatch):
    from augsense.io import lock

    folder = tmp_path / "run"
    folder.mkdir()
    monkeypatch.setattr(lock.os, "write", _enospc)
    with pytest.raises(AugsenseError, match="cannot write the lock file .*No space left"):
        lock.acquire(folder)
    monkeypatch.undo()
    assert not (folder / lock.LOCK_NAME).exists()
    with lock.acquire(folder):  # nothing stale is left to trip the next writer
        pass


def test_a_lock_record_not_yet_written_by_the_winner_is_read_again(tmp_path, monkeypatch):
    from augsense.io import lock

    folder = tmp_path / "run"
    folder.mkdir()
    held = lock.acquire(folder, command="augsense run winner")
    try:
        real = lock._read_record
        calls = [0]

        def racing(fd):  # the first read lands between the winner's truncate and its write
            calls[0] += 1
            return None if calls[0] == 1 else real(fd)

        monkeypatch.setattr(lock, "_read_record", racing)
        monkeypatch.setattr(lock, "_HELD", {})  # as another process would: not a nested handle
        with pytest.raises(AugsenseError) as refused:
            lock._acquire(folder, command=None, advice="wait")
        message = str(refused.value)
        assert f"PID {os.getpid()}" in message and "augsense run winner" in message and "PID ?" not in message
    finally:
        monkeypatch.undo()
        held.release()
