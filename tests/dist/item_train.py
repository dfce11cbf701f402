"""Train an item-level baseline on the synthetic catalog with the trainer's Megatron pieces, then score the
test users over the full catalog; writes {valid, test recall/ndcg@10, losses} as JSON.

Usage: torchrun --standalone --nproc_per_node=N tests/dist/item_train.py DATA_DIR OUT.json ITEM_INPUT STEPS [TP]
       [RUN_DIR]   (RUN_DIR: also save a trainer checkpoint there, and the test top-10 lists in OUT.json)
"""
from __future__ import annotations

import json
import sys


def main(data_dir: str, out: str, item_input: str, steps: int, tp: int, run_dir: str | None) -> None:
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    from sidgr.metrics import Ragged, mark_candidates, per_user_metrics
    from sidgr.sid.mapping import SIDMapping
    from sidgr.training.config import ModelConfig, OptimizerConfig, ParallelConfig, model_arch
    from sidgr.training.dist import init_distributed, seed_everything, teardown
    from sidgr.training.item_model import (ItemCatalog, build_item_model, evaluate_items, item_arch,
                                           item_forward_loss, history_layout, next_item_layout, top_k_items)
    from sidgr.training.loader import DataConfig, SequenceLoader
    from sidgr.training.optim import build_optimizer, build_scheduler, wrap_ddp, zero_grads

    mapping = SIDMapping.load(f"{data_dir}/sids.json")
    catalog = ItemCatalog.from_mapping(mapping)
    mcfg = ModelConfig(hidden_size=32, num_layers=1, num_attention_heads=2, ffn_hidden_size=64, dropout=0.1)
    ocfg = OptimizerConfig(lr=5e-3, min_lr=5e-4, warmup_steps=10, weight_decay=0.0)
    dcfg = DataConfig(train_path=f"{data_dir}/train.parquet", valid_path=f"{data_dir}/valid.parquet",
                      mapping_path=f"{data_dir}/sids.json", max_items=20, global_batch_size=32, seed=1)
    arch = item_arch(model_arch(mcfg, mapping.codebook_sizes, dcfg.max_items), catalog, item_input)
    info = init_distributed(tp)
    try:
        seed_everything(5)
        model = build_item_model(mcfg, arch, catalog, item_input, info.tp_size, info.device)
        ddp = wrap_ddp(model, ocfg, ParallelConfig(tensor_parallel=tp))
        optimizer = build_optimizer(ddp, ocfg)
        scheduler = build_scheduler(optimizer, ocfg, steps)
        train = SequenceLoader(dcfg.train_path, mapping, dcfg, info.dp_rank, info.dp_size, training=True)
        valid = SequenceLoader(dcfg.valid_path, mapping, dcfg, info.dp_rank, info.dp_size, training=False,
                               append_target=True)
        losses, step, it = [], 0, iter(train)
        while step < steps:
            try:
                batch = next(it)
            except StopIteration:
                it = iter(train)
                continue
            ib = next_item_layout(catalog.sids_to_pids(batch.sids, batch.lengths), batch.lengths, "all")
            zero_grads(ddp, optimizer)
            loss, _ = item_forward_loss(ddp, model, ib.to(info.device))
            loss.backward()
            ddp.finish_grad_sync()
            optimizer.step()
            scheduler.step(increment=1)
            losses.append(float(loss.detach()))
            step += 1
        result = {"losses": losses, **evaluate_items(ddp, model, valid, catalog, info.device,
                                                      exclude_history=False)}
        # test: full-catalog scoring of each user's history (most recent max_items - 1 items)
        table = pq.read_table(f"{data_dir}/test.parquet")
        hist = table.column("item_ids").to_pylist()
        L = dcfg.max_items - 1
        pids = torch.full((len(hist), L), -1, dtype=torch.int64)
        lengths = torch.tensor([min(len(h), L) for h in hist])
        for u, h in enumerate(hist):
            pids[u, :lengths[u]] = torch.tensor(h[-L:])
        ddp.eval()
        with torch.no_grad():
            ib = history_layout(pids, lengths).to(info.device)
            top, _ = top_k_items(model, ddp(ib.pids, ib.positions, ib.attention_mask), ib, 10, False)
        n = len(hist)
        target = table.column("target").to_numpy()
        m = per_user_metrics(mark_candidates(Ragged(top.cpu().numpy().reshape(-1), np.arange(n + 1) * 10),
                                             Ragged(target, np.arange(n + 1)), catalog.num_items), (10,))
        result.update({"test_recall@10": float(m["recall@10"].mean()), "test_ndcg@10": float(m["ndcg@10"].mean())})
        if run_dir:
            from sidgr.training.checkpoint import save_checkpoint
            save_checkpoint(run_dir, step, model, optimizer, scheduler, train.state_dict(), arch, "",
                            dcfg.mapping_path, 1)
            result["test_top10"] = top.cpu().tolist()
        if info.is_rank0:
            with open(out, "w") as f:
                json.dump(result, f)
    finally:
        teardown()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], a[2], int(a[3]), int(a[4]) if len(a) > 4 else 1, a[5] if len(a) > 5 else None)
