"""Megatron DDP, Megatron's optimizer (Adam/SGD, weight decay, clipping, optional distributed optimizer) and a
warmup + decay LR schedule (Megatron's OptimizerParamScheduler)."""
from __future__ import annotations

import torch
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig as MegatronOptimizerConfig
from megatron.core.optimizer import get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from sidgr.training.config import OptimizerConfig, ParallelConfig


def wrap_ddp(model, opt: OptimizerConfig, parallel: ParallelConfig) -> DistributedDataParallel:
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=parallel.overlap_grad_reduce,
        use_distributed_optimizer=opt.use_distributed_optimizer)
    return DistributedDataParallel(model.config, ddp_config, model)


def build_optimizer(ddp: DistributedDataParallel, opt: OptimizerConfig):
    config = ddp.config
    mcfg = MegatronOptimizerConfig(
        optimizer=opt.optimizer, lr=opt.lr, min_lr=opt.min_lr, weight_decay=opt.weight_decay,
        adam_beta1=opt.adam_beta1, adam_beta2=opt.adam_beta2, adam_eps=opt.adam_eps,
        sgd_momentum=opt.sgd_momentum, clip_grad=opt.clip_grad,
        bf16=config.bf16, params_dtype=config.params_dtype,
        use_distributed_optimizer=opt.use_distributed_optimizer)
    return get_megatron_optimizer(mcfg, [ddp])


def build_scheduler(optimizer, opt: OptimizerConfig, train_steps: int) -> OptimizerParamScheduler:
    warmup = min(opt.warmup_steps, max(train_steps - 1, 0))
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0 if warmup else opt.lr, max_lr=opt.lr, min_lr=opt.min_lr,
        lr_warmup_steps=warmup, lr_decay_steps=max(train_steps, 1), lr_decay_style=opt.decay_style,
        start_wd=opt.weight_decay, end_wd=opt.weight_decay, wd_incr_steps=max(train_steps, 1),
        wd_incr_style="constant")


def zero_grads(ddp: DistributedDataParallel, optimizer) -> None:
    """Both are needed: the DDP grad buffer and the optimizer's (master) grads, or grads double from step 2."""
    ddp.zero_grad_buffer()
    optimizer.zero_grad()


@torch.no_grad()
def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])
