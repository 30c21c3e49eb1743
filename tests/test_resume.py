"""Resume after a kill: a real ``augsense run`` process is SIGKILLed midway and resumed.

The subprocess runs the real command line (``augsense.cli.main``) on the planted network; a
driver swaps the model and image loaders for the planted ones and slows each forward pass down a
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
from augsense.io.checkpoints import CHECKPOINT_NAME, load_checkpoint, remove_checkpoint, save_checkpoint
from augsense.io.results import load_run
from planted import PLANTED_CONFIG, planted_bundle, planted_images

TESTS = Path(__file__).parent
N, BATCH = 128, 20  # 32 blocks of 4 rows × 5 members

DRIVER = """
import sys, time
sys.path.insert(0, {tests!r})
import augsense.analyses.sensitivity as sensitivity
from planted import planted_bundle, planted_images

def load_model(name, weights=None, **kwargs):
    bundle = planted_bundle()
    bundle.module.register_forward_pre_hook(lambda module, args: time.sleep({delay}))
    return bundle

sensitivity.load_model = load_model
sensitivity.load_images = lambda *args, **kwargs: planted_images()
from augsense.cli import main
sys.exit(main(sys.argv[1:]))
"""


def planted_config(**changes) -> SensitivityConfig:
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(n=N, batch_size=BATCH, checkpoint_every=0.2)
    values.update(changes)
    return SensitivityConfig(**values)


def write_config(path: Path, **changes) -> Path:
    path.write_text(planted_config(**changes).to_toml())
    return path


def command(tmp: Path, *args: str, delay: float = 0.0) -> list[str]:
    driver = tmp / f"driver{int(delay * 1000)}.py"
    driver.write_text(DRIVER.format(tests=str(TESTS), delay=delay))
    return [sys.executable, str(driver), *args]


@pytest.fixture(scope="module")
def uninterrupted():
    return run_sensitivity(planted_config(), model=planted_bundle(), images=planted_images(), progress=False)


def test_a_sigkilled_run_resumes_to_the_uninterrupted_indices(tmp_path, uninterrupted):
    config, out = write_config(tmp_path / "run.toml"), tmp_path / "run"
    process = subprocess.Popen(command(tmp_path, "run", str(config), "--out", str(out), "--quiet", delay=0.05),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint, deadline = out / CHECKPOINT_NAME, time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if checkpoint.exists() and len(load_checkpoint(checkpoint)["done"]) >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    done = load_checkpoint(checkpoint)["done"]
    assert 3 <= len(done) < 32  # no results: run.json, if written at the start, still says "running"
    assert not (out / "run.json").exists() or json.loads((out / "run.json").read_text())["status"] == "running"

    resumed = subprocess.run(command(tmp_path, "run", str(config), "--out", str(out), "--resume", "--quiet"),
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
    monkeypatch.setattr(sensitivity, "load_images", lambda *args, **kwargs: planted_images())
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
    state["done"] = state["done"] + [31]  # claims a block its sums do not contain
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
    (path.parent / ".c.pt.tmp12345").write_bytes(b"left by a writer killed mid-write")
    assert load_checkpoint(path)["value"].tolist() == [0, 1, 2, 3]  # the last complete checkpoint still reads
    with pytest.raises(AugsenseError, match="another design"):
        load_checkpoint(path, fingerprint="y")
    remove_checkpoint(path)  # another writer's temporary file (another PID) is not ours to delete
    assert [p.name for p in path.parent.iterdir()] == [".c.pt.tmp12345"]
