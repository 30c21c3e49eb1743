"""Sharding a run over processes (torchrun) and merging their accumulators.

Under ``torchrun`` every rank takes design blocks ``rank, rank + W, rank + 2W …`` and regenerates
only those rows; at the end each rank's accumulator state goes to rank 0, which merges them in
rank order (float64 sums, so the result equals a single process up to summation order).
NCCL is used when every rank has a GPU, gloo otherwise.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Shard:
    """This process's place in the job: rank, world size and its device (None = choose)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current_shard() -> Shard:
    """The shard of this process: joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank()
    device = None
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return Shard(rank, dist.get_world_size(), device)


def _to_cpu(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {key: _to_cpu(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(value) for value in state)
    return state


def gather_states(accumulator: Any, shard: Shard) -> Any | None:
    """Merge every rank's accumulator into rank 0's; other ranks get None."""
    if not shard.distributed:
        return accumulator
    states: list[Any] | None = [None] * shard.world_size if shard.rank == 0 else None
    dist.gather_object(_to_cpu(accumulator.state_dict()), states, dst=0)
    if shard.rank != 0:
        return None
    assert states is not None
    merged = accumulator
    for state in states[1:]:
        other = copy.deepcopy(accumulator)
        other.load_state_dict(state)
        merged.merge(other)
    return merged
