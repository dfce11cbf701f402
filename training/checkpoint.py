"""Checkpoints: Megatron dist_checkpointing for model + optimizer (reshardable across TP/DP), plus
`trainer_state.pt` (iteration, scheduler, per-rank loader and RNG states), `config.gin`, `arch.json` and
`mapping.json`. Layout: RUN_DIR/checkpoints/iter_0000100/. Written into a temporary sibling and renamed, so a
killed save never replaces or shadows a good checkpoint; the last K are kept.
"""
from __future__ import annotations

import contextlib
import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedTensor

from sidgr.arch import ModelArch
from sidgr.errors import input_error
from sidgr.io import atomic_path
from sidgr.logs import get_logger
from sidgr.run_layout import (TRAINER_STATE, checkpoint_damage, complete_checkpoints, write_manifest,
                              write_mapping_location)

# The distributed optimizer's state only reshards (TP/DP changes) in this format.
_SHARDING_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}


def checkpoint_dir(run_dir, iteration: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"iter_{iteration:07d}"


def _remove_stale_temporaries(root: Path) -> None:
    """Temporaries of saves that were killed (a failed save removes its own)."""
    if root.is_dir():
        for p in root.glob(".iter_*.tmp"):
            shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint whose files match their manifest; a damaged one is skipped, said once."""
    for ckpt in reversed(complete_checkpoints(run_dir)):
        damage = checkpoint_damage(ckpt)
        if damage is None:
            return ckpt
        get_logger("sidgr.train").warning(f"{ckpt}: skipped, corrupt checkpoint ({damage})")
    return None


# ---- RNG -----------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"])


# ---- sharded state -------------------------------------------------------------------------------------------
def _model_sharded(model) -> dict:
    return model.sharded_state_dict(prefix="", metadata=dict(_SHARDING_METADATA))


def _init_distributed_optimizer_state(optimizer) -> None:
    """A fresh DistributedOptimizer has no Adam state, and its sharded_state_dict asserts a common 'step':
    give it zero state (without stepping, so nothing changes) so that loading can fill it in."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        if not isinstance(opt, DistributedOptimizer) or opt.init_state_fn is None:
            continue
        opt.init_state_fn(opt.optimizer, opt.config)
        for group in opt.optimizer.param_groups:
            for p in group["params"]:
                opt.optimizer.state[p].setdefault("step", torch.tensor(0.0))


def _restore_distributed_optimizer_step(optimizer, loaded: dict) -> None:
    """With torch's native Adam (no TE/apex), the DistributedOptimizer's dp_reshardable load leaves the
    per-parameter 'step' at its pre-load value; set it from the loaded param groups (bias correction needs it)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    states = [loaded] if len(chained) == 1 else [loaded.get(i, {}) for i in range(len(chained))]
    for opt, state in zip(chained, states):
        if not isinstance(opt, DistributedOptimizer):
            continue
        groups = (state.get("optimizer") or {}).get("param_groups", [])
        steps = {g["step"] for g in groups if "step" in g}
        if len(steps) != 1:
            continue
        step = float(steps.pop())
        for group in opt.optimizer.param_groups:
            for p in group["params"]:
                if "step" in opt.optimizer.state[p]:
                    opt.optimizer.state[p]["step"] = torch.tensor(step)


def _full_sharded(model, optimizer, is_loading: bool) -> dict:
    if is_loading:
        _init_distributed_optimizer_state(optimizer)
    model_sd = _model_sharded(model)
    opt_sd = optimizer.sharded_state_dict(model_sd, is_loading=is_loading, metadata=dict(_SHARDING_METADATA))
    return {"model": model_sd, "optimizer": opt_sd}


def check_model_shapes(model, ckpt: Path) -> None:
    """Compare every model tensor's global shape with the checkpoint's before loading anything."""
    saved = dist_checkpointing.load_tensors_metadata(str(ckpt))
    for value in _model_sharded(model).values():
        if not isinstance(value, ShardedTensor):
            continue
        if value.key not in saved:
            raise input_error(ckpt, "tensor", value.key, "missing from the checkpoint (different model)")
        have, want = tuple(saved[value.key].global_shape), tuple(value.global_shape)
        if have != want:
            raise input_error(ckpt, f"tensor {value.key} shape", have,
                              f"does not match the configured model's {want}")


def check_arch(ckpt: Path, arch: ModelArch) -> None:
    saved = json.loads((ckpt / "arch.json").read_text())
    mine = json.loads(arch.to_json())
    for key in sorted(set(saved) | set(mine)):
        if key != "extra" and saved.get(key) != mine.get(key):
            raise input_error(ckpt / "arch.json", key, saved.get(key),
                              f"differs from the configured model's {mine.get(key)!r}")


def _layout() -> dict:
    from megatron.core import parallel_state as ps
    return {"tp": ps.get_tensor_model_parallel_world_size(), "dp": ps.get_data_parallel_world_size()}


def _uses_distributed_optimizer(optimizer) -> bool:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    return any(isinstance(o, DistributedOptimizer) for o in getattr(optimizer, "chained_optimizers", [optimizer]))


def check_optimizer_layout(ckpt: Path, trainer: dict, optimizer) -> None:
    """The optimizer state must come back in the format it was saved in; the distributed optimizer's
    (dp_reshardable, bucket space) state reshards across DP but not across TP."""
    saved = bool(trainer.get("distributed_optimizer", False))
    mine = _uses_distributed_optimizer(optimizer)
    if saved != mine:
        raise input_error(ckpt, "OptimizerConfig.use_distributed_optimizer", saved,
                          f"the checkpoint's optimizer state cannot be loaded with use_distributed_optimizer={mine}")
    if saved and trainer["layout"]["tp"] != _layout()["tp"]:
        raise input_error(ckpt, "ParallelConfig.tensor_parallel", trainer["layout"]["tp"],
                          f"distributed-optimizer state reshards across DP only; resume with the same TP "
                          f"(not {_layout()['tp']})")


# ---- save / load ---------------------------------------------------------------------------------------------
def is_checkpoint(path: Path) -> bool:
    return (path / TRAINER_STATE).is_file()


_RESULTS_MANAGER = None  # see _writer_results_queue_that_dies_with_this_process


def _writer_results_queue_that_dies_with_this_process() -> None:
    """Megatron's checkpoint writer keeps a multiprocessing Manager (a spawned server holding its results queue)
    for the life of the process; killed with the worker, that server would live on, orphaned. Start it here,
    with the parent-death signal, and hand Megatron its queue."""
    global _RESULTS_MANAGER
    import multiprocessing as mp
    from multiprocessing.managers import SyncManager

    from megatron.core.dist_checkpointing.strategies import filesystem_async

    from sidgr.process import die_with_parent

    if filesystem_async._results_queue is None:
        _RESULTS_MANAGER = SyncManager(ctx=mp.get_context("fork"))  # spawn would add a resource tracker that outlives us
        _RESULTS_MANAGER.start(initializer=die_with_parent)
        filesystem_async._results_queue = _RESULTS_MANAGER.Queue()


def save_checkpoint(run_dir, iteration: int, model, optimizer, scheduler, loader_state: dict, arch: ModelArch,
                    config_str: str, mapping_path: str, keep_last: int, keep: tuple[str, ...] = ()) -> Path:
    """Collective: every rank calls it. Returns the final directory. Rotation keeps the last `keep_last`
    checkpoints and those named in `keep` (the selected best)."""
    _writer_results_queue_that_dies_with_this_process()
    final = checkpoint_dir(run_dir, iteration)
    rank0 = dist.get_rank() == 0
    if rank0:
        _remove_stale_temporaries(final.parent)
    entry = {"rng": rng_state(), "loader": loader_state}
    entries = [None] * dist.get_world_size()
    dist.all_gather_object(entries, entry)
    with contextlib.ExitStack() as stack:
        tmp = [str(stack.enter_context(atomic_path(final, is_dir=True, replaces=is_checkpoint))) if rank0 else None]
        dist.broadcast_object_list(tmp, src=0)
        tmp_dir = Path(tmp[0])
        dist_checkpointing.save(_full_sharded(model, optimizer, is_loading=False), str(tmp_dir))
        if rank0:
            torch.save({"iteration": iteration, "scheduler": scheduler.state_dict(), "ranks": entries,
                        "layout": _layout(), "distributed_optimizer": _uses_distributed_optimizer(optimizer)},
                       tmp_dir / TRAINER_STATE)
            (tmp_dir / "config.gin").write_text(config_str)
            (tmp_dir / "arch.json").write_text(arch.to_json() + "\n")
            write_mapping_location(tmp_dir, mapping_path)
        dist.barrier()  # every rank's files written before rank 0 lists them and renames the directory into place
        if rank0:
            write_manifest(tmp_dir)
    if rank0:
        for old in complete_checkpoints(run_dir)[:-max(keep_last, 1)]:
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load_checkpoint(ckpt: Path, model, optimizer, scheduler, arch: ModelArch) -> dict:
    """Load model + optimizer (any TP/DP layout) and the scheduler; returns this rank's trainer state entry
    plus 'iteration' (RNG and loader states are restored by the caller)."""
    ckpt = Path(ckpt)
    trainer = torch.load(ckpt / TRAINER_STATE, map_location="cpu", weights_only=False)
    check_model_shapes(model, ckpt)
    check_arch(ckpt, arch)
    check_optimizer_layout(ckpt, trainer, optimizer)
    state = dist_checkpointing.load(_full_sharded(model, optimizer, is_loading=True), str(ckpt))
    model.load_state_dict(state["model"])
    with torch.no_grad():  # the distributed optimizer copies into leaf params
        optimizer.load_state_dict(state["optimizer"])
    _restore_distributed_optimizer_step(optimizer, state["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    same_layout = trainer["layout"] == _layout()
    entry = trainer["ranks"][dist.get_rank()] if same_layout else trainer["ranks"][0]
    return {"iteration": trainer["iteration"], "loader": entry["loader"],
            "rng": entry["rng"] if same_layout else None}
