"""Process-group and Megatron parallel_state setup and teardown, in one place.

Works under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set) and in a plain single process (a world of one).
On CPU: gloo + the CPU compatibility layer; on GPU: NCCL, one device per local rank.
On CPU `init_distributed` enters `compat.cpu_compat()` (held in module state, entered once however often
init_distributed is called) and `teardown()` leaves it, so the process is unpatched again afterwards.
`distributed(tp)` is the same pair as a context manager.
"""
from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    dp_rank: int
    dp_size: int
    device: torch.device

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


_COMPAT = None  # the compat.CpuCompat that init_distributed entered (CPU only); teardown() leaves it


def _enter_cpu_compat() -> None:
    global _COMPAT
    if _COMPAT is None:
        from sidgr.training.compat import cpu_compat

        _COMPAT = cpu_compat().__enter__()


def _exit_cpu_compat() -> None:
    global _COMPAT
    if _COMPAT is not None:
        _COMPAT.__exit__(None, None, None)  # raises (and keeps _COMPAT, to retry) if it cannot restore
        _COMPAT = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_env_for_single_process() -> None:
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(_free_port()))


def attempt_store(world: int) -> dict:
    """After torchrun restarted the worker group, a store whose keys are this attempt's own: the agent's store
    keeps the previous attempt's peer addresses, and gloo would dial a dead worker."""
    from sidgr.process import restart_attempt

    attempt = restart_attempt()
    if attempt == 0:
        return {}
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
                          and os.environ["RANK"] == "0", timeout=timedelta(minutes=10))
    return {"store": dist.PrefixStore(f"sidgr_attempt_{attempt}", store), "rank": int(os.environ["RANK"]),
            "world_size": world}


def init_distributed(tensor_parallel: int) -> DistInfo:
    """init_process_group + initialize_model_parallel(TP, DP = world / TP) + (CPU) the compat layer."""
    from megatron.core import parallel_state as ps

    _ensure_env_for_single_process()
    world = int(os.environ["WORLD_SIZE"])
    if tensor_parallel < 1 or world % tensor_parallel:
        raise ValueError(f"ParallelConfig.tensor_parallel={tensor_parallel} must divide the world size {world}")
    use_cuda = torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=10),
                                **attempt_store(world))
    ps.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel)
    if not use_cuda:
        _enter_cpu_compat()
    return DistInfo(rank=dist.get_rank(), world_size=world,
                    tp_rank=ps.get_tensor_model_parallel_rank(), tp_size=tensor_parallel,
                    dp_rank=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size(),
                    device=torch.device("cuda", torch.cuda.current_device()) if use_cuda else torch.device("cpu"))


def seed_everything(seed: int) -> None:
    """Same seed on every rank (replicated weights start equal); Megatron's tracker gets its TP-rank offset."""
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def dp_group():
    from megatron.core import parallel_state as ps
    return ps.get_data_parallel_group()


def all_reduce_dp(t: torch.Tensor) -> torch.Tensor:
    """Sum over the data-parallel group (in place) and return it."""
    if dist.is_initialized() and dist.get_world_size(dp_group()) > 1:
        dist.all_reduce(t, group=dp_group())
    return t


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Undo init_distributed: parallel_state, the process group, then (CPU) the compat layer. Idempotent."""
    from megatron.core import parallel_state as ps

    try:
        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
        if dist.is_initialized():
            dist.destroy_process_group()
    finally:
        _exit_cpu_compat()


@contextlib.contextmanager
def distributed(tensor_parallel: int):
    """`with distributed(tp) as info:` = init_distributed(tp) ... teardown()."""
    info = init_distributed(tensor_parallel)
    try:
        yield info
    finally:
        teardown()
