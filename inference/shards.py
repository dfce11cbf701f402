"""Batch retrieval on several processes: users are sharded by batch index over the torchrun world.

`sidgr retrieve --nproc N [--nnodes M ...]` re-executes itself under torchrun (`sidgr.launch`; several nodes write
their parts to the output's directory on shared storage). Rank r decodes the batches
i with i % world == r into the same part files a single process would write, so the merged output is
identical to a one-process run. Only gloo barriers are used: no tensors cross processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

from sidgr.process import die_with_parent


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

    def owns(self, batch_index: int) -> bool:
        return batch_index % self.world == self.rank

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def join_world() -> Shard:
    """This process's shard: the torchrun world (gloo group; ranks may wait long for each other), or one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Shard()
    die_with_parent()  # a killed launcher never leaves a rank decoding on its own
    if not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(hours=24))
    return Shard(dist.get_rank(), dist.get_world_size())


def leave_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
