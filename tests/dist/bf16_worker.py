"""bf16 training as on a GPU, forced on CPU (the CPU path trains in fp32): every floating parameter in bf16 (a
torch LayerNorm left in fp32 fails on CUDA: 'expected scalar type BFloat16 but found Float'), and Megatron's
mixed-precision optimizer takes real steps. Writes a JSON report to OUT.
Usage: torchrun --nproc_per_node=1 tests/dist/bf16_worker.py OUT.json
"""
from __future__ import annotations

import dataclasses
import json
import sys
from types import SimpleNamespace

import torch


def main(out_path: str) -> None:
    from sidgr.training import model as model_mod
    from sidgr.training.config import ModelConfig, OptimizerConfig, ParallelConfig, model_arch
    from sidgr.training.dist import distributed, seed_everything
    from sidgr.training.optim import build_optimizer, build_scheduler, wrap_ddp
    from sidgr.training.sidgr_task import layout_for
    from sidgr.training.train import train_step

    as_on_gpu = model_mod.transformer_config
    model_mod.transformer_config = lambda *a: dataclasses.replace(
        as_on_gpu(*a), bf16=True, params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16)
    sizes = (6, 5, 7)
    with distributed(1) as info:
        seed_everything(3)
        mcfg = ModelConfig(hidden_size=16, num_layers=1, num_attention_heads=2, ffn_hidden_size=32, dropout=0.0)
        arch = model_arch(mcfg, sizes, max_items=5)
        model = model_mod.build_model(mcfg, arch, info.tp_size, info.device)
        dtypes = sorted({str(p.dtype) for p in model.parameters()})
        ocfg = OptimizerConfig(optimizer="adam", lr=1e-2, warmup_steps=0, clip_grad=1.0)
        ddp = wrap_ddp(model, ocfg, ParallelConfig())
        optimizer = build_optimizer(ddp, ocfg)
        scheduler = build_scheduler(optimizer, ocfg, 3)
        g = torch.Generator().manual_seed(0)
        sids = torch.stack([torch.randint(c, (4, 4), generator=g) for c in sizes], dim=2)
        batch = SimpleNamespace(sids=sids, lengths=torch.tensor([4, 2, 3, 4]))
        losses = [train_step(ddp, model, optimizer, scheduler, layout_for(batch, "all", arch, info.device))["loss"]
                  for _ in range(3)]
    with open(out_path, "w") as f:
        json.dump({"param_dtypes": dtypes, "losses": losses}, f)


if __name__ == "__main__":
    main(sys.argv[1])
