"""An item-level checkpoint (SASRec-CE: `ModelConfig.kind="item"`) -> collaborative item embeddings [N, D] .npy,
optionally fused with the items' text embeddings, for `sidgr tokenize --embeddings`.

    python scripts/export_item_embeddings.py --checkpoint runs/sasrec/checkpoints/iter_0000600 \\
        --items artifacts/ml100k/items.parquet --out artifacts/ml100k/collab.npy
    # fused: concat(w * L2norm(text), (1 - w) * L2norm(collab))
    python scripts/export_item_embeddings.py ... --fuse-text 0.3 --out artifacts/ml100k/fused03.npy

`--table items` is the input id embedding (`embedding.items.weight`), `head` the output softmax weights
(`head.weight`), `both` their L2-normalised concatenation. Rows 0..N-1 (N = items in items.parquet); the
vocab-padding rows are dropped. The checkpoint is read with PyTorch DCP directly (any TP/DP layout, no Megatron).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

TABLES = {"items": "embedding.items.weight", "head": "head.weight"}


def read_tables(ckpt: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Full fp32 tensors `names` (engine naming, e.g. 'head.weight') of a DCP checkpoint, without a process group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from sidgr.inference.export import normalize_key

    meta = dcp.FileSystemReader(str(ckpt)).read_metadata()
    keys = {}
    for key, md in meta.state_dict_metadata.items():
        if isinstance(md, TensorStorageMetadata) and "optimizer" not in key and normalize_key(key) in names:
            keys[normalize_key(key)] = (key, md.size)
    missing = [n for n in names if n not in keys]
    if missing:
        raise SystemExit(f"export_item_embeddings: {ckpt}: no tensor {missing} (is this an item-level checkpoint "
                         f"with item_input containing 'id'?)")
    buffers = {key: torch.empty(size, dtype=torch.float32) for key, size in keys.values()}
    dcp.load(buffers, storage_reader=dcp.FileSystemReader(str(ckpt)), no_dist=True)
    return {n: buffers[key] for n, (key, _) in keys.items()}


def l2norm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fuse(text: np.ndarray, collab: np.ndarray, text_weight: float) -> np.ndarray:
    """concat(w * L2norm(text), (1 - w) * L2norm(collab)), rows aligned."""
    if text.shape[0] != collab.shape[0]:
        raise ValueError(f"text has {text.shape[0]} rows, collab {collab.shape[0]}")
    return np.concatenate([text_weight * l2norm(text), (1.0 - text_weight) * l2norm(collab)], axis=1)


def collab_embeddings(ckpt: Path, num_items: int, table: str) -> np.ndarray:
    names = list(TABLES.values()) if table == "both" else [TABLES[table]]
    tensors = read_tables(ckpt, names)
    parts = []
    for name in names:
        t = tensors[name]
        if t.shape[0] < num_items:
            raise SystemExit(f"export_item_embeddings: {name} has {t.shape[0]} rows < {num_items} items")
        parts.append(t[:num_items].numpy())
    if len(parts) == 1:
        return parts[0].astype(np.float32)
    return np.concatenate([l2norm(p) for p in parts], axis=1).astype(np.float32)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="RUN/checkpoints/iter_N of an item-level model")
    p.add_argument("--items", required=True, help="items.parquet (N items; text for --fuse-text)")
    p.add_argument("--out", required=True, help="output .npy [N, D] float32")
    p.add_argument("--table", choices=["items", "head", "both"], default="items")
    p.add_argument("--fuse-text", type=float, default=None, metavar="W",
                   help="concat W * L2norm(text embedding) and (1 - W) * L2norm(collaborative)")
    args = p.parse_args(argv)
    from sidgr.tokenize.pipeline import TokenizeConfig, item_embeddings, read_item_texts

    n = len(read_item_texts(args.items))
    x = collab_embeddings(Path(args.checkpoint), n, args.table)
    if args.fuse_text is not None:
        if not 0.0 <= args.fuse_text <= 1.0:
            raise SystemExit("export_item_embeddings: --fuse-text must be in [0, 1]")
        text, _, _ = item_embeddings(args.items, None, TokenizeConfig())
        x = fuse(text, x, args.fuse_text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, x.astype(np.float32))
    print(f"export_item_embeddings: {out} [{x.shape[0]}, {x.shape[1]}] (table={args.table}, "
          f"fuse_text={args.fuse_text})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
