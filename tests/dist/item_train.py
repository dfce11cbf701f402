"""Train an item-level baseline on the synthetic catalog with the trainer's Megatron pieces, then score the
test users over the full catalog; writes {valid (the trainer task's validation), test recall/ndcg@10, losses}
as JSON.

Usage: torchrun --standalone --nproc_per_node=N tests/dist/item_train.py DATA_DIR OUT.json ITEM_INPUT[:HEAD] STEPS
       [TP] [RUN_DIR]   (HEAD: ModelConfig.item_head, default 'table'; RUN_DIR: also save trainer checkpoints
       there, half-way and at the end, and the test top-10 lists in OUT.json). ITEM_TRAIN_DROPOUT (env): the
       dropout, default 0.1 (TP ranks draw dropout masks from their own streams: compare TP layouts at 0).
       ITEM_TRAIN_TEMPERATURE (env): ModelConfig.item_temperature, default 0 (dot products).
       ITEM_TRAIN_PAD_MULTIPLE (env): ModelConfig.vocab_pad_multiple, default 8 (the synthetic catalog's size is a
       multiple of 8: another value pads the item table; runs saved with it cannot be scored by score-items).
"""
from __future__ import annotations

import json
import os
import sys


def main(data_dir: str, out: str, item_input: str, steps: int, tp: int, run_dir: str | None) -> None:
    from sidgr.data.readers import read_targets
    from sidgr.metrics import mark_candidates, per_user_metrics
    from sidgr.sid.mapping import SIDMapping
    from sidgr.training.config import ModelConfig, OptimizerConfig, ParallelConfig, model_arch
    from sidgr.training.dist import init_distributed, seed_everything, teardown
    from sidgr.training.item_task import ItemTask, item_logits_for, rank_items
    from sidgr.training.loader import DataConfig, SequenceLoader
    from sidgr.training.optim import build_optimizer, build_scheduler, wrap_ddp
    from sidgr.training.checkpoint import save_checkpoint
    from sidgr.training.train import train_step

    mapping = SIDMapping.load(f"{data_dir}/sids.json")
    item_input, _, item_head = item_input.partition(":")
    task = ItemTask(mapping, item_input, item_head or "table", float(os.environ.get("ITEM_TRAIN_TEMPERATURE", "0")))
    mcfg = ModelConfig(hidden_size=32, num_layers=1, num_attention_heads=2, ffn_hidden_size=64,
                       dropout=float(os.environ.get("ITEM_TRAIN_DROPOUT", "0.1")),
                       vocab_pad_multiple=int(os.environ.get("ITEM_TRAIN_PAD_MULTIPLE", "8")))
    ocfg = OptimizerConfig(lr=5e-3, min_lr=5e-4, warmup_steps=10, weight_decay=0.0)
    dcfg = DataConfig(train_path=f"{data_dir}/train.parquet", valid_path=f"{data_dir}/valid.parquet",
                      mapping_path=f"{data_dir}/sids.json", max_items=20, global_batch_size=32, seed=1)
    arch = task.arch(model_arch(mcfg, mapping.codebook_sizes, dcfg.max_items))
    info = init_distributed(tp)
    try:
        seed_everything(5)
        model = task.build(mcfg, arch, info.tp_size, info.device)
        ddp = wrap_ddp(model, ocfg, ParallelConfig(tensor_parallel=tp))
        optimizer = build_optimizer(ddp, ocfg)
        scheduler = build_scheduler(optimizer, ocfg, steps)
        train = SequenceLoader(dcfg.train_path, mapping, dcfg, info.dp_rank, info.dp_size, training=True)
        task.setup_validation(dcfg, mapping, info)
        losses, step, it = [], 0, iter(train)
        while step < steps:
            try:
                batch = next(it)
            except StopIteration:
                it = iter(train)
                continue
            rec = train_step(ddp, model, optimizer, scheduler, task.batch(batch, "all", info.device),
                             task.token_losses)
            losses.append(rec["loss"])
            step += 1
            if run_dir and step == steps // 2:  # a second checkpoint of the same model (checkpoint averaging)
                save_checkpoint(run_dir, step, model, optimizer, scheduler, train.state_dict(), arch, "",
                                dcfg.mapping_path, 1)
        result = {"losses": losses, **task.validate(ddp, model, info.device, 0), "padding": padding_check(model)}
        # test: full-catalog top-10 of each user's most recent max_items - 1 items, history not excluded
        test, _ = read_targets(f"{data_dir}/test.parquet", task.catalog.num_items)
        ddp.eval()
        logits = item_logits_for(ddp, model, test.items, dcfg.max_items - 1, info.device)
        top, _ = rank_items(logits, test.items, 10, exclude_history=False)
        m = per_user_metrics(mark_candidates(top, test.targets, task.catalog.num_items), (10,))
        result.update({"test_recall@10": float(m["recall@10"].mean()), "test_ndcg@10": float(m["ndcg@10"].mean())})
        if run_dir:
            save_checkpoint(run_dir, step, model, optimizer, scheduler, train.state_dict(), arch, "",
                            dcfg.mapping_path, 2)
            result["test_top10"] = [top.row(u).tolist() for u in range(top.num_rows)]
        if info.is_rank0:
            with open(out, "w") as f:
                json.dump(result, f)
    finally:
        teardown()


def padding_check(model) -> dict | None:
    """The vocab padding columns of every TP rank's logits slice (dot or cosine scoring) sit at the fp32 minimum,
    and the trainer's vocab-parallel cross-entropy over the slices equals torch's over the gathered real items.
    None for a tied head: its logits are the whole unpadded catalog on every rank."""
    if model.tied:
        return None
    import torch
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    probe = torch.randn(5, model.arch.hidden_size, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(5) % model.num_items
    with torch.no_grad():
        local = model.item_logits(probe)
        start = ps.get_tensor_model_parallel_rank() * local.shape[-1]
        pad = local[:, max(model.num_items - start, 0):]
        counts = torch.tensor([pad.shape[-1], int((pad != torch.finfo(torch.float32).min).sum())])
        torch.distributed.all_reduce(counts, group=ps.get_tensor_model_parallel_group())
        ours = vocab_parallel_cross_entropy(local.clone(), labels)
        reference = torch.nn.functional.cross_entropy(model.full_logits(probe), labels, reduction="none")
    return {"columns": int(counts[0]), "unmasked": int(counts[1]),
            "ce_max_abs_diff": float((ours - reference).abs().max())}


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]) if len(a) > 4 else 1, a[5] if len(a) > 5 else None)
