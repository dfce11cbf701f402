"""Builds the trainer's Megatron model at TP=N, saves a checkpoint with the trainer's checkpoint code (Adam state
included) and writes the model's full hidden states and logits, and the training loss path's token losses of each
row's last item, for both head modes, both history modes and the dense item-level score; for tests/test_engine_megatron.py.

Usage: torchrun --standalone --nproc_per_node=TP tests/dist/engine_megatron_worker.py TP OUT_DIR
       (OUT_DIR must already hold sids.json; writes OUT_DIR/<variant>/checkpoints/... and OUT_DIR/<variant>.pt,
       variant = <head_mode>_<history>)
"""
import sys
from pathlib import Path

import torch

SIZES = (6, 5, 7)  # vocab 18: padded to 24 by the trainer (pad multiple 8), stripped by export
VARIANTS = (("shared", "codes", 0.0, "tied"), ("per_level", "codes", 0.0, "tied"), ("shared", "rqsum", 0.0, "tied"),
            ("per_level", "prefixn+id", 0.0, "tied"), ("shared", "prefixn+id", 0.7, "tied"),
            ("shared", "prefixn+id", 0.7, "table"))
# (head_mode, history, dense_weight, dense_head); the catalog is the batch itself: item b * L + l is row b's item l (SIDs unique)


def make_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    B, L = 3, 4
    sids = torch.stack([torch.randint(c, (B, L), generator=g) for c in SIZES], dim=2)
    return sids, torch.tensor([4, 2, 3])


def batch_pids(sids) -> torch.Tensor:
    B, L = sids.shape[:2]
    return torch.arange(B * L).view(B, L)


def worker(tp: int, out_dir: str) -> None:
    """Runs under torchrun (or as a plain process when TP == 1)."""
    from sidgr.training.dist import init_distributed, teardown

    info = init_distributed(tp)
    try:
        for variant in VARIANTS:
            build_save_forward(tp, *variant, Path(out_dir), info)
    finally:
        teardown()


def variant_name(head_mode: str, history: str, dense_weight: float, dense_head: str) -> str:
    return f"{head_mode}_{history}" + (f"_dense{dense_weight}_{dense_head}" if dense_weight else "")


def build_save_forward(tp: int, head_mode: str, history: str, dense_weight: float, dense_head: str, out: Path,
                       info) -> None:
    """Build, perturb, save a checkpoint; rank 0 writes the Megatron model's full hidden states and logits."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from sidgr.sid.mapping import SIDMapping
    from sidgr.sid.prefix_index import PrefixIndex
    from sidgr.token_layout import training_layout
    from sidgr.training.checkpoint import save_checkpoint
    from sidgr.training.config import ModelConfig, OptimizerConfig, ParallelConfig, model_arch
    from sidgr.training.dist import seed_everything
    from sidgr.training.loss import token_losses
    from sidgr.training.model import build_model
    from sidgr.training.optim import build_optimizer, build_scheduler, wrap_ddp

    seed_everything(7)
    mcfg = ModelConfig(hidden_size=32, num_layers=2, num_attention_heads=4, ffn_hidden_size=64,
                       head_mode=head_mode, history=history, dropout=0.0, init_method_std=0.2,
                       dense_weight=dense_weight, dense_head=dense_head)
    mapping = SIDMapping.load(out / "sids.json")
    arch = model_arch(mcfg, SIZES, max_items=5, mapping=mapping)
    nodes = PrefixIndex.build(mapping).prefix_nodes(mapping.codes) if "prefixn" in arch.item_parts else None
    model = build_model(mcfg, arch, tp, info.device, nodes, mapping.codes if dense_weight else None)
    with torch.no_grad():  # non-trivial biases and LayerNorms; same noise on every rank for a given param
        for i, (_, p) in enumerate(sorted(model.named_parameters())):
            p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1000 + i)))
    ocfg = OptimizerConfig(optimizer="adam", lr=1e-3, min_lr=0.0, warmup_steps=0)
    ddp = wrap_ddp(model, ocfg, ParallelConfig(tensor_parallel=tp))
    optimizer = build_optimizer(ddp, ocfg)
    scheduler = build_scheduler(optimizer, ocfg, 1)
    name = variant_name(head_mode, history, dense_weight, dense_head)
    save_checkpoint(out / name, 1, model, optimizer, scheduler, {}, arch, "", str(out / "sids.json"), 1)

    sids, lengths = make_batch()
    tb = training_layout(sids, lengths, "last", arch.level_offsets, history, batch_pids(sids))
    model.eval()
    with torch.no_grad():
        hidden = model(*tb.model_inputs()).transpose(0, 1)  # [B, S, h]
        flat = hidden.reshape(-1, arch.hidden_size)
        heads = []
        for h, size in enumerate(model.head_sizes):
            local = model.head_logits(h, flat).contiguous()
            parts = [torch.empty_like(local) for _ in range(tp)]
            dist.all_gather(parts, local, group=ps.get_tensor_model_parallel_group())
            heads.append(torch.cat(parts, dim=-1)[:, :size])
        # 'last' layout: the codes of each row's last item (and its dense item-level term)
        tl = token_losses(model, hidden.transpose(0, 1), tb)
        last_item_nll = torch.zeros(sids.shape[0]).index_add_(0, tl.rows, tl.losses)
    if info.is_rank0:
        torch.save({"hidden": hidden.contiguous(), "heads": heads, "last_item_nll": last_item_nll},
                   out / f"{name}.pt")


if __name__ == "__main__":
    worker(int(sys.argv[1]), sys.argv[2])
