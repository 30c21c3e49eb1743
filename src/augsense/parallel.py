"""Sharding a run over processes (torchrun) and merging their accumulators.

Under ``torchrun`` every rank takes design blocks ``rank, rank + W, rank + 2W …`` and regenerates
only those rows (the design is block-addressable, so nothing but the block index travels). The
ranks advance in lockstep *rounds* of one block each; after every round one tiny all-reduce agrees
on whether to checkpoint, stop, or go on, so that checkpoints are collective: every rank's
accumulator is sent to rank 0, which merges them (float64 sums re-expressed in one shift, exact up
to summation order) and writes one file. At the end the same reduction gives rank 0 the result.
NCCL is used when every rank has a GPU, gloo otherwise.

Collective timeout: every collective waits at most ``AUGSENSE_COLLECTIVE_TIMEOUT`` seconds
(default 1800) for the other ranks. Each round starts with a monitored barrier (gloo, also beside
NCCL), so when a rank stops answering (stopped, hung, dead) rank 0 names it and stops with an
:class:`AugsenseError` instead of waiting forever.
"""

from __future__ import annotations

import datetime
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.distributed as dist

from augsense.blockset import BlockSet, PendingBlocks
from augsense.errors import AugsenseError


@dataclass(frozen=True)
class Shard:
    """This process's place in the job: rank, world size and its device (None = choose)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def blocks(self, n_blocks: int) -> range:
        """The design blocks of this rank: ``rank, rank + W, …`` below ``n_blocks`` (a range: nothing is listed)."""
        return range(self.rank, n_blocks, self.world_size)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise AugsenseError(f"environment variable {name}={text!r} is not an integer; launch with torchrun, which "
                            "sets RANK, WORLD_SIZE and LOCAL_RANK") from None


#: Environment variable: seconds a collective waits for the other ranks.
TIMEOUT_ENV = "AUGSENSE_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT_S = 1800.0
_monitor: dict[str, Any] = {}


def collective_timeout() -> float:
    """Seconds a collective waits for the other ranks (``AUGSENSE_COLLECTIVE_TIMEOUT``, default 1800)."""
    text = os.environ.get(TIMEOUT_ENV)
    if text is None or not text.strip():
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value > 0 and value < 10 ** 7):
        raise AugsenseError(f"{TIMEOUT_ENV}={text!r} must be a positive number of seconds, e.g. 600")
    return value


def collective_failure(error: BaseException, what: str, rank: int | None = None) -> AugsenseError:
    """One-line error for a collective that failed or timed out, naming the silent rank(s) when known."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    ranks = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", str(error))
    if rank is None and ranks:
        who = "rank" + ("s " if "," in ranks.group(1) else " ") + ranks.group(1).strip().rstrip(",")
    elif rank is not None:
        who = f"rank {rank}"
    else:
        who = "another rank"
    return AugsenseError(f"{what}: {who} did not answer within {collective_timeout():g} s ({TIMEOUT_ENV}) or its "
                         f"process is gone (stopped, hung or dead): {text[:200]}; the last checkpoint (if any) is "
                         "kept, so the run can continue with --resume once all ranks are back")


def check_alive(shard: "Shard", what: str = "waiting for the other ranks") -> None:
    """Collective: a monitored barrier; rank 0 names any rank that does not arrive within the timeout."""
    if not shard.distributed:
        return
    timeout = datetime.timedelta(seconds=collective_timeout())
    try:
        dist.monitored_barrier(group=_monitor.get("group"), timeout=timeout, wait_all_ranks=True)
    except RuntimeError as error:
        raise collective_failure(error, what, rank=None if shard.rank == 0 else 0) from None


def current_shard(device: str = "auto") -> Shard:
    """The shard of this process: joins the process group when launched by torchrun.

    Args:
        device: the configured device; ``"cpu"`` forces gloo even where GPUs exist.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Shard()
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
            if name not in os.environ:
                raise AugsenseError(f"WORLD_SIZE={world} but {name} is not set; start distributed runs with "
                                    "`torchrun --nproc_per_node=G -m augsense run CONFIG`")
        backend = "nccl" if use_cuda else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=collective_timeout()))
        # monitored barriers need gloo: beside NCCL a small gloo group of the same ranks carries them
        _monitor["group"] = dist.new_group(backend="gloo") if backend != "gloo" else None
    rank = dist.get_rank()
    shard_device = None
    if use_cuda:
        local = _env_int("LOCAL_RANK", 0)
        if local >= torch.cuda.device_count():
            raise AugsenseError(f"LOCAL_RANK={local} but this node has {torch.cuda.device_count()} GPU(s); "
                                "use --nproc_per_node no larger than the GPU count")
        torch.cuda.set_device(local)
        shard_device = torch.device("cuda", local)
    return Shard(rank, dist.get_world_size(), shard_device)


def broadcast_module(module: torch.nn.Module, shard: Shard) -> None:
    """Collective: copy rank 0's parameters and buffers to every rank.

    Ranks must measure the same network; without this, a model built with random weights (or a
    weights file that changed between nodes) would silently differ between ranks.
    """
    if not shard.distributed:
        return
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def _empty_like_on_cpu(accumulator: Any) -> Any:
    """A fresh accumulator with the same class, design, outputs, groups and options, on the CPU."""
    groups = None if accumulator.groups is None else accumulator.groups.cpu()
    return type(accumulator)(accumulator.design, accumulator.n_outputs, groups=groups, device="cpu",
                             **accumulator._config())


def _reduce_to_rank0(into: Any, local: Any, shard: Shard) -> Any | None:
    """Merge every rank's ``local`` state into ``into`` on rank 0, one rank at a time (bounded memory).

    Ranks other than 0 send their state and get None. Rank 0 merges in rank order, so the result
    does not depend on which rank finished first.
    """
    if not shard.distributed:
        return into
    if shard.rank != 0:
        try:
            dist.send_object_list([local.state_dict()], dst=0)
        except RuntimeError as error:
            raise collective_failure(error, "sending the sums to rank 0", rank=0) from None
        return None
    for source in range(1, shard.world_size):
        box: list[Any] = [None]
        try:
            dist.recv_object_list(box, src=source)
        except RuntimeError as error:
            raise collective_failure(error, f"merging the sums of rank {source}", rank=source) from None
        other = _empty_like_on_cpu(into)
        other.load_state_dict(box[0])
        into.merge(other)
        del other, box
    return into


def gather_states(accumulator: Any, shard: Shard) -> Any | None:
    """Merge every rank's accumulator into rank 0's (in place); other ranks get None."""
    return _reduce_to_rank0(accumulator, accumulator, shard)


def merged_state(accumulator: Any, shard: Shard) -> dict[str, Any] | None:
    """Collective: the state of all ranks' accumulators merged (on rank 0; None elsewhere).

    Every rank's own accumulator is left untouched, so the run goes on after a checkpoint.
    """
    if not shard.distributed:
        return accumulator.state_dict()
    base = _empty_like_on_cpu(accumulator) if shard.rank == 0 else None
    if base is not None:
        base.merge(accumulator)
    merged = _reduce_to_rank0(base, accumulator, shard)
    return None if merged is None else merged.state_dict()


def union_blocks(done: BlockSet | Iterable[int], shard: Shard) -> BlockSet:
    """Collective: the union of every rank's finished blocks (on every rank); only their ranges travel."""
    mine = BlockSet.from_blocks(done)
    if not shard.distributed:
        return mine
    everyone: list[Any] = [None] * shard.world_size
    dist.all_gather_object(everyone, mine.ranges)
    union = BlockSet()
    for ranges in everyone:
        union = union | BlockSet(ranges)
    return union


def _agree(flags: list[bool], shard: Shard) -> list[bool]:
    """Collective: each flag true on any rank (one all-reduce of a few ints)."""
    if not shard.distributed:
        return flags
    device = shard.device if shard.device is not None else torch.device("cpu")
    tensor = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    check_alive(shard, "agreeing on the next block round")
    try:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    except RuntimeError as error:
        raise collective_failure(error, "agreeing on the next block round") from None
    return [bool(v) for v in tensor.tolist()]


@dataclass
class BlockSchedule:
    """This rank's unfinished blocks, visited in lockstep rounds with the other ranks.

    Iterating yields block indices; after each round the ranks agree (one all-reduce) on whether a
    checkpoint is due (``checkpoint_every`` seconds since the last, on any rank), whether to stop
    (``stop_after`` rounds, for tests of resume, or ``stop_requested()`` true on any rank, e.g. after
    SIGTERM) and whether any rank has blocks left. A checkpoint
    calls ``on_checkpoint(done)`` on every rank at the same round, so it may itself be collective.

    Memory does not grow with the number of blocks: this rank's blocks are a ``range``, the blocks
    left are a lazy view (:class:`augsense.blockset.PendingBlocks`), and ``done`` is a
    :class:`augsense.blockset.BlockSet` of ranges. Every rank knows every rank's order of blocks
    (they all start from the same ``done``), so after each round ``done`` holds the blocks finished
    by *all* ranks, identically on each, and it stays one range ``[0, c)`` when it starts as one.

    Attributes:
        n_blocks: blocks in the design.
        shard: this process's rank and world size.
        done: blocks finished by every rank so far (starting with those of a resumed checkpoint);
            any iterable of block indices is accepted and turned into a BlockSet.
        complete: False when the loop stopped early at ``stop_after``.
    """

    n_blocks: int
    shard: Shard
    done: BlockSet = field(default_factory=BlockSet)
    checkpoint_every: float = 0.0
    on_checkpoint: Callable[[BlockSet], None] | None = None
    stop_after: int | None = None
    complete: bool = True
    stop_requested: Callable[[], bool] | None = None

    def __post_init__(self) -> None:
        self.done = BlockSet.from_blocks(self.done)

    @property
    def todo(self) -> PendingBlocks:
        """This rank's blocks not finished yet: a lazy view with ``len`` (nothing is listed)."""
        return self.done.pending(self.shard.blocks(self.n_blocks))

    def __iter__(self) -> Iterator[int]:
        world, rank = self.shard.world_size, self.shard.rank
        # every rank's blocks left, in its order: round t finishes the t-th block of each rank that has one
        queues = [iter(self.done.pending(Shard(r, world).blocks(self.n_blocks))) for r in range(world)]
        heads = [next(queue, None) for queue in queues]
        rounds, last = 0, time.monotonic()
        while True:
            mine = heads[rank] is not None
            due = self.on_checkpoint is not None and self.checkpoint_every > 0 and rounds > 0 and \
                time.monotonic() - last >= self.checkpoint_every
            stop = (self.stop_after is not None and rounds >= self.stop_after) or \
                (self.stop_requested is not None and self.stop_requested())
            due, stop, more = _agree([due, stop, mine], self.shard)
            if not more:
                return
            if stop:
                self.complete = False
                if self.on_checkpoint is not None:
                    self.on_checkpoint(self.done)
                return
            if due and self.on_checkpoint is not None:
                self.on_checkpoint(self.done)
                last = time.monotonic()
            if mine:
                yield heads[rank]  # type: ignore[misc]
            finished = [k for k in heads if k is not None]
            self.done = self.done | BlockSet.from_blocks(finished)
            heads = [next(queue, None) if k is not None else None for queue, k in zip(queues, heads)]
            rounds += 1
