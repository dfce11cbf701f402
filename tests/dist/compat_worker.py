"""The CPU compat layer in a fresh process, for tests/test_compat.py; writes a JSON report to OUT.

1. importing the training modules patches nothing;
2. init_distributed(1) (gloo, world of one) + one real trainer step (Megatron DDP, Adam, grad clipping);
3. after teardown() the process is unpatched (the same objects as before, the mode stack as before);
4. a second cycle through `distributed(1)` works and also leaves the process clean.
Usage: python tests/dist/compat_worker.py OUT.json
"""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import torch

# every torch.cuda attribute the layer patches (test_compat checks this equals compat._CUDA_STANDINS)
CUDA_NAMES = ("current_device", "synchronize", "empty_cache", "current_stream", "default_stream", "Stream",
              "Event", "stream", "manual_seed", "manual_seed_all")
TRACKER_NAMES = ("_CUDA_RNG_STATE_TRACKER", "_CUDA_RNG_STATE_TRACKER_INITIALIZED")
TRAINING_MODULES = ("sidgr.training.compat", "sidgr.training.dist", "sidgr.training.train", "sidgr.training.model",
                    "sidgr.training.item_model")
_MISSING = "<missing>"


def snapshot() -> dict:
    """Everything the layer may touch, as the objects themselves (compare with `is`)."""
    from megatron.core.tensor_parallel import random as mp_random
    from torch.overrides import _get_current_function_mode_stack

    snap = {"Tensor.__dict__[type]": vars(torch.Tensor).get("type", _MISSING), "Tensor.type": torch.Tensor.type,
            "mode_stack": tuple(_get_current_function_mode_stack())}
    snap.update({f"torch.cuda.{n}": vars(torch.cuda).get(n, _MISSING) for n in CUDA_NAMES})
    snap.update({f"mp_random.{n}": vars(mp_random).get(n, _MISSING) for n in TRACKER_NAMES})
    return snap


def changed(before: dict, after: dict) -> list[str]:
    """Names whose object differs (mode stacks compare element by element)."""
    def same(a, b):
        if isinstance(a, tuple) and isinstance(b, tuple):
            return len(a) == len(b) and all(x is y for x, y in zip(a, b))
        return a is b
    return sorted(k for k in before if not same(before[k], after[k]))


def cuda_factory_error() -> str | None:
    try:
        torch.empty(1, device="cuda")
    except Exception as e:  # CPU-only torch: AssertionError "Torch not compiled with CUDA enabled"
        return type(e).__name__
    return None


def train_one_step(info) -> dict:
    from sidgr.training.config import ModelConfig, OptimizerConfig, ParallelConfig, model_arch
    from sidgr.training.dist import seed_everything
    from sidgr.training.model import build_model
    from sidgr.training.optim import build_optimizer, build_scheduler, wrap_ddp
    from sidgr.training.sidgr_task import layout_for
    from sidgr.training.train import train_step

    sizes = (6, 5, 7)
    seed_everything(3)
    mcfg = ModelConfig(hidden_size=16, num_layers=1, num_attention_heads=2, ffn_hidden_size=32, dropout=0.0)
    arch = model_arch(mcfg, sizes, max_items=5)
    model = build_model(mcfg, arch, info.tp_size, info.device)
    ocfg = OptimizerConfig(optimizer="adam", lr=1e-2, warmup_steps=0, clip_grad=1.0)
    ddp = wrap_ddp(model, ocfg, ParallelConfig())
    optimizer = build_optimizer(ddp, ocfg)
    scheduler = build_scheduler(optimizer, ocfg, 2)
    g = torch.Generator().manual_seed(0)
    sids = torch.stack([torch.randint(c, (3, 4), generator=g) for c in sizes], dim=2)
    batch = SimpleNamespace(sids=sids, lengths=torch.tensor([4, 2, 3]))
    steps = [train_step(ddp, model, optimizer, scheduler, layout_for(batch, "all", arch, info.device))
             for _ in range(2)]
    return {"losses": [s["loss"] for s in steps], "grad_norms": [s["grad_norm"] for s in steps],
            "param_device": str(next(model.parameters()).device),
            "param_dtypes": sorted({str(p.dtype) for p in model.parameters()})}


def inside_checks() -> dict:
    from sidgr.training.compat import CpuDeviceRemap, is_active
    from torch.overrides import _get_current_function_mode_stack

    return {"active": is_active(), "empty_cuda_device": str(torch.empty(2, device="cuda").device),
            "remap_modes": sum(isinstance(m, CpuDeviceRemap) for m in _get_current_function_mode_stack()),
            "type": torch.ones(1).type()}


def main(out_path: str) -> None:
    report = {"cuda_error_before": cuda_factory_error()}
    pristine = snapshot()
    for name in TRAINING_MODULES:
        __import__(name)
    report["changed_by_import"] = changed(pristine, snapshot())

    from sidgr.training.dist import distributed, init_distributed, teardown

    info = init_distributed(1)
    try:
        report["inside"] = inside_checks()
        report["changed_inside"] = changed(pristine, snapshot())  # the snapshot sees every patch
        report["train"] = train_one_step(info)
    finally:
        teardown()
    report["changed_after_teardown"] = changed(pristine, snapshot())
    report["cuda_error_after"] = cuda_factory_error()
    with distributed(1) as info:
        report["second_train"] = train_one_step(info)
    report["changed_after_second"] = changed(pristine, snapshot())
    with open(out_path, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
