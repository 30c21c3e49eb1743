"""Run folders keep their promises: one run at a time, nothing overwritten unasked, early output checks,
results committed as one set, and SIGINT/SIGTERM/SIGSTOP handled — with real processes.

Real ``augsense run`` processes run tests/planted_cli.py, which swaps in the planted network and
images (tests/planted.py). Its forward hook can *pause* at a chosen forward pass while a gate file exists
(and says so by creating ``<gate>.reached``), so a test knows exactly where the run is when it sends
a signal or starts a second run, without relying on timing.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from augsense.analyses.sensitivity import run_sensitivity
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.io.checkpoints import CHECKPOINT_NAME
from augsense.io.lock import LOCK_NAME, acquire
from augsense.io.results import load_run
from planted import PLANTED_CONFIG, planted_bundle, planted_images

TESTS = Path(__file__).parent
N, BATCH = 64, 10  # sobol, 3 factors: group 5, blocks of 2 rows (32 blocks): one forward pass per block

PLANTED_CLI = TESTS / "planted_cli.py"  # augsense on the planted network, with GATE/PAUSE_AT/START


def planted_config(**changes) -> SensitivityConfig:
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(n=N, batch_size=BATCH, checkpoint_every=0.0, report=False)
    values.update(changes)
    return SensitivityConfig(**values)


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(planted_config().to_toml())
    return path


@pytest.fixture(scope="module")
def uninterrupted():
    """The uninterrupted run; ``.forwards``: its forward passes (set-up and clean top-1 ones, then one per block)."""
    bundle, forwards = planted_bundle(), [0]
    bundle.module.register_forward_pre_hook(lambda module, args: forwards.__setitem__(0, forwards[0] + 1))
    run = run_sensitivity(planted_config(), model=bundle, images=planted_images(), progress=False)
    run.forwards = forwards[0]  # type: ignore[attr-defined]
    assert run.design.n_blocks >= 8 and run.forwards > run.design.n_blocks  # type: ignore[attr-defined]
    return run


@pytest.fixture
def planted_cli(monkeypatch):
    """``augsense.cli.main`` in this process, on the planted network; counts forward passes."""
    import augsense.analyses.sensitivity as sensitivity
    from augsense.cli import main

    forwards = [0]

    def load_model(name, weights=None, **kwargs):
        bundle = planted_bundle()
        bundle.module.register_forward_pre_hook(lambda module, args: forwards.__setitem__(0, forwards[0] + 1))
        return bundle

    monkeypatch.setattr(sensitivity, "load_model", load_model)
    monkeypatch.setattr(sensitivity, "images_for", lambda *args, **kwargs: planted_images())
    main.forwards = forwards  # type: ignore[attr-defined]
    return main


def start(tmp: Path, *args: str, gate: Path | None = None, pause_at: int = 0, env: dict | None = None
          ) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if gate is not None:
        gate.write_text("hold")
        environment.update(GATE=str(gate), PAUSE_AT=str(pause_at))
    return subprocess.Popen([sys.executable, str(PLANTED_CLI), *args], env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended before {path.name}: {process.stderr.read()}")  # type: ignore[union-attr]
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {path.name}")
        time.sleep(0.02)


def read_until(process: subprocess.Popen, text: str) -> str:
    """stderr of a running process up to the first line containing ``text``."""
    seen = []
    for line in process.stderr:  # type: ignore[union-attr]
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never appeared: {''.join(seen)}")


def assert_equal_indices(folder, reference) -> None:
    for quantity in ("first_order", "total_order"):
        np.testing.assert_allclose(folder.map("readout", quantity), getattr(reference.result, quantity),
                                   rtol=1e-10, atol=1e-14, equal_nan=True, err_msg=quantity)


# --- one run at a time --------------------------------------------------------------------------


def test_a_second_run_into_a_busy_folder_is_refused_and_the_first_completes(tmp_path, config_file, planted_cli,
                                                                             capsys, uninterrupted):
    out, gate = tmp_path / "run", tmp_path / "gate"
    first = start(tmp_path, "run", str(config_file), "--out", str(out), "--quiet", gate=gate, pause_at=3)
    wait_for(gate.with_name("gate.reached"), first)  # the first run holds the lock, one block done
    code = planted_cli(["run", str(config_file), "--out", str(out), "--quiet"])
    error = capsys.readouterr().err
    assert code == 2 and planted_cli.forwards[0] == 0, error
    assert f"in use by PID {first.pid} on host {socket.gethostname()}" in error and error.count("\n") == 1
    code = planted_cli(["run", str(config_file), "--out", str(out), "--quiet", "--resume"])  # nor may it resume
    assert code == 2 and f"PID {first.pid}" in capsys.readouterr().err
    gate.unlink()
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    folder = load_run(out)
    assert folder.info["status"] == "complete" and folder.info["pid"] == first.pid
    assert sorted(p.name for p in out.iterdir()) == ["config.toml", "indices.parquet", "layers.parquet", "maps.npz",
                                                     "run.json"]  # no lock, checkpoint or staging left
    assert_equal_indices(folder, uninterrupted)


def test_an_analysis_into_a_folder_a_run_is_overwriting_is_refused_naming_the_run(tmp_path, config_file, planted_cli,
                                                                                  capsys):
    """`augsense mask` / `maps` / `report` while `run --overwrite` is about to commit a new set into the folder:
    refused (one line naming the run), so no table computed from the old set lands beside the new one."""
    out, gate = tmp_path / "run", tmp_path / "gate"
    assert planted_cli(["run", str(config_file), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    before = json.loads((out / "run.json").read_text())["result_set"]
    second = start(tmp_path, "run", str(config_file), "--out", str(out), "--quiet", "--overwrite", gate=gate,
                   pause_at=3)
    wait_for(gate.with_name("gate.reached"), second)
    for command in (["mask", str(out), "--device", "cpu"], ["maps", str(out)], ["report", str(out)]):
        assert planted_cli(command) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and f"in use by PID {second.pid}" in error and "--overwrite" in error, error
    gate.unlink()
    _, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr
    after = json.loads((out / "run.json").read_text())["result_set"]
    assert after != before and not list(out.glob("masking*")) and not list(out.glob("map_*"))


def test_a_stale_lock_is_taken_over_and_a_foreign_host_lock_is_refused(tmp_path, config_file, planted_cli, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"host": socket.gethostname(), "pid": dead.pid, "started": time.time() - 60, "command": "augsense run"}
    (out / LOCK_NAME).write_text(json.dumps(record))
    assert planted_cli(["run", str(config_file), "--out", str(out), "--quiet"]) == 0
    error = capsys.readouterr().err
    assert f"took over the stale lock of PID {dead.pid}" in error
    assert load_run(out).info["status"] == "complete" and not (out / LOCK_NAME).exists()

    other = tmp_path / "other"
    other.mkdir()
    (other / LOCK_NAME).write_text(json.dumps({**record, "host": "node17.cluster", "pid": 4242}))
    planted_cli.forwards[0] = 0
    assert planted_cli(["run", str(config_file), "--out", str(other), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "PID 4242 on host node17.cluster" in error and f"delete '{other / LOCK_NAME}'" in error
    assert planted_cli.forwards[0] == 0 and not (other / "run.json").exists()


def test_a_live_lock_holder_is_named_and_the_lock_is_released_after_it(tmp_path):
    held = acquire(tmp_path, command="augsense run a.toml")
    holder = subprocess.run([sys.executable, "-c", "import sys; from augsense.io.lock import acquire; "
                             f"acquire({str(tmp_path)!r})"], capture_output=True, text=True, timeout=120)
    assert holder.returncode != 0 and f"in use by PID {os.getpid()}" in holder.stderr and "a.toml" in holder.stderr
    held.release()
    assert not (tmp_path / LOCK_NAME).exists()
    acquire(tmp_path).release()


# --- nothing overwritten unasked ----------------------------------------------------------------


def test_a_fresh_run_over_a_checkpoint_or_a_finished_run_needs_overwrite(tmp_path, config_file, planted_cli, capsys,
                                                                         uninterrupted):
    out = tmp_path / "run"
    killed = run_sensitivity(planted_config(), model=planted_bundle(), images=planted_images(), out_dir=out,
                             progress=False, stop_after_blocks=5)
    assert not killed.complete and (out / CHECKPOINT_NAME).exists()
    before = (out / CHECKPOINT_NAME).read_bytes()
    assert planted_cli(["run", str(config_file), "--out", str(out), "--quiet"]) == 2
    assert "checkpoint of an unfinished run" in capsys.readouterr().err
    assert (out / CHECKPOINT_NAME).read_bytes() == before and planted_cli.forwards[0] == 0

    assert planted_cli(["run", str(config_file), "--out", str(out), "--quiet", "--overwrite"]) == 0
    first = load_run(out)
    assert first.info["status"] == "complete" and not (out / CHECKPOINT_NAME).exists()
    assert_equal_indices(first, uninterrupted)

    (out / "report.html").write_text("<p>report of the finished run</p>")
    pd.DataFrame({"factor": ["brightness"], "accuracy": [0.5]}).to_parquet(out / "masking.parquet")
    (out / "paper_spatial").mkdir()  # what augsense mask / paper computed from the first set
    assert planted_cli(["run", str(config_file), "--out", str(out), "--quiet", "--seed", "3"]) == 2
    assert "results of a finished run" in capsys.readouterr().err
    assert load_run(out).info == first.info

    assert planted_cli(["run", str(config_file), "--out", str(out), "--quiet", "--seed", "3", "--overwrite"]) == 0
    second = load_run(out)
    assert second.info["status"] == "complete" and second.info["config"]["seed"] == 3
    assert not (out / "report.html").exists()  # the old set's report went with it
    assert not (out / "masking.parquet").exists() and not (out / "paper_spatial").exists()  # and its analyses
    assert not np.array_equal(second.map("readout", "total_order"), first.map("readout", "total_order"),
                              equal_nan=True)  # another seed: the new set, not the old one
    assert planted_cli(["run", str(config_file), "--out", str(out), "--resume", "--overwrite"]) == 2
    assert "choose one" in capsys.readouterr().err


def test_a_finishing_run_removes_its_own_and_dead_writers_temporary_files(tmp_path, config_file, planted_cli):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                                       # a writer killed mid-write
    stale = out / f".{CHECKPOINT_NAME}.tmp{dead.pid}"
    stale.write_bytes(b"left by a writer killed mid-write")
    foreign = out / f".{CHECKPOINT_NAME}.tmp{os.getppid()}"           # a live process's: not ours
    foreign.write_bytes(b"another writer's temporary checkpoint")
    assert planted_cli(["run", str(config_file), "--out", str(out), "--quiet", "--checkpoint-every", "0.001"]) == 0
    assert foreign.read_bytes() == b"another writer's temporary checkpoint" and not stale.exists()
    assert not (out / f".{CHECKPOINT_NAME}.tmp{os.getpid()}").exists() and not (out / CHECKPOINT_NAME).exists()


def test_a_commit_removes_staging_folders_of_dead_writers_only(tmp_path):
    from augsense.io.results import remove_stale_staging

    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                                       # a PID that no longer runs
    stale, live = out / f".staging-{dead.pid}", out / f".staging-{os.getppid()}"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "run.json").write_text("{}")
    assert remove_stale_staging(out) == [stale]
    assert not stale.exists() and (live / "run.json").exists()


# --- output problems surface at once ------------------------------------------------------------


def read_only_folder(tmp_path: Path) -> Path | None:
    """A real read-only bind mount (root with mount rights), else None."""
    source, target = tmp_path / "ro-source", tmp_path / "ro"
    source.mkdir()
    target.mkdir()
    done = subprocess.run(["mount", "--bind", "-o", "ro", str(source), str(target)], capture_output=True)
    if done.returncode != 0:
        return None
    probe = subprocess.run(["touch", str(target / "x")], capture_output=True)
    if probe.returncode == 0:  # an old kernel ignored "ro" on the first bind
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], capture_output=True)
    return target


@pytest.mark.parametrize("kind", ["file", "inside-a-file", "proc", "read-only"])
def test_an_unusable_out_fails_at_once_before_any_forward_pass(tmp_path, config_file, planted_cli, capsys, kind):
    if kind == "file":
        out = tmp_path / "results"
        out.write_text("not a folder")
        expected = "is a file, not a folder"
    elif kind == "inside-a-file":
        (tmp_path / "results").write_text("not a folder")
        out, expected = tmp_path / "results" / "run", "Not a directory"
    elif kind == "proc":
        out, expected = Path("/proc/augsense-run"), "cannot create the run folder"
    else:
        mount = read_only_folder(tmp_path)
        if mount is None:
            pytest.skip("cannot bind-mount a read-only folder here (needs root with mount rights)")
        out, expected = mount, "Read-only file system"
    try:
        began = time.monotonic()
        code = planted_cli(["run", str(config_file), "--out", str(out), "--quiet"])
        elapsed = time.monotonic() - began
    finally:
        if kind == "read-only":
            subprocess.run(["umount", str(out)], capture_output=True)
    error = capsys.readouterr().err
    assert code == 2 and expected in error and error.count("\n") == 1, error
    assert planted_cli.forwards[0] == 0 and elapsed < 5, elapsed


def test_a_resume_into_a_missing_folder_is_refused_without_creating_it(tmp_path, config_file, planted_cli, capsys):
    assert planted_cli(["run", str(config_file), "--out", str(tmp_path / "typo"), "--quiet", "--resume"]) == 2
    assert "no run folder" in capsys.readouterr().err and not (tmp_path / "typo").exists()
    with pytest.raises(AugsenseError, match="no run folder"):
        run_sensitivity(planted_config(), model=planted_bundle(), images=planted_images(), out_dir=tmp_path / "typo",
                        resume=True, progress=False)
    assert not (tmp_path / "typo").exists() and planted_cli.forwards[0] == 0


def test_too_little_free_space_is_refused_before_the_forward_passes(tmp_path, config_file, planted_cli, capsys,
                                                                     monkeypatch):
    import shutil as shutil_module

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr("augsense.io.results.shutil.disk_usage",
                        lambda path: type(usage)(usage.total, usage.total - 1000, 1000))
    assert planted_cli(["run", str(config_file), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "not enough free space" in error and "0.0 MB free" in error and planted_cli.forwards[0] <= 1


def small_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("how", ["full-tmpfs", "injected-enospc"])
@pytest.mark.parametrize("previous", ["complete", "none"])
def test_a_full_disk_during_the_final_write_keeps_the_previous_set_or_marks_the_run_failed(
        tmp_path, config_file, planted_cli, capsys, monkeypatch, how, previous):
    import augsense.io.results as results

    disk = tmp_path / "disk"
    if how == "full-tmpfs":
        if not small_tmpfs(disk, "8m"):
            pytest.skip("cannot mount a small tmpfs here (needs root with mount rights)")
    else:
        disk.mkdir()
    try:
        out = disk / "run"
        if previous == "complete":
            assert planted_cli(["run", str(config_file), "--out", str(out), "--quiet"]) == 0
            old = {name: (out / name).read_bytes() for name in results.RESULT_FILES}
        original = results.write_result_tables

        def filling(result, folder, **kwargs):  # the disk fills up while the new set is being written
            if how == "full-tmpfs":
                with open(disk / "filler", "wb") as handle:
                    try:
                        while True:
                            handle.write(b"\0" * (1 << 20))
                    except OSError as error:
                        assert error.errno == errno.ENOSPC
            else:
                original(result, folder, **kwargs)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            original(result, folder, **kwargs)

        monkeypatch.setattr(results, "write_result_tables", filling)
        code = planted_cli(["run", str(config_file), "--out", str(out), "--quiet", "--seed", "5",
                            *(["--overwrite"] if previous == "complete" else [])])
        error = capsys.readouterr().err
        errors = [line for line in error.splitlines() if not line.startswith("augsense: warning:")]
        assert code == 2 and "No space left on device" in error and len(errors) == 1, error
        (disk / "filler").unlink(missing_ok=True)
        assert not [p for p in out.iterdir() if p.name.startswith(".staging")]
        if previous == "complete":
            assert "previous complete results are unchanged" in error
            assert {name: (out / name).read_bytes() for name in results.RESULT_FILES} == old
        else:  # on a really full disk even the small run.json update may fail: then it still says "running"
            info = json.loads((out / "run.json").read_text())
            assert not (out / "indices.parquet").exists()
            if how == "injected-enospc" or "says 'failed'" in error:
                assert info["status"] == "failed" and "No space left" in info["reason"]
                from augsense.report.data import read_report_data

                assert any("This run failed" in notice for notice in read_report_data(out).notices)
            else:
                assert info["status"] == "running" and "could not be updated either" in error
    finally:
        if how == "full-tmpfs":
            subprocess.run(["umount", str(disk)], capture_output=True)


# --- signals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
def test_a_signal_writes_a_checkpoint_and_the_resume_gives_the_uninterrupted_indices(
        tmp_path, config_file, planted_cli, uninterrupted, signum):
    out, gate = tmp_path / "run", tmp_path / "gate"
    process = start(tmp_path, "run", str(config_file), "--out", str(out), "--quiet", gate=gate, pause_at=4)
    wait_for(gate.with_name("gate.reached"), process)  # paused inside a block, no checkpoint yet
    assert not (out / CHECKPOINT_NAME).exists() and json.loads((out / "run.json").read_text())["status"] == "running"
    process.send_signal(signum)
    stderr = read_until(process, "received")  # the handler has run: now let the paused block finish
    gate.unlink()
    stderr += process.communicate(timeout=300)[1]
    assert process.returncode == 128 + signum, stderr
    name, blocks = signal.Signals(signum).name, uninterrupted.design.n_blocks
    done = 4 - (uninterrupted.forwards - blocks)  # the paused block finishes before the checkpoint
    assert 1 <= done < blocks
    assert f"interrupted ({name}) after {done} of {blocks} blocks; checkpoint written; resume with: augsense run " \
        f"{config_file} --out {out} --quiet --resume" in stderr, stderr
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "interrupted" and info["blocks_done"] == done and not (out / LOCK_NAME).exists()
    from augsense.report.data import read_report_data

    assert any("interrupted" in notice and "--resume" in notice for notice in read_report_data(out).notices)

    assert planted_cli(["run", str(config_file), "--out", str(out), "--quiet", "--resume"]) == 0
    assert planted_cli.forwards[0] == uninterrupted.forwards - done  # only the unfinished blocks are computed
    folder = load_run(out)
    assert folder.info["status"] == "complete" and not (out / CHECKPOINT_NAME).exists()
    assert_equal_indices(folder, uninterrupted)


@pytest.mark.slow
def test_a_second_signal_aborts_at_once_and_a_killed_run_reports_with_a_notice(tmp_path, config_file):
    out, gate = tmp_path / "run", tmp_path / "gate"
    process = start(tmp_path, "run", str(config_file), "--out", str(out), "--quiet", gate=gate, pause_at=4)
    wait_for(gate.with_name("gate.reached"), process)
    process.send_signal(signal.SIGTERM)
    stderr = read_until(process, "received")
    from augsense.interrupts import REPEAT_S

    time.sleep(REPEAT_S + 0.5)  # sooner, it would count as the same request
    process.send_signal(signal.SIGTERM)  # the gate stays: only the second signal can end the run
    stderr += process.communicate(timeout=120)[1]
    assert process.returncode == 143 and "SIGTERM received twice: aborted at once" in stderr, stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert not (out / CHECKPOINT_NAME).exists()  # checkpoints were off: nothing new was written

    killed, gate2 = tmp_path / "killed", tmp_path / "gate2"
    process = start(tmp_path, "run", str(config_file), "--out", str(killed), "--quiet", gate=gate2, pause_at=3)
    wait_for(gate2.with_name("gate2.reached"), process)
    process.kill()
    process.wait()
    from augsense.report.html import write_report

    page = write_report(killed).read_text()
    assert "did not finish (status: running" in page and "no longer running it" in page
    config = SensitivityConfig.from_toml(killed / "config.toml")
    assert config.n == N  # config.toml is there from the start


# --- a rank that stops answering ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_a_stopped_rank_makes_rank_0_stop_with_a_message_within_the_timeout(tmp_path, config_file):
    out, port, timeout = tmp_path / "run", free_port(), 4
    ranks, gates = [], []
    for rank in range(2):
        go = tmp_path / f"go{rank}"
        go.write_text("wait")
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_RANK": str(rank), "AUGSENSE_COLLECTIVE_TIMEOUT": str(timeout), "START": str(go)}
        gate = tmp_path / f"gate{rank}"
        # rank 1 pauses in its 2nd block; rank 0 runs on (its gate is opened at once)
        ranks.append(start(tmp_path, "run", str(config_file), "--out", str(out), "--quiet", "--device", "cpu",
                           gate=gate, pause_at=2 if rank else 10 ** 6, env=env))
        gates.append(gate)
    try:
        for rank, process in enumerate(ranks):  # both imported: start them together (the timeout is short)
            wait_for(tmp_path / f"go{rank}.ready", process)
        for rank in range(2):
            (tmp_path / f"go{rank}").unlink()
        wait_for(tmp_path / "gate1.reached", ranks[1])
        os.kill(ranks[1].pid, signal.SIGSTOP)
        gates[1].unlink()
        stopped = time.monotonic()
        _, stderr = ranks[0].communicate(timeout=timeout + 120)
        waited = time.monotonic() - stopped
        assert ranks[0].returncode == 2, stderr
        line = [text for text in stderr.splitlines() if text.startswith("augsense: error:")]
        assert line and "rank 1 did not answer within 4 s (AUGSENSE_COLLECTIVE_TIMEOUT)" in line[0], stderr
        assert waited < timeout + 60, waited
    finally:
        for process in ranks:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_sigterm_to_rank_0_stops_every_rank_at_one_round_with_one_checkpoint(tmp_path, config_file, planted_cli,
                                                                              uninterrupted):
    out, port = tmp_path / "run", free_port()
    ranks = []
    for rank in range(2):
        go = tmp_path / f"go{rank}"
        go.write_text("wait")
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_RANK": str(rank), "START": str(go)}
        ranks.append(start(tmp_path, "run", str(config_file), "--out", str(out), "--quiet", "--device", "cpu",
                           gate=tmp_path / f"gate{rank}", pause_at=4 if rank == 0 else 10 ** 6, env=env))
    try:
        for rank, process in enumerate(ranks):
            wait_for(tmp_path / f"go{rank}.ready", process)
        for rank in range(2):
            (tmp_path / f"go{rank}").unlink()
        wait_for(tmp_path / "gate0.reached", ranks[0])
        ranks[0].send_signal(signal.SIGTERM)  # rank 1 gets no signal: it learns at the next round
        stderr = read_until(ranks[0], "received")
        (tmp_path / "gate0").unlink()
        stderr += ranks[0].communicate(timeout=300)[1]
        other = ranks[1].communicate(timeout=300)[1]
        assert ranks[0].returncode == 143 and ranks[1].returncode == 143, stderr + other
        assert "checkpoint written; resume with: augsense run" in stderr and "resume with" not in other
    finally:
        for process in ranks:
            process.kill()
            process.wait()
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert planted_cli(["run", str(config_file), "--out", str(out), "--quiet", "--resume"]) == 0  # one process
    assert_equal_indices(load_run(out), uninterrupted)


def test_a_repeated_signal_within_the_repeat_window_is_the_same_request(monkeypatch):
    import augsense.interrupts as interrupts

    clock = [100.0]
    monkeypatch.setattr(interrupts.time, "monotonic", lambda: clock[0])
    request = interrupts.StopRequest(rank=1)
    request._handle(signal.SIGTERM, None)
    clock[0] += interrupts.REPEAT_S / 2
    request._handle(signal.SIGTERM, None)  # torchrun delivers its SIGTERM twice: not an abort
    assert request and request.signum == signal.SIGTERM
    clock[0] += interrupts.REPEAT_S
    with pytest.raises(interrupts.RunInterrupted) as aborted:
        request._handle(signal.SIGINT, None)
    assert aborted.value.immediate and aborted.value.exit_code == 130


@pytest.mark.slow
def test_sigterm_to_real_torchrun_checkpoints_every_rank_and_resumes_exactly(tmp_path, config_file, planted_cli,
                                                                            uninterrupted):
    out, gate = tmp_path / "run", tmp_path / "gate"
    gate.write_text("hold")
    torchrun = Path(sys.executable).with_name("torchrun")
    process = subprocess.Popen([str(torchrun), "--standalone", "--nproc_per_node=2", str(PLANTED_CLI), "run",
                                str(config_file), "--out", str(out), "--quiet", "--device", "cpu"],
                               env={**os.environ, "OMP_NUM_THREADS": "1", "GATE": str(gate), "PAUSE_AT": "4"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(tmp_path / "gate.reached", process)
        process.send_signal(signal.SIGTERM)  # torchrun passes it on to both ranks (rank 0 gets it twice)
        stderr = read_until(process, "SIGTERM received")
        gate.unlink()
        stderr += process.communicate(timeout=300)[1]
    finally:
        process.kill()
        process.wait()
    assert "checkpoint written; resume with: augsense run" in stderr and "received twice" not in stderr, stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    assert planted_cli(["run", str(config_file), "--out", str(out), "--quiet", "--resume"]) == 0
    assert_equal_indices(load_run(out), uninterrupted)


@pytest.mark.parametrize("value", ["-5", "0", "nan", "soon"])
def test_a_bad_collective_timeout_is_refused_with_one_line(monkeypatch, value):
    from augsense.parallel import TIMEOUT_ENV, collective_timeout

    monkeypatch.setenv(TIMEOUT_ENV, value)
    with pytest.raises(AugsenseError, match=f"{TIMEOUT_ENV}=.* must be a positive number of seconds"):
        collective_timeout()
    monkeypatch.setenv(TIMEOUT_ENV, "300")
    assert collective_timeout() == 300.0
