"""bf16 training as on a GPU, forced on CPU (the CPU path trains in fp32): every floating parameter in bf16 (a
torch LayerNorm left in fp32 fails on CUDA: 'expected scalar type BFloat16 but found Float'), and Megatron's
mixed-precision optimizer takes real steps. Writes compat_worker's train report to OUT.
Usage: torchrun --nproc_per_node=1 tests/dist/bf16_worker.py OUT.json
"""
from __future__ import annotations

import dataclasses
import json
import sys

import torch

from compat_worker import train_one_step


def main(out_path: str) -> None:
    from sidgr.training import model as model_mod
    from sidgr.training.dist import distributed

    as_on_gpu = model_mod.transformer_config
    model_mod.transformer_config = lambda *a: dataclasses.replace(
        as_on_gpu(*a), bf16=True, params_dtype=torch.bfloat16, pipeline_dtype=torch.bfloat16)
    with distributed(1) as info:
        report = train_one_step(info)
    with open(out_path, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main(sys.argv[1])
