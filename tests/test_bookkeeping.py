"""A run's per-N bookkeeping does not grow with N: block sets are ranges and schedules are lazy.

Before: Python lists and sets of block indices cost ~120 bytes a block (about 0.7 GB at N = 2**26
with 12 rows a block, 8 GB with 1). See bench/bench_memory.py for peak RSS.
"""

from __future__ import annotations

import random
import tracemalloc

import numpy as np
import pytest

from augsense.analyses.sensitivity import run_sensitivity
from augsense.blockset import BlockSet
from augsense.config import SensitivityConfig
from augsense.design import make_design
from augsense.io.checkpoints import checkpoint_path, finished_blocks, load_checkpoint
from augsense.parallel import BlockSchedule, Shard, union_blocks
from planted import PLANTED_CONFIG, planted_bundle, planted_images

MiB = 2 ** 20


# ---- BlockSet ------------------------------------------------------------------------------------------------------

def test_block_sets_agree_with_python_sets():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(0, 80)
        members = {k for k in range(n) if rng.random() < 0.4}
        other = {k for k in range(n) if rng.random() < 0.3}
        blocks = BlockSet.from_blocks(members)
        mask = np.zeros(n, bool)
        mask[sorted(members)] = True
        assert list(blocks) == sorted(members) and len(blocks) == len(members)
        assert BlockSet.from_mask(mask) == blocks == BlockSet(blocks.ranges)
        assert set(blocks | BlockSet.from_blocks(other)) == members | other
        assert all((k in blocks) == (k in members) for k in range(-2, n + 2))
        world = rng.randint(1, 5)
        mine = range(rng.randrange(world), n, world)
        pending = blocks.pending(mine)
        assert list(pending) == [k for k in mine if k not in members] and len(pending) == len(list(pending))


def test_block_set_ranges_are_normalised_and_malformed_ones_refused():
    assert BlockSet([[5, 7], [0, 3], [3, 4], [9, 9]]).ranges.tolist() == [[0, 4], [5, 7]]
    for bad in ([[3, 1]], [[-1, 2]], [[0, 1.5]], [[0]], [1, 2], [["a", "b"]]):
        with pytest.raises(ValueError):
            BlockSet(bad)


# ---- the schedule ------------------------------------------------------------------------------------------------

@pytest.fixture
def one_process_plays_every_rank(monkeypatch):
    """Rounds agree without a process group: every rank has blocks left until the end (equal shares)."""
    import augsense.parallel

    monkeypatch.setattr(augsense.parallel, "_agree", lambda flags, shard: flags)

def traced_peak(action) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def exercise_schedule(n_blocks: int) -> None:
    """What a run does with its blocks: resume, count, visit rounds, checkpoint, union, stop."""
    saved: list[BlockSet] = []
    schedule = BlockSchedule(n_blocks, Shard(rank=1, world_size=4), done=BlockSet([[0, 400]]), checkpoint_every=1e-9,
                             on_checkpoint=lambda done: saved.append(union_blocks(done, Shard())), stop_after=50)
    mine, todo = Shard(rank=1, world_size=4).blocks(n_blocks), schedule.todo
    assert len(mine) - len(todo) == 100
    assert list(schedule)[:2] == [401, 405]
    assert saved[-1].ranges.tolist() == [[0, 400 + 4 * 50]] and not schedule.complete


@pytest.mark.parametrize("world", [1, 3])
def test_a_lockstep_schedule_keeps_one_range_of_finished_blocks(world, one_process_plays_every_rank):
    # 90 blocks left, 30 per rank; ranks with unequal shares are run as real processes in test_parallel.py
    ranks = [BlockSchedule(100, Shard(rank=r, world_size=world), done=BlockSet([[0, 10]])) for r in range(world)]
    visited = [list(schedule) for schedule in ranks]
    assert sorted(sum(visited, [])) == list(range(10, 100))
    assert all(schedule.done.ranges.tolist() == [[0, 100]] for schedule in ranks)


def test_schedule_memory_does_not_grow_with_the_number_of_blocks(one_process_plays_every_rank):
    small, large = traced_peak(lambda: exercise_schedule(2 ** 10)), traced_peak(lambda: exercise_schedule(2 ** 26))
    assert large < 1 * MiB, f"{large / MiB:.1f} MiB to schedule 2**26 blocks"  # lists took 2.5 GB here
    assert large - small < 64 * 1024


# ---- a real run at N = 2**26 ---------------------------------------------------------------------------------------

def run_at(n: int, out, resume: bool = False):
    values = {k: v for k, v in PLANTED_CONFIG.items() if k not in ("model", "images")}
    values.update(n=n, batch_size=64, checkpoint_every=1e-9)  # a checkpoint after every round
    return run_sensitivity(SensitivityConfig(**values), model=planted_bundle(), images=planted_images(), out_dir=out,
                           resume=resume, progress=True, stop_after_blocks=2)


def test_a_run_at_n_2_26_checkpoints_and_resumes_with_the_bookkeeping_of_n_2_10(tmp_path):
    peaks = {}
    for n in (2 ** 10, 2 ** 26):
        out = tmp_path / f"n{n}"

        def both() -> None:
            run_at(n, out)
            run = run_at(n, out, resume=True)
            assert not run.complete

        peaks[n] = traced_peak(both)
        assert finished_blocks(load_checkpoint(checkpoint_path(out))).ranges.tolist() == [[0, 4]]
    blocks = make_design("sobol", [1, 1, 1], 2 ** 26, block_size=12).n_blocks  # millions of blocks
    growth = peaks[2 ** 26] - peaks[2 ** 10]
    # What is left is the accumulator's one flag per block (blocks_seen), copied a few times while a
    # checkpoint is encoded (measured: 4.5 bytes a block). Lists and sets of indices took 120 bytes a block.
    assert growth < 8 * blocks, f"{growth / MiB:.0f} MiB more at N = 2**26 ({blocks} blocks)"
