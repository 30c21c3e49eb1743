"""Distributed runs: W gloo processes on the CPU give the indices of one process.

Workers are forked with ``torch.multiprocessing`` (fork: no re-import, so each launch costs well
under a second) and get the same environment ``torchrun`` sets
(MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK), so ``run_sensitivity`` joins the process group
exactly as under torchrun. The real ``torchrun -m augsense run`` is in test_parallel_torchrun.py.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from augsense.errors import AugsenseError
from augsense.parallel import BlockSchedule, Shard

# n = 64 with batch 20 and 3 factors: group 5, blocks of 4 rows, 16 blocks (not divisible by 3)
N, BATCH = 64, 20
QUANTITIES = ("first_order", "total_order", "first_order_ci", "total_order_ci")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _worker(rank: int, world: int, port: int, out_dir: str | None, result_file: str | None, resume: bool,
            stop_after: int | None, checkpoint_every: float) -> None:
    if world > 1:  # what torchrun sets
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from augsense.analyses.sensitivity import run_sensitivity
    from augsense.config import SensitivityConfig
    from planted import PLANTED_CONFIG, planted_bundle, planted_images

    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(n=N, batch_size=BATCH, checkpoint_every=checkpoint_every)
    try:
        run = run_sensitivity(SensitivityConfig(**values), model=planted_bundle(), images=planted_images(),
                              out_dir=out_dir, resume=resume, progress=False, stop_after_blocks=stop_after)
        if rank == 0 and result_file is not None:
            np.savez(result_file, complete=run.complete, world=run.shard.world_size,
                     **{q: getattr(run.result, q) for q in QUANTITIES})
        else:
            assert run.result is None  # only rank 0 holds the merged result
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(world: int, tmp: Path, name: str, *, out_dir: Path | None = None, resume: bool = False,
           stop_after: int | None = None, checkpoint_every: float = 0.0) -> dict[str, np.ndarray]:
    """Run the planted analysis on ``world`` processes; rank 0's result arrays."""
    result = tmp / f"{name}.npz"
    mp.start_processes(_worker, nprocs=world, start_method="fork", join=True,
                       args=(world, free_port(), None if out_dir is None else str(out_dir), str(result), resume,
                             stop_after, checkpoint_every))
    with np.load(result) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, np.ndarray]:
    """One process, in this one, with one thread like the workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = tmp_path_factory.mktemp("reference") / "one.npz"
        _worker(0, 1, 0, None, str(result), False, None, 0.0)
    finally:
        torch.set_num_threads(threads)
    with np.load(result) as data:
        return {key: data[key] for key in data.files}


def assert_same(result: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    """Indices to 1e-10 relative; CI bounds to 1e-7 absolute.

    The planted units are exact functions of one factor, so their standard errors are ~1e-8 and
    come from differences of float64 sums that cancel almost fully: their rounding depends on the
    order in which ranks' sums are merged, while the indices themselves do not.
    """
    for q in QUANTITIES:
        tolerance = dict(rtol=1e-10, atol=1e-14) if not q.endswith("_ci") else dict(rtol=0, atol=1e-7)
        np.testing.assert_allclose(result[q], reference[q], equal_nan=True, err_msg=q, **tolerance)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_give_the_indices_of_one_process(world, reference, tmp_path):
    result = launch(world, tmp_path, f"w{world}")
    assert int(result["world"]) == world and bool(result["complete"])
    assert_same(result, reference)
    assert np.isfinite(reference["total_order"][:3]).all()  # a real answer, not all-NaN equality


def test_a_killed_two_rank_run_resumes_on_three_ranks_and_on_one(reference, tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        partial = launch(2, tmp_path, f"partial-{out.name}", out_dir=out, stop_after=3)
        assert not bool(partial["complete"])
        assert (out / "checkpoint.pt").is_file() and not list(out.glob("checkpoint.rank*"))
    three = launch(3, tmp_path, "three", out_dir=first, resume=True)
    one = launch(1, tmp_path, "one", out_dir=second, resume=True)
    for result in (three, one):
        assert bool(result["complete"])
        assert_same(result, reference)
    assert not (first / "checkpoint.pt").exists()


def test_collective_checkpoints_during_a_distributed_run_resume_exactly(reference, tmp_path):
    # checkpoint after every round, stop after 5 rounds: the last checkpoint holds 10 of 16 blocks
    partial = launch(2, tmp_path, "partial", out_dir=tmp_path / "run", stop_after=5, checkpoint_every=1e-9)
    assert not bool(partial["complete"])
    from augsense.io.checkpoints import load_checkpoint

    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["done"].tolist() == [[0, 10]] and state["world_size"] == 2  # finished blocks as ranges
    assert_same(launch(2, tmp_path, "resumed", out_dir=tmp_path / "run", resume=True), reference)


# ---- the schedule on its own (single process) ------------------------------------------------------------------

def test_schedule_visits_each_unfinished_block_of_its_rank_once():
    assert list(Shard(rank=1, world_size=3).blocks(10)) == [1, 4, 7]
    todo = BlockSchedule(10, Shard(rank=1, world_size=3), done={4, 5}).todo
    assert list(todo) == [1, 7] and len(todo) == 2
    schedule = BlockSchedule(5, Shard(), done={3})
    assert list(schedule) == [0, 1, 2, 4] and schedule.complete
    assert set(schedule.done) == {0, 1, 2, 3, 4} and schedule.done.ranges.tolist() == [[0, 5]]


def test_schedule_checkpoints_and_stops_early():
    saved: list[list[int]] = []
    schedule = BlockSchedule(6, Shard(), checkpoint_every=1e-9, on_checkpoint=lambda done: saved.append(sorted(done)),
                             stop_after=4)
    assert list(schedule) == [0, 1, 2, 3]
    assert not schedule.complete
    assert saved[-1] == [0, 1, 2, 3] and saved[0] == [0]


def test_a_stop_after_the_last_block_is_a_complete_run():
    schedule = BlockSchedule(3, Shard(), stop_after=3)
    assert list(schedule) == [0, 1, 2] and schedule.complete


def test_a_broken_torchrun_environment_is_refused(monkeypatch):
    from augsense.parallel import current_shard

    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(AugsenseError, match="WORLD_SIZE"):
        current_shard()
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AugsenseError, match="torchrun"):
        current_shard()
