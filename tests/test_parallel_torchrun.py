"""The real launcher: ``torchrun --nproc_per_node=2`` on the command line, gloo on the CPU.

The command line is ``augsense.cli.main`` behind the planted-model driver of test_resume.py (the
CLI cannot name the planted network); torchrun's elastic agent, rendezvous and environment are
the real ones. Slow: each torchrun process imports torch afresh.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from augsense.io.results import load_run
from test_resume import command, planted_config, write_config
from augsense.analyses.sensitivity import run_sensitivity
from planted import planted_bundle, planted_images

TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_torchrun_ranks_write_the_indices_of_one_process(tmp_path, world):
    config, out = write_config(tmp_path / "run.toml", checkpoint_every=0.0), tmp_path / "run"
    driver = command("run", str(config), "--out", str(out), "--quiet")[1:]
    result = subprocess.run([str(TORCHRUN), "--standalone", f"--nproc_per_node={world}", *driver],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    folder = load_run(out)
    assert folder.info["status"] == "complete" and folder.info["world_size"] == world
    reference = run_sensitivity(planted_config(checkpoint_every=0.0), model=planted_bundle(), images=planted_images(),
                                progress=False)
    for quantity in ("first_order", "total_order"):
        np.testing.assert_allclose(folder.map("readout", quantity), getattr(reference.result, quantity), rtol=1e-10,
                                   atol=1e-14, equal_nan=True, err_msg=quantity)
