"""Every command that writes into a folder is one writer at a time, and its tables record the result set
they were computed from — against a hostile user: concurrent writers, a new result set committed while an
analysis runs, old or crafted tables, SIGKILL mid-write.

The planted network (tests/planted.py) gives a small real run folder; a second process that holds a
folder's lock is a real process using the lock the commands use (io/lock.holding).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

from augsense.analyses.masking import MASKING_TABLES, MaskingOptions, run_masking, write_masking
from augsense.analyses.single_class import ClassDecayOptions, SingleClassOptions, class_decay, run_single_class
from augsense.cli import main
from augsense.errors import AugsenseError
from augsense.io.lock import LOCK_NAME, acquire, holding
from augsense.io.provenance import (RESULT_SET, Source, commit_tables, current_result_set, table_stamp,
                                    write_parquet)
from augsense.io.results import write_run
from augsense.report.html import write_report
from augsense.report.trust import FOREIGN_TABLES
from planted import planted_bundle, planted_images, planted_run_folder

SMALL_MASK = MaskingOptions(quantiles=(0.9,), alphas=(0.0,), n_random=1, least=False, soft=False, augmentations="clean")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(run folder, its SensitivityRun): a small finished run of the planted network, readout + output layers."""
    return planted_run_folder(tmp_path_factory.mktemp("planted_writers") / "run")


@pytest.fixture
def folder(planted, tmp_path) -> Path:
    """A private copy of the planted run folder."""
    copy = tmp_path / "run"
    shutil.copytree(planted[0], copy)
    return copy


def hold_in_another_process(folder: Path, command: str) -> subprocess.Popen:
    """A real second process holding ``folder``'s lock (as a writing command does) until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from augsense.io.lock import holding
        with holding({str(folder)!r}, command={command!r}):
            print("held", flush=True)
            sys.stdin.read()
    """)
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held", process.stderr.read()
    return process


def listing(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))
            if p.name != LOCK_NAME}


# --- one writer at a time -------------------------------------------------------------------------------------

WRITERS = {  # each command that writes into a folder, given that folder (RUN); the lock is taken before any work
    "mask": ["mask", "RUN", "--device", "cpu"],
    "single-class": ["single-class", "RUN", "--device", "cpu"],
    "maps": ["maps", "RUN"],
    "report": ["report", "RUN"],
    "paper": ["paper", "RUN", "--device", "cpu"],
    "contrast": ["contrast", "--out", "RUN"],
    "stimuli": ["stimuli", "--out", "RUN"],
    "responses": ["responses", "RUN/design.parquet", "RUN/responses.csv", "--out", "RUN"],
    "segments": ["segments", "--segment", "features.0", "--out", "RUN"],
    "run --overwrite": ["run", "--out", "RUN", "--overwrite"],
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_second_writer_is_refused_with_one_line_naming_the_holder(folder, capsys, writer):
    holder = hold_in_another_process(folder, f"augsense mask {folder}")
    try:
        before = listing(folder)
        code = main([a.replace("RUN", str(folder)) for a in WRITERS[writer]])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert f"in use by PID {holder.pid} on host {socket.gethostname()}" in err and f"augsense mask {folder}" in err
        assert listing(folder) == before  # nothing written, nothing removed
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert not (folder / LOCK_NAME).exists()  # released by the holder; the refused writer left nothing
    acquire(folder).release()


def test_the_lock_is_reentrant_within_a_process_and_released_by_its_owner_only(tmp_path):
    with holding(tmp_path) as outer:
        with holding(tmp_path) as inner:  # augsense paper's steps inside its own hold
            assert inner.nested and not outer.nested
        assert (tmp_path / LOCK_NAME).exists()  # the nested release dropped nothing
        refused = subprocess.run([sys.executable, "-c", f"from augsense.io.lock import acquire; "
                                  f"acquire({str(tmp_path)!r})"], capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and f"PID {os.getpid()}" in refused.stderr
    assert not (tmp_path / LOCK_NAME).exists()


# --- the result set an analysis read is the one it commits beside ------------------------------------------------


def _commit_another_set(run, folder: Path, seen: list[str]) -> None:
    seen.append(current_result_set(folder))
    write_run(run, folder)  # `augsense run --overwrite` committing set B while the analysis computes on set A
    seen.append(current_result_set(folder))


@pytest.mark.parametrize("analysis", ["mask", "single-class", "class-decay", "maps"])
def test_an_analysis_is_not_committed_when_a_new_result_set_came_in_meanwhile(planted, folder, monkeypatch, analysis):
    import augsense.analyses.masking as masking
    import augsense.analyses.single_class as single_class
    import augsense.commands.maps as maps

    run = planted[1]
    seen: list[str] = []
    hooks = {"mask": (masking, "masking_tables"), "single-class": (single_class, "candidate_classes"),
             "class-decay": (single_class, "candidate_classes"), "maps": (maps, "map_correlations")}
    module, name = hooks[analysis]
    original = getattr(module, name)

    def between_read_and_write(*args, **kwargs):
        if not seen:
            _commit_another_set(run, folder, seen)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, between_read_and_write)
    bundle, images = planted_bundle(), planted_images()
    with pytest.raises(AugsenseError, match="were replaced while this analysis ran") as refused:
        if analysis == "mask":
            run_masking(folder, SMALL_MASK, model=bundle, images=images)
        elif analysis == "single-class":
            run_single_class(folder, SingleClassOptions(k=1, alphas=(0.0,)), model=bundle, images=images)
        elif analysis == "class-decay":
            class_decay(folder, ClassDecayOptions(k=1, quantiles=(0.9,), n_random=1), model=bundle, images=images)
        else:
            maps.map_statistics_of_run(folder, paper=False).write(folder)
    a, b = seen
    assert a != b and f"{a[:12]} → {b[:12]}" in str(refused.value) and "\n" not in str(refused.value)
    derived = [p.name for p in folder.iterdir() if p.name.startswith(("masking", "single_class", "class_decay", "map_"))]
    assert derived == [] and current_result_set(folder) == b  # nothing of set A beside set B


def test_the_tables_of_an_analysis_record_the_result_set_and_replace_the_previous_commit(folder):
    result_set = current_result_set(folder)
    assert result_set and json.loads((folder / "run.json").read_text())[RESULT_SET] == result_set
    result = run_masking(folder, SMALL_MASK, model=planted_bundle(), images=planted_images())
    for name in MASKING_TABLES:
        assert table_stamp(folder / f"{name}.parquet") == result_set, name
    without_pairs = dataclasses.replace(result, pairs=result.pairs.iloc[:0])  # a later masking run with no pairs
    write_masking(without_pairs, Source.of(folder, json.loads((folder / "run.json").read_text())))
    assert not (folder / "masking_pairs.parquet").exists()  # an earlier commit's table is not left beside the new
    assert not (folder / "masking_linkage.parquet").exists()
    assert not [p for p in folder.iterdir() if ".tmp" in p.name]


# --- the report shows only the tables of the run's result set ----------------------------------------------------


def test_old_and_crafted_analysis_tables_are_left_out_of_the_report_with_a_warning(planted, folder, capsys):
    run_masking(folder, SMALL_MASK, model=planted_bundle(), images=planted_images())
    old = {p.name: p.read_bytes() for p in folder.glob("masking*.parquet")}
    write_run(planted[1], folder)  # a new set: the commit removes the masking tables …
    assert not list(folder.glob("masking*.parquet"))
    for name, data in old.items():  # … which a process that read the old set writes back late (or a user copies in)
        (folder / name).write_bytes(data)
    decay = pd.DataFrame({"factor": ["brightness"], "kind": ["guided"], "q": [0.9], "class": [0], "share": [0.5]})
    decay.to_parquet(folder / "class_decay.parquet")  # crafted: records no result set at all
    (folder / "segments").mkdir()
    write_parquet(pd.DataFrame({"channel": ["h"], "layer": ["x"], "factor": ["hue"], "quantity": ["total_order"],
                                "mean": [0.9]}), folder / "segments" / "segments_indices.parquet",
                  result_set="0" * 32)  # crafted: claims another set
    kept = pd.DataFrame({"factor": ["brightness"], "scope": ["units"], "factor_a": ["brightness"],
                         "factor_b": ["saturation"], "rho": [0.25], "p_value": [0.5], "n": [3]})
    write_parquet(kept, folder / "map_statistics.parquet", result_set=current_result_set(folder))  # this set's
    assert main(["report", str(folder)]) == 0
    err = capsys.readouterr().err
    page = (folder / "report.html").read_text(encoding="utf-8")
    warning = [line for line in err.splitlines() if FOREIGN_TABLES in line]
    assert len(warning) == 1, err
    shown_by_the_report = [name for name in old if name != "masking_pair_rho.parquet"]  # the report reads no rho
    assert len(shown_by_the_report) == 6
    for name in [*shown_by_the_report, "class_decay.parquet", "segments/segments_indices.parquet"]:
        assert name in warning[0], name
    assert "map_statistics.parquet" not in warning[0]
    assert FOREIGN_TABLES in page.split("Before trusting these numbers", 1)[1].split("</div>", 1)[0]  # the banner
    assert 'id="masking"' not in page and 'id="paper"' not in page  # no section drawn from them
    assert 'id="map_statistics"' in page  # the table of the run's own set is shown


def test_an_unstamped_table_beside_a_legacy_run_folder_is_still_shown(folder):
    info = json.loads((folder / "run.json").read_text())
    del info[RESULT_SET]  # a run folder written before result-set ids
    (folder / "run.json").write_text(json.dumps(info))
    pd.DataFrame({"scope": ["units"], "factor_a": ["brightness"], "factor_b": ["saturation"], "rho": [0.25],
                  "p_value": [0.5], "n": [3]}).to_parquet(folder / "map_statistics.parquet")
    page = write_report(folder).read_text(encoding="utf-8")
    assert 'id="map_statistics"' in page and FOREIGN_TABLES not in page
    legacy = current_result_set(folder)
    assert legacy.startswith("legacy-")  # tables computed on it now are stamped and checked too
    run_masking(folder, SMALL_MASK, model=planted_bundle(), images=planted_images())
    assert table_stamp(folder / "masking.parquet") == legacy


# --- SIGKILL mid-write ---------------------------------------------------------------------------------------------


def test_sigkill_mid_write_leaves_the_previous_table_whole_and_the_next_commit_tidies(folder, tmp_path):
    source = Source.of(folder, json.loads((folder / "run.json").read_text()))
    old = pd.DataFrame({"factor": ["brightness"], "top1": [0.5]})
    commit_tables(source, [("masking", old)])
    gate = tmp_path / "gate"
    code = textwrap.dedent(f"""
        import json, time
        from pathlib import Path
        import numpy as np, pandas as pd
        import pyarrow.parquet as pq
        from augsense.io.provenance import Source, commit_tables
        folder = Path({str(folder)!r})
        real = pq.write_table
        def slow(table, where, **kwargs):  # half the file on disk, then the process is killed
            real(table, where, **kwargs)
            data = Path(where).read_bytes()
            Path(where).write_bytes(data[: len(data) // 2])
            Path({str(gate)!r}).touch()
            time.sleep(600)
        pq.write_table = slow
        source = Source.of(folder, json.loads((folder / "run.json").read_text()))
        new = pd.DataFrame({{"factor": ["hue"] * 100000, "top1": np.linspace(0, 1, 100000)}})
        commit_tables(source, [("masking_gap", new), ("masking", new)])
    """)
    writer = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not gate.exists():
        assert writer.poll() is None and time.monotonic() < deadline, writer.stderr.read()
        time.sleep(0.02)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=60)
    left = [p.name for p in folder.iterdir() if p.name.startswith(".masking")]
    assert left == [f".masking_gap.parquet.tmp{writer.pid}"]  # only the hidden temporary file of the killed writer
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "masking.parquet"), old)  # the previous table, whole
    assert not (folder / "masking_gap.parquet").exists()
    assert (folder / LOCK_NAME).exists()  # the dead writer's record: taken over by the next writer
    commit_tables(source, [("masking", old)])
    assert not [p for p in folder.iterdir() if ".tmp" in p.name] and not (folder / LOCK_NAME).exists()
    page = write_report(folder).read_text(encoding="utf-8")
    assert "could not be read" not in page


def test_a_response_analysis_commits_its_run_folder_as_one_new_set(folder, tmp_path):
    """augsense responses into a run folder: a new result set whose commit removes the old set's analysis tables."""
    from augsense.analyses.responses import analyse_responses
    from augsense.analyses.stimuli import StimulusDesign
    from test_responses import config, record_from_pngs

    run_masking(folder, SMALL_MASK, model=planted_bundle(), images=planted_images())
    old = current_result_set(folder)
    export = tmp_path / "export"
    StimulusDesign.from_config(config(n=32), images=planted_images(), size=32).export(export)
    analyse_responses(export / "design.parquet", record_from_pngs(export), out_dir=folder)
    new = current_result_set(folder)
    assert new and new != old and not new.startswith("legacy-")
    names = {p.name for p in folder.iterdir()}
    assert not {n for n in names if n.startswith(("masking", ".staging", ".")) or ".tmp" in n}, names
    assert "config.toml" not in names  # it described the run this set replaced
    assert {"indices.parquet", "layers.parquet", "maps.npz", "run.json"} <= names


def test_a_crafted_lock_record_still_gives_one_printable_line(folder, capsys):
    """A live holder whose record holds newlines and a terminal escape: the refusal stays one clean line."""
    holder = hold_in_another_process(folder, "augsense mask\nrm -rf /\x1b[2J")
    try:
        record = json.loads((folder / LOCK_NAME).read_text())
        record["started"] = 1e300  # and a start time no clock can show
        (folder / LOCK_NAME).write_text(json.dumps(record))
        assert main(["maps", str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "\x1b" not in err and "augsense mask?rm -rf /?[2J" in err, err
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_a_full_disk_during_a_commit_leaves_every_previous_table_and_no_temporary_file(folder, monkeypatch):
    import errno

    import pyarrow.parquet as pq

    source = Source.of(folder, json.loads((folder / "run.json").read_text()))
    old = {"masking": pd.DataFrame({"top1": [0.5]}), "masking_gap": pd.DataFrame({"gap": [0.1]}),
           "masking_pairs": pd.DataFrame({"leaf": [0]})}
    commit_tables(source, list(old.items()))
    real, calls = pq.write_table, []

    def full(table, where, **kwargs):
        calls.append(where)
        if len(calls) == 2:
            Path(where).write_bytes(b"PAR1 half")  # some bytes reached the disk, then it filled up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(table, where, **kwargs)

    monkeypatch.setattr(pq, "write_table", full)
    new = pd.DataFrame({"top1": [0.9]})
    with pytest.raises(AugsenseError, match="No space left on device.*unchanged"):
        commit_tables(source, [("masking", new), ("masking_gap", new)], replaces=list(old))
    for name, table in old.items():  # all three as they were: none replaced, none removed
        pd.testing.assert_frame_equal(pd.read_parquet(folder / f"{name}.parquet"), table)
    assert not [p for p in folder.iterdir() if ".tmp" in p.name] and not (folder / LOCK_NAME).exists()


def test_the_report_after_a_run_is_written_under_the_lock_or_skipped_with_one_line(folder, capsys):
    """``run``/``demo`` write report.html after the run released the folder: another writer that took it in
    between keeps it (the report is skipped, the results stay); otherwise the report is written."""
    from augsense.commands.run import write_report_locked

    (folder / "report.html").unlink(missing_ok=True)
    holder = hold_in_another_process(folder, "mask")
    try:
        write_report_locked(folder)
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    err = capsys.readouterr().err
    assert "report skipped" in err and "augsense report" in err and "mask" in err
    assert len(err.strip().splitlines()) == 1
    assert not (folder / "report.html").exists()
    write_report_locked(folder)
    assert (folder / "report.html").exists()
