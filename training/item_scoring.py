"""Full-catalog scoring of a trained item-level model (SASRec-CE / SID-input) -> retrieval candidates parquet.

    python -m sidgr.training.item_scoring --checkpoint RUN_DIR[/checkpoints/iter_X] --queries test.parquet \
        --out candidates.parquet [--top-k 50] [--exclude-history] [--batch-size 256] [--mapping sids.json]
    (or under `torchrun --nproc_per_node=T`: the item head is split T ways, every rank sees every user)

Each user's history (`item_ids`) is cut to its most recent max_items - 1 items (what the model saw as input in
training, where max_items counts the history plus the predicted item); the last one's hidden state scores all N
items. Output: `user_id, item_ids (best first), scores` (raw logits; ties toward the smaller item id). With
--exclude-history every item of the *whole* history is removed. Users with an empty history get an empty list.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

from sidgr.errors import InputError, input_error


def resolve_checkpoint(path) -> Path:
    from sidgr.training.checkpoint import TRAINER_STATE, latest_checkpoint

    path = Path(path)
    if (path / TRAINER_STATE).is_file():
        return path
    found = latest_checkpoint(path)
    if found is None:
        raise input_error(path, "--checkpoint", str(path), "neither a checkpoint nor a run dir with one")
    return found


def load_arch(ckpt: Path):
    from sidgr.arch import ModelArch

    arch = ModelArch.from_dict(json.loads((ckpt / "arch.json").read_text()))
    if arch.extra.get("kind") != "item":
        raise input_error(ckpt / "arch.json", "extra.kind", arch.extra.get("kind"),
                          "not an item-level model (SID-GR checkpoints go through export + retrieve)")
    return arch


def model_config(ckpt: Path):
    """The run's ModelConfig (dropout is irrelevant in eval; the pad multiple sizes the tables)."""
    import gin

    from sidgr.training.config import ModelConfig, parse_config

    text = (ckpt / "config.gin").read_text() if (ckpt / "config.gin").is_file() else ""
    if text.strip():
        parse_config(str(ckpt / "config.gin"))
        cfg = ModelConfig()
        gin.clear_config()
        return cfg
    return ModelConfig()


def load_catalog(ckpt: Path, mapping_path, arch):
    from sidgr.sid.mapping import SIDMapping
    from sidgr.training.item_model import ItemCatalog

    if mapping_path is None:
        mapping_path = json.loads((ckpt / "mapping.json").read_text())["path"]
    catalog = ItemCatalog.from_mapping(SIDMapping.load(mapping_path))
    if catalog.num_items != arch.extra["num_items"] or catalog.codebook_sizes != arch.codebook_sizes:
        raise input_error(mapping_path, "num_items/codebook_sizes", (catalog.num_items, catalog.codebook_sizes),
                          f"the checkpoint was trained on {arch.extra['num_items']} items, {arch.codebook_sizes}")
    return catalog


def load_weights(model, ckpt: Path) -> None:
    from megatron.core import dist_checkpointing

    from sidgr.training.checkpoint import _model_sharded, check_model_shapes

    check_model_shapes(model, ckpt)
    state = dist_checkpointing.load({"model": _model_sharded(model)}, str(ckpt))
    model.load_state_dict(state["model"])


# ---- one batch of users --------------------------------------------------------------------------------------
def recent_items(offsets: np.ndarray, values: np.ndarray, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR histories -> (pids [U, keep] right-padded with -1, lengths [U]) of the most recent `keep` items."""
    lens = np.minimum(np.diff(offsets), keep)
    col = np.arange(keep)
    take = col[None, :] < lens[:, None]
    idx = (offsets[1:] - lens)[:, None] + col[None, :]
    pids = np.full((len(lens), keep), -1, dtype=np.int64)
    pids[take] = values[idx[take]]
    return torch.from_numpy(pids), torch.from_numpy(lens.astype(np.int64))


def mask_history(logits: torch.Tensor, offsets: np.ndarray, values: np.ndarray) -> torch.Tensor:
    rows = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    idx = (torch.from_numpy(rows).to(logits.device), torch.from_numpy(values).to(logits.device))
    return logits.index_put(idx, torch.tensor(float("-inf"), device=logits.device))


@torch.no_grad()
def score_batch(model, offsets: np.ndarray, values: np.ndarray, keep: int, k: int, exclude_history: bool,
                device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (items [U, k], scores [U, k], list length [U]); users without history get length 0."""
    from sidgr.training.item_model import history_layout

    pids, lengths = recent_items(offsets, values, keep)
    ib = history_layout(pids, lengths).to(device)
    hidden = model(ib.pids, ib.positions, ib.attention_mask)
    rows = torch.arange(len(lengths), device=device)
    logits = model.full_logits(hidden[ib.query.clamp(min=0), rows])
    if exclude_history:
        logits = mask_history(logits, offsets - offsets[0], values)
    scores, items = torch.sort(logits, dim=1, descending=True, stable=True)
    k = min(k, logits.shape[1])
    items, scores = items[:, :k].cpu().numpy(), scores[:, :k].cpu().numpy()
    n_ok = torch.isfinite(torch.from_numpy(scores)).sum(1).numpy()  # excluded items sort last as -inf
    n_ok[lengths.numpy() == 0] = 0
    return items, scores, n_ok


# ---- the run -------------------------------------------------------------------------------------------------
def _history(path, batch, num_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    col = batch.column("item_ids")
    users = batch.column("user_id").to_numpy()
    offsets = np.asarray(col.offsets, dtype=np.int64)
    values = col.values.to_numpy(zero_copy_only=False).astype(np.int64)[offsets[0]:offsets[-1]]
    bad = (values < 0) | (values >= num_items)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        row = int(np.searchsorted(offsets - offsets[0], i, side="right") - 1)
        raise input_error(path, f"user_id={int(users[row])} item_ids", int(values[i]),
                          f"outside the catalog 0..{num_items - 1}")
    return users, offsets - offsets[0], values


def score_file(model, queries, out, keep: int, k: int, exclude_history: bool, batch_size: int, device,
               write: bool) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from sidgr.io import atomic_path

    try:
        pf = pq.ParquetFile(queries)
    except (OSError, pa.ArrowInvalid) as exc:
        raise input_error(queries, "--queries", str(queries), f"cannot open as parquet ({exc})") from None
    for name in ("user_id", "item_ids"):
        if name not in pf.schema_arrow.names:
            raise input_error(queries, "column", name, f"missing (the file has {pf.schema_arrow.names})")
    schema = pa.schema([("user_id", pa.int64()), ("item_ids", pa.list_(pa.int64())),
                        ("scores", pa.list_(pa.float32()))])
    users_done, empty = 0, 0
    with (atomic_path(out) if write else contextlib.nullcontext()) as tmp:
        writer = pq.ParquetWriter(tmp, schema) if write else None
        bar = tqdm(total=pf.metadata.num_rows, desc="score", unit="user", disable=not write)
        for batch in pf.iter_batches(batch_size=batch_size, columns=["user_id", "item_ids"]):
            users, offsets, values = _history(queries, batch, model.num_items)
            items, scores, n_ok = score_batch(model, offsets, values, keep, k, exclude_history, device)
            if writer is not None:
                keep_mask = np.arange(items.shape[1])[None, :] < n_ok[:, None]
                list_offsets = pa.array(np.concatenate([[0], np.cumsum(n_ok)]).astype(np.int32))
                writer.write_table(pa.table({
                    "user_id": pa.array(users, pa.int64()),
                    "item_ids": pa.ListArray.from_arrays(list_offsets, pa.array(items[keep_mask], pa.int64())),
                    "scores": pa.ListArray.from_arrays(list_offsets, pa.array(scores[keep_mask], pa.float32())),
                }, schema=schema))
            users_done += len(users)
            empty += int((np.diff(offsets) == 0).sum())
            bar.update(len(users))
        bar.close()
        if writer is not None:
            writer.close()
    return {"users": users_done, "users_without_history": empty, "top_k": k, "exclude_history": exclude_history,
            "history_items_used": keep}


def score(checkpoint, queries, out, top_k: int = 50, exclude_history: bool = False, batch_size: int = 256,
          mapping_path=None) -> dict:
    import torch.distributed as dist

    from sidgr.training.dist import init_distributed, seed_everything, teardown
    from sidgr.training.item_model import build_item_model

    if top_k <= 0 or batch_size <= 0:
        raise input_error("item_scoring", "--top-k/--batch-size", (top_k, batch_size), "must be positive")
    ckpt = resolve_checkpoint(checkpoint)
    arch = load_arch(ckpt)
    mcfg = model_config(ckpt)
    catalog = load_catalog(ckpt, mapping_path, arch)
    info = init_distributed(int(os.environ.get("WORLD_SIZE", "1")))  # all ranks split the head
    try:
        seed_everything(0)  # Megatron's RNG tracker must exist; eval mode uses no randomness
        model = build_item_model(mcfg, arch, catalog, arch.extra["item_input"], info.tp_size, info.device)
        load_weights(model, ckpt)
        model.eval()
        summary = score_file(model, queries, out, arch.max_items - 1, top_k, exclude_history, batch_size,
                             info.device, write=info.is_rank0)
        if dist.is_initialized():
            dist.barrier()
        return {"checkpoint": str(ckpt), "item_input": arch.extra["item_input"], **summary}
    finally:
        teardown()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sidgr.training.item_scoring", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="run dir (latest checkpoint) or checkpoints/iter_X")
    p.add_argument("--queries", required=True, help="parquet with user_id, item_ids (history), e.g. test.parquet")
    p.add_argument("--out", required=True, help="candidates parquet to write")
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--exclude-history", action="store_true", help="drop every history item from the lists")
    p.add_argument("--batch-size", type=int, default=256, help="users per forward pass")
    p.add_argument("--mapping", default=None, help="SID mapping (default: the one the checkpoint recorded)")
    args = p.parse_args(argv)
    try:
        info = score(args.checkpoint, args.queries, args.out, args.top_k, args.exclude_history, args.batch_size,
                     args.mapping)
    except InputError as err:
        print(f"item_scoring: error: {err}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":
        print(f"wrote {args.out}: {info}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
