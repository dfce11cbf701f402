"""Model-level equivalences, run under torchrun (nproc 1 or 2); writes results for tests/test_train_parallel.py.

nproc=1: TP=1 loss + full gradients for both head modes; DP=1 two SGD steps on the whole batch;
         'all' vs 'last' per-item token losses; 150 Adam steps on the tiny dataset (overfitting); padded vs
         packed rows.
nproc=2: TP=2 loss + gathered gradients for both head modes; then re-initialized as DP=2 (TP=1): two SGD steps
         with half the global batch per rank.
Usage: torchrun --standalone --nproc_per_node=N tests/dist/train_equivalence.py DATA_DIR OUT.pt
"""
from __future__ import annotations

import sys

import torch
import torch.distributed as dist


def configs(head_mode: str, loss_mode: str = "all", num_layers: int = 2):
    from sidgr.training.config import ModelConfig, OptimizerConfig, ParallelConfig
    from sidgr.training.loader import DataConfig

    mcfg = ModelConfig(hidden_size=32, num_layers=num_layers, num_attention_heads=4, ffn_hidden_size=64,
                       head_mode=head_mode, loss_mode=loss_mode, dropout=0.0)
    ocfg = OptimizerConfig(optimizer="sgd", lr=0.5, min_lr=0.5, warmup_steps=0, decay_style="constant",
                           weight_decay=0.0, sgd_momentum=0.0, clip_grad=0.0)
    return mcfg, ocfg, ParallelConfig()


def real_batch(data_dir: str, dp_rank: int, dp_size: int, global_batch: int = 8, index: int = 0):
    from sidgr.sid.mapping import SIDMapping
    from sidgr.training.loader import DataConfig, SequenceLoader

    mapping = SIDMapping.load(f"{data_dir}/sids.json")
    cfg = DataConfig(train_path=f"{data_dir}/train.parquet", mapping_path=f"{data_dir}/sids.json", max_items=8,
                     global_batch_size=global_batch, shuffle=True, seed=5)
    loader = SequenceLoader(cfg.train_path, mapping, cfg, dp_rank, dp_size, training=True)
    it = iter(loader)
    for _ in range(index):
        next(it)
    return next(it), mapping


def full_param(p: torch.Tensor, tp: int) -> torch.Tensor:
    """Concatenate a TP-sharded tensor (weights, or their gradients) over the TP group."""
    from megatron.core import parallel_state as ps

    t = p.detach()
    if tp == 1 or not getattr(p, "tensor_model_parallel", False):
        return t.clone()
    parts = [torch.empty_like(t) for _ in range(tp)]
    dist.all_gather(parts, t.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(parts, dim=p.partition_dim)


def build(head_mode, loss_mode, tp, data_dir, seed=11, num_layers=2):
    from sidgr.training.config import model_arch
    from sidgr.training.dist import seed_everything
    from sidgr.training.model import build_model

    mcfg, ocfg, pcfg = configs(head_mode, loss_mode, num_layers)
    seed_everything(seed)
    _, mapping = real_batch(data_dir, 0, 1)
    arch = model_arch(mcfg, mapping.codebook_sizes, 8)
    return build_model(mcfg, arch, tp, torch.device("cpu")), mcfg, ocfg, pcfg


def tp_loss_and_grads(data_dir: str, tp: int) -> dict:
    from sidgr.training.loss import forward_loss
    from sidgr.training.sidgr_task import layout_for

    out = {}
    batch, _ = real_batch(data_dir, 0, 1)
    for head_mode in ("shared", "per_level"):
        model, mcfg, *_ = build(head_mode, "all", tp, data_dir)
        tb = layout_for(batch, "all", model.arch, torch.device("cpu"))
        loss, _ = forward_loss(model, model, tb)
        loss.backward()
        out[head_mode] = {"loss": loss.item(),
                          "grads": {n: full_param(p.grad, tp) if not getattr(p, "tensor_model_parallel", False)
                                    else _gather_grad(p, tp) for n, p in model.named_parameters()},
                          "weights": {n: full_param(p, tp) for n, p in model.named_parameters()}}
    return out


def packed_vs_padded(data_dir: str) -> dict:
    """TP=1: loss and gradients of one batch in the loader's padded rows and packed (`token_layout.packed`)."""
    from sidgr.token_layout import packed
    from sidgr.training.sidgr_task import layout_for

    batch, _ = real_batch(data_dir, 0, 1, global_batch=16)
    out = {}
    for name in ("padded", "packed"):
        model, *_ = build("shared", "all", 1, data_dir)
        tb = layout_for(batch, "all", model.arch, torch.device("cpu"))
        tb = packed(tb) if name == "packed" else tb
        out[name] = loss_and_grads(model, tb)
    return out


def loss_and_grads(model, batch, losses_fn=None) -> dict:
    """One forward/backward at TP=1: the loss, the batch's row count and every parameter's gradient."""
    from sidgr.training.loss import forward_loss

    loss, _ = forward_loss(model, model, batch, *([losses_fn] if losses_fn else []))
    loss.backward()
    return {"loss": loss.item(), "rows": batch.valid.shape[0],
            "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters()}}


def item_packed_vs_padded(data_dir: str) -> dict:
    """TP=1: an item model's (SASRec-CE's) loss and gradients on one batch, padded and packed (`packed_items`)."""
    from sidgr.sid.mapping import SIDMapping
    from sidgr.training.config import ModelConfig, model_arch
    from sidgr.training.dist import seed_everything
    from sidgr.training.item_model import item_token_losses, next_item_layout, packed_items
    from sidgr.training.item_task import ItemTask

    batch, shared = real_batch(data_dir, 0, 1, global_batch=16)
    # the tiny dataset's SIDs collide, which item models refuse: give every item a unique 2-level SID
    n = shared.num_items
    mapping = SIDMapping(torch.stack([torch.arange(n) // 8, torch.arange(n) % 8]), [n // 8 + 1, 8])
    keys = {tuple(c): i for i, c in enumerate(shared.codes.t().tolist())}
    batch_pids = torch.tensor([[keys.get(tuple(c), 0) for c in row] for row in batch.sids.tolist()])
    out = {}
    for name in ("padded", "packed"):
        task = ItemTask(mapping, "id")
        mcfg = ModelConfig(hidden_size=32, num_layers=2, num_attention_heads=2, ffn_hidden_size=64, dropout=0.0)
        arch = task.arch(model_arch(mcfg, mapping.codebook_sizes, 8))
        seed_everything(11)
        model = task.build(mcfg, arch, 1, torch.device("cpu"))
        ib = next_item_layout(batch_pids, batch.lengths)
        ib = packed_items(ib) if name == "packed" else ib
        out[name] = loss_and_grads(model, ib, item_token_losses)
    return out


def _gather_grad(p, tp):
    g = p.grad
    g.tensor_model_parallel, g.partition_dim = True, p.partition_dim
    return full_param(g, tp)


def dp_sgd_steps(data_dir: str, dp_rank: int, dp_size: int, steps: int = 2) -> dict:
    from sidgr.training.optim import build_optimizer, build_scheduler, wrap_ddp
    from sidgr.training.sidgr_task import layout_for
    from sidgr.training.train import train_step

    model, mcfg, ocfg, pcfg = build("per_level", "all", 1, data_dir)
    ddp = wrap_ddp(model, ocfg, pcfg)
    opt = build_optimizer(ddp, ocfg)
    sched = build_scheduler(opt, ocfg, 10)
    losses = []
    for i in range(steps):
        batch, _ = real_batch(data_dir, dp_rank, dp_size, index=i)
        losses.append(train_step(ddp, model, opt, sched, layout_for(batch, "all", model.arch, torch.device("cpu")))["loss"])
    return {"losses": losses, "weights": {n: p.detach().clone() for n, p in model.named_parameters()}}


def overfit(data_dir: str, steps: int = 150) -> list[float]:
    """Adam on the tiny dataset's epochs (the trainer's own step function): the loss per step."""
    from sidgr.sid.mapping import SIDMapping
    from sidgr.training.config import OptimizerConfig
    from sidgr.training.loader import DataConfig, SequenceLoader
    from sidgr.training.optim import build_optimizer, build_scheduler, wrap_ddp
    from sidgr.training.sidgr_task import layout_for
    from sidgr.training.train import train_step

    model, mcfg, _, pcfg = build("shared", "all", 1, data_dir)
    ocfg = OptimizerConfig(lr=1e-2, warmup_steps=5, weight_decay=0.0)
    ddp = wrap_ddp(model, ocfg, pcfg)
    opt = build_optimizer(ddp, ocfg)
    sched = build_scheduler(opt, ocfg, steps)
    cfg = DataConfig(train_path=f"{data_dir}/train.parquet", mapping_path=f"{data_dir}/sids.json", max_items=8,
                     global_batch_size=8, seed=5)
    loader = SequenceLoader(cfg.train_path, SIDMapping.load(cfg.mapping_path), cfg, 0, 1, training=True)
    losses = []
    while len(losses) < steps:
        for batch in loader:
            tb = layout_for(batch, "all", model.arch, torch.device("cpu"))
            losses.append(train_step(ddp, model, opt, sched, tb)["loss"])
            if len(losses) == steps:
                break
    return losses


@torch.no_grad()
def level_softmax_reference(data_dir: str) -> dict:
    """TP=1: the shared head's token losses vs -log_softmax over each label's level slice of the full logits."""
    from sidgr.training.loss import token_losses
    from sidgr.training.sidgr_task import layout_for

    model, *_ = build("shared", "all", 1, data_dir)
    model.eval()
    batch, _ = real_batch(data_dir, 0, 1)
    tb = layout_for(batch, "all", model.arch, torch.device("cpu"))
    hidden = model(*tb.model_inputs())
    tl = token_losses(model, hidden, tb)
    logits = model.head_logits(0, hidden[tl.cols, tl.rows])
    labels = tb.labels[tl.rows, tl.cols]
    ref = torch.empty_like(tl.losses)
    for i, h in enumerate(tl.levels.tolist()):
        lo, size = model.arch.level_offsets[h], model.arch.codebook_sizes[h]
        ref[i] = -logits[i, lo:lo + size].log_softmax(-1)[labels[i] - lo]
    return {"level": tl.losses, "reference": ref}


@torch.no_grad()
def all_vs_last(data_dir: str, num_layers: int) -> dict:
    """Per-item token losses: 'all' mode on each user vs 'last' mode on each prefix (users with >= 2 items)."""
    from sidgr.training.loss import token_losses
    from sidgr.training.sidgr_task import layout_for
    from sidgr.training.loader import Batch

    model, *_ = build("shared", "all", 1, data_dir, num_layers=num_layers)
    model.eval()
    batch, _ = real_batch(data_dir, 0, 1)
    tb = layout_for(batch, "all", model.arch, torch.device("cpu"))
    tl = token_losses(model, model(*tb.model_inputs()), tb)
    item = tb.item_index[tl.rows, tl.cols]
    all_mode, last_mode = [], []
    for b in range(batch.real_size):
        n = int(batch.lengths[b])
        for k in range(1, n):
            all_mode.append(tl.losses[(tl.rows == b) & (item == k)])
            prefix = Batch(batch.sids[b:b + 1].clone(), torch.tensor([k + 1]), batch.user_ids[b:b + 1], 1)
            ptb = layout_for(prefix, "last", model.arch, torch.device("cpu"))
            ptl = token_losses(model, model(*ptb.model_inputs()), ptb)
            last_mode.append(ptl.losses)
    return {"all": torch.cat(all_mode), "last": torch.cat(last_mode)}


def main(data_dir: str, out_path: str) -> None:
    from megatron.core import parallel_state as ps

    from sidgr.training.dist import init_distributed, teardown

    world = int(__import__("os").environ.get("WORLD_SIZE", "1"))
    info = init_distributed(world)  # TP = world
    result = {"tp": tp_loss_and_grads(data_dir, info.tp_size)}
    if world == 1:
        result["dp"] = dp_sgd_steps(data_dir, 0, 1)
        result["all_vs_last"] = {n: all_vs_last(data_dir, n) for n in (1, 2)}
        result["overfit"] = overfit(data_dir)
        result["level_softmax"] = level_softmax_reference(data_dir)
        result["packed"] = packed_vs_padded(data_dir)
        result["item_packed"] = item_packed_vs_padded(data_dir)
    else:
        ps.destroy_model_parallel()
        ps.initialize_model_parallel(tensor_model_parallel_size=1)
        result["dp"] = dp_sgd_steps(data_dir, ps.get_data_parallel_rank(), ps.get_data_parallel_world_size())
    if info.is_rank0:
        torch.save(result, out_path)
    teardown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
