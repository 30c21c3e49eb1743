"""Resume after a kill: a real ``augsense run`` process is SIGKILLed midway and resumed.

The subprocess runs the real command line (``augsense.cli.main``) on the planted network;
tests/planted_cli.py swaps the model and image loaders for the planted ones and slows each forward pass down a
little, so that the kill lands between checkpoints. The resumed indices must equal those of an
uninterrupted run; a checkpoint damaged on disk must be refused with a clear message.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from augsense.analyses.sensitivity import run_sensitivity
from augsense.config import SensitivityConfig
from augsense.errors import AugsenseError
from augsense.io.checkpoints import (CHECKPOINT_NAME, finished_blocks, load_checkpoint, remove_checkpoint,
                                     save_checkpoint)
from augsense.io.results import load_run
from planted import PLANTED_CONFIG, planted_bundle, planted_images

TESTS = Path(__file__).parent
N, BATCH = 128, 20  # 32 blocks of 4 rows × 5 members

PLANTED_CLI = TESTS / "planted_cli.py"  # augsense on the planted network, forwards slowed down


def planted_config(**changes) -> SensitivityConfig:
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(n=N, batch_size=BATCH, checkpoint_every=0.2)
    values.update(changes)
    return SensitivityConfig(**values)


def write_config(path: Path, **changes) -> Path:
    path.write_text(planted_config(**changes).to_toml())
    return path


def command(*args: str, delay: float = 0.0) -> list[str]:
    return [sys.executable, str(PLANTED_CLI), f"--forward-delay={delay}", *args]


@pytest.fixture(scope="module")
def uninterrupted():
    return run_sensitivity(planted_config(), model=planted_bundle(), images=planted_images(), progress=False)


def test_a_sigkilled_run_resumes_to_the_uninterrupted_indices(tmp_path, uninterrupted):
    config, out = write_config(tmp_path / "run.toml"), tmp_path / "run"
    process = subprocess.Popen(command("run", str(config), "--out", str(out), "--quiet", delay=0.05),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint, deadline = out / CHECKPOINT_NAME, time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists() and len(finished_blocks(load_checkpoint(checkpoint))) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    done = finished_blocks(load_checkpoint(checkpoint))
    assert 3 <= len(done) < 32  # no results: run.json, if written at the start, still says "running"
    assert not (out / "run.json").exists() or json.loads((out / "run.json").read_text())["status"] == "running"

    resumed = subprocess.run(command("run", str(config), "--out", str(out), "--resume", "--quiet"),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    folder = load_run(out)
    assert folder.info["status"] == "complete" and not checkpoint.exists()
    for quantity in ("first_order", "total_order"):
        np.testing.assert_allclose(folder.map("readout", quantity), getattr(uninterrupted.result, quantity),
                                   rtol=1e-10, atol=1e-14, equal_nan=True, err_msg=quantity)


def partial_run(out: Path, **changes) -> Path:
    run = run_sensitivity(planted_config(**changes), model=planted_bundle(), images=planted_images(), out_dir=out,
                          progress=False, stop_after_blocks=5)
    assert not run.complete
    return out / CHECKPOINT_NAME


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "foreign"])
def test_a_damaged_checkpoint_is_refused_with_a_clear_message(tmp_path, damage, monkeypatch, capsys):
    import augsense.analyses.sensitivity as sensitivity
    from augsense.cli import main

    monkeypatch.setattr(sensitivity, "load_model", lambda name, weights=None, **kwargs: planted_bundle())
    monkeypatch.setattr(sensitivity, "images_for", lambda *args, **kwargs: planted_images())
    checkpoint = partial_run(tmp_path / "run")
    data = bytearray(checkpoint.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"PK\x03\x04 a zip file that is not ours")
    checkpoint.write_bytes(bytes(data))
    config = write_config(tmp_path / "run.toml")
    capsys.readouterr()  # the partial run's own warnings
    code = main(["run", str(config), "--out", str(tmp_path / "run"), "--resume", "--quiet"])
    error = capsys.readouterr().err
    assert code == 2, error
    expected = "corrupt" if damage in ("flip", "truncate") else "not an augsense checkpoint"
    assert error.startswith("augsense: error:") and expected in error and "without --resume" in error


def test_a_checkpoint_of_another_design_or_none_at_all_is_refused(tmp_path):
    checkpoint = partial_run(tmp_path / "run")
    with pytest.raises(AugsenseError, match="cannot resume: seed differs"):
        run_sensitivity(planted_config(seed=1), model=planted_bundle(), images=planted_images(),
                        out_dir=tmp_path / "run", resume=True, progress=False)
    checkpoint.unlink()
    with pytest.raises(AugsenseError, match="no checkpoint"):
        run_sensitivity(planted_config(), model=planted_bundle(), images=planted_images(), out_dir=tmp_path / "run",
                        resume=True, progress=False)
    with pytest.raises(AugsenseError, match="--out"):
        run_sensitivity(planted_config(), model=planted_bundle(), images=planted_images(), resume=True,
                        progress=False)


def test_a_checkpoint_whose_blocks_disagree_with_its_sums_is_refused(tmp_path):
    checkpoint = partial_run(tmp_path / "run")
    state = load_checkpoint(checkpoint)
    state["done"] = np.vstack([state["done"], [[31, 32]]])  # claims a block its sums do not contain
    save_checkpoint(checkpoint, state)
    with pytest.raises(AugsenseError, match="inconsistent"):
        run_sensitivity(planted_config(), model=planted_bundle(), images=planted_images(), out_dir=tmp_path / "run",
                        resume=True, progress=False)


def test_checkpoint_writes_are_atomic_and_leave_no_temporary_files(tmp_path):
    path = tmp_path / "deep" / "c.pt"
    save_checkpoint(path, {"fingerprint": "x", "value": np.arange(3)})
    save_checkpoint(path, {"fingerprint": "x", "value": np.arange(4)})
    assert load_checkpoint(path, fingerprint="x")["value"].tolist() == [0, 1, 2, 3]
    assert sorted(p.name for p in path.parent.iterdir()) == ["c.pt"]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (path.parent / f".c.pt.tmp{dead.pid}").write_bytes(b"left by a writer killed mid-write")
    live = os.getppid()
    (path.parent / f".c.pt.tmp{live}").write_bytes(b"being written by a live process")
    assert load_checkpoint(path)["value"].tolist() == [0, 1, 2, 3]  # the last complete checkpoint still reads
    with pytest.raises(AugsenseError, match="another design"):
        load_checkpoint(path, fingerprint="y")
    remove_checkpoint(path)  # a dead writer's leftover goes; a live process's file is not ours to delete
    assert [p.name for p in path.parent.iterdir()] == [f".c.pt.tmp{live}"]


# -- checkpoints cannot carry code --------------------------------------------------------------------
class Payload:
    """Unpickling this creates the marker file (what a crafted checkpoint would do, and worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_checkpoint(path: Path, marker: Path, header: bytes) -> None:
    """A checkpoint whose payload is a torch.save pickle with a code payload, under a valid checksum."""
    import hashlib
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"fingerprint": "x", "done": [], "accumulator": Payload(marker)}, buffer)
    payload = buffer.getvalue()
    path.write_bytes(header + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def test_the_payload_is_live_under_a_pickle_loader(tmp_path):
    """The crafted file of the next test does run code when unpickled (so that test can fail)."""
    import torch

    marker, path = tmp_path / "ran", tmp_path / "c.pt"
    pickle_checkpoint(path, marker, b"AUGSENSE-CHECKPOINT 1 sha256=")
    torch.load(io_bytes(path.read_bytes().partition(b"\n")[2]), weights_only=False)
    assert marker.exists()


def io_bytes(data: bytes):
    import io

    return io.BytesIO(data)


def test_a_pickle_payload_checkpoint_is_refused_without_running_it(tmp_path):
    out = tmp_path / "run"
    partial_run(out)
    marker = tmp_path / "payload-ran"
    pickle_checkpoint(out / CHECKPOINT_NAME, marker, b"AUGSENSE-CHECKPOINT 1 sha256=")  # what earlier versions wrote
    config = write_config(tmp_path / "run.toml")
    resumed = subprocess.run(command("run", str(config), "--out", str(out), "--resume", "--quiet"),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 2, resumed.stderr
    assert not marker.exists()
    lines = resumed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("augsense: error: checkpoint"), resumed.stderr
    assert "format '1'" in lines[0] and "pickle" in lines[0]
    # the same payload under the current header: parsed as JSON, so malformed, and still nothing runs
    pickle_checkpoint(out / CHECKPOINT_NAME, marker, b"AUGSENSE-CHECKPOINT 2 sha256=")
    with pytest.raises(AugsenseError, match="is malformed"):
        load_checkpoint(out / CHECKPOINT_NAME)
    assert not marker.exists()


def test_checkpoint_state_round_trips_through_the_code_free_format():
    import torch

    from augsense.io.checkpoints import decode_state, encode_state

    state = {"a": torch.arange(6, dtype=torch.float64).reshape(2, 3), "b": np.array([True, False]),
             "c": {"d": (1, 2.5, None, "x"), "e": [np.int64(3), torch.zeros(0, dtype=torch.int32)]},
             "f": float("nan"), "g": torch.tensor(7, dtype=torch.uint8)}
    back = decode_state(encode_state(state))
    assert torch.equal(back["a"], state["a"]) and back["a"].dtype == torch.float64
    assert back["b"].tolist() == [True, False] and isinstance(back["b"], np.ndarray)
    assert back["c"]["d"] == (1, 2.5, None, "x") and back["c"]["e"][0] == 3
    assert back["c"]["e"][1].shape == (0,) and back["c"]["e"][1].dtype == torch.int32
    assert np.isnan(back["f"]) and back["g"].item() == 7 and back["g"].shape == ()
    payload = bytearray(encode_state(state))
    inplace = decode_state(payload)  # a writable buffer: arrays are views of it, 8-byte aligned
    assert inplace["a"].data_ptr() % 8 == 0 and np.shares_memory(inplace["a"].numpy(), np.frombuffer(payload, np.uint8))
    inplace["a"] += 1  # writable, like any loaded tensor
    with pytest.raises(TypeError):
        encode_state({"x": object()})


# -- one line instead of a traceback --------------------------------------------------------------------
def cli_resume(tmp_path: Path, monkeypatch, capsys, **changes) -> tuple[int, str]:
    import augsense.analyses.sensitivity as sensitivity
    from augsense.cli import main

    monkeypatch.setattr(sensitivity, "load_model", lambda name, weights=None, **kwargs: planted_bundle())
    monkeypatch.setattr(sensitivity, "images_for", lambda *args, **kwargs: planted_images())
    config = write_config(tmp_path / "run.toml", **changes)
    capsys.readouterr()  # whatever the partial run before printed (its warnings)
    code = main(["run", str(config), "--out", str(tmp_path / "run"), "--resume", "--quiet"])
    return code, capsys.readouterr().err


def test_an_unreadable_checkpoint_is_one_line(tmp_path, monkeypatch, capsys):
    import augsense.io.checkpoints as checkpoints

    checkpoint = partial_run(tmp_path / "run")

    def denied(file, mode="r", *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    # chmod 000 does not stop root, who runs these tests in CI: open() in checkpoints.py is denied instead
    monkeypatch.setattr(checkpoints, "open", denied, raising=False)
    code, error = cli_resume(tmp_path, monkeypatch, capsys)
    assert code == 2 and len(error.strip().splitlines()) == 1, error
    assert "cannot read the checkpoint" in error and "Permission denied (EACCES)" in error
    monkeypatch.delattr(checkpoints, "open")
    checkpoint.unlink()
    checkpoint.mkdir()  # a folder where the checkpoint should be
    code, error = cli_resume(tmp_path, monkeypatch, capsys)
    assert code == 2 and len(error.strip().splitlines()) == 1 and "is not a file" in error, error


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_a_checkpoint_without_read_permission_is_one_line(tmp_path, monkeypatch, capsys):
    checkpoint = partial_run(tmp_path / "run")
    checkpoint.chmod(0)
    try:
        code, error = cli_resume(tmp_path, monkeypatch, capsys)
    finally:
        checkpoint.chmod(0o644)
    assert code == 2 and len(error.strip().splitlines()) == 1 and "cannot read the checkpoint" in error, error


class FailingOpen:
    """``open`` for checkpoints.py only: ENOSPC on write (a full disk), other errors on open."""

    def __init__(self, failure: str) -> None:
        import errno

        self.failure, self.number = failure, getattr(errno, failure)

    def __call__(self, file, mode="r", *args, **kwargs):
        if self.failure != "ENOSPC":  # EROFS: read-only folder; EACCES: no write permission
            raise OSError(self.number, os.strerror(self.number), str(file))
        real = open(file, mode, *args, **kwargs)
        number = self.number

        class Full:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                real.close()

            def write(self, data):
                real.write(data[: len(data) // 2])  # part of it lands, then the disk is full
                raise OSError(number, os.strerror(number))

            def __getattr__(self, name):
                return getattr(real, name)

        return Full()


@pytest.mark.parametrize("failure", ["ENOSPC", "EROFS", "EACCES"])
def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_previous_one(tmp_path, monkeypatch, failure):
    import augsense.io.checkpoints as checkpoints

    path = tmp_path / "c.pt"
    save_checkpoint(path, {"fingerprint": "x", "value": np.arange(3)})
    monkeypatch.setattr(checkpoints, "open", FailingOpen(failure), raising=False)
    with pytest.raises(AugsenseError) as refused:
        save_checkpoint(path, {"fingerprint": "x", "value": np.arange(4)})
    message = str(refused.value)
    assert "\n" not in message and f"({failure})" in message and "previous checkpoint" in message
    monkeypatch.undo()
    assert load_checkpoint(path)["value"].tolist() == [0, 1, 2] and [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_a_full_disk_during_a_run_stops_it_with_one_line(tmp_path, monkeypatch, capsys):
    import augsense.analyses.sensitivity as sensitivity
    import augsense.io.checkpoints as checkpoints
    from augsense.cli import main

    monkeypatch.setattr(sensitivity, "load_model", lambda name, weights=None, **kwargs: planted_bundle())
    monkeypatch.setattr(sensitivity, "images_for", lambda *args, **kwargs: planted_images())
    monkeypatch.setattr(checkpoints, "open", FailingOpen("ENOSPC"), raising=False)
    config = write_config(tmp_path / "run.toml", checkpoint_every=1e-6)  # a checkpoint after the first round
    code = main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    error = capsys.readouterr().err
    assert code == 2 and error.strip().splitlines()[-1].startswith("augsense: error: cannot write the checkpoint")
    assert "No space left on device (ENOSPC)" in error and "Traceback" not in error
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()  # no half-written checkpoint took its place
    assert not list((tmp_path / "run").glob(".checkpoint.pt.tmp*"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    run_sensitivity(planted_config(n=32), model=planted_bundle(), images=planted_images(), out_dir=out,
                    progress=False)
    return out


def malformed_copy(finished: Path, tmp_path: Path, **entries) -> Path:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    info = json.loads((out / "run.json").read_text())
    info.update(entries)
    (out / "run.json").write_text(json.dumps(info))
    return out


def test_malformed_run_json_entries_become_notices_and_are_ignored(finished, tmp_path):
    from augsense.report.data import read_report_data

    out = malformed_copy(finished, tmp_path, layers=5, timings={"total_s": "soon"}, players="brightness")
    data = read_report_data(out)
    malformed = [n for n in data.notices if "is malformed" in n]
    assert len(malformed) == 3 and all("\n" not in n for n in malformed)
    assert any("layers must be a table of layer names" in n and "got 5" in n for n in malformed)
    assert data.layer_names == ["readout"] and data.players == ["brightness", "saturation", "hflip"]  # from tables


@pytest.mark.slow
def test_augsense_report_draws_a_run_whose_run_json_has_layers_5(finished, tmp_path):
    out = malformed_copy(finished, tmp_path, layers=5)
    report = subprocess.run([sys.executable, "-m", "augsense", "report", str(out)], capture_output=True, text=True,
                            timeout=600)
    assert report.returncode == 0, report.stderr
    assert "is malformed: layers must be a table of layer names" in (out / "report.html").read_text()


def test_a_run_json_that_is_not_a_table_with_nothing_to_rebuild_it_is_one_line(finished, tmp_path):
    out = malformed_copy(finished, tmp_path)
    (out / "run.json").write_text("[1, 2]")
    (out / "config.toml").unlink()
    report = subprocess.run([sys.executable, "-m", "augsense", "report", str(out)], capture_output=True, text=True,
                            timeout=300)
    lines = report.stderr.strip().splitlines()
    assert report.returncode == 2 and len(lines) == 1, report.stderr
    assert lines[0].startswith("augsense: error: run.json in") and "malformed" in lines[0]


def test_the_command_line_refuses_a_resume_with_other_factors_and_bounds_leaving_the_folder_as_it_was(
        tmp_path, monkeypatch, capsys):
    checkpoint = partial_run(tmp_path / "run")
    folder = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    code, error = cli_resume(tmp_path, monkeypatch, capsys, factors=["brightness", "saturation", "grayscale"],
                             bounds={"brightness": {"factor": [0.5, 1.0]}, "saturation": {"factor": [0.0, 1.0]}})
    lines = error.strip().splitlines()
    assert code == 2 and len(lines) == 1, error
    assert lines[0].startswith("augsense: error: cannot resume: factors, bounds, switches, order differ from the "
                               "checkpoint's run (factors: ")
    assert "bounds.brightness.factor: [0.1,1.0] → [0.5,1.0]" in lines[0]
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == folder
    assert checkpoint.exists()


def test_analyses_that_read_a_run_folder_refuse_a_malformed_run_json_in_one_line(finished, tmp_path, capsys):
    from augsense.cli import main
    from augsense.io.results import load_run

    out = malformed_copy(finished, tmp_path, layers=5)
    with pytest.raises(AugsenseError, match=r"^run.json in .* is malformed: layers must be a table of layer names"):
        load_run(out)
    assert main(["maps", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is malformed: layers must be" in lines[0]
    assert load_run(finished).layer_names == ["readout"]  # the unharmed folder still reads
