"""Collaborative item embeddings from an item-level checkpoint (SASRec-CE), optionally fused with text.

`items` is the input id table (`embedding.items.weight`), `head` the output softmax weights (`head.weight`),
`both` their L2-normalised concatenation; rows 0..N-1 (vocab-padding rows dropped). Fusion with text embeddings:
concat(w * L2norm(text), (1 - w) * L2norm(collab)). The checkpoint is read with PyTorch DCP directly (any TP/DP
layout, no Megatron). The output feeds `sidgr tokenize --embeddings` (collaborative semantic IDs).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sidgr.errors import input_error

from .export import read_tensors, tensor_sizes

TABLES = {"items": "embedding.items.weight", "head": "head.weight"}


def l2norm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fuse(text: np.ndarray, collab: np.ndarray, text_weight: float) -> np.ndarray:
    """concat(w * L2norm(text), (1 - w) * L2norm(collab)), rows aligned."""
    if text.shape[0] != collab.shape[0]:
        raise ValueError(f"text has {text.shape[0]} rows, collab {collab.shape[0]}")
    return np.concatenate([text_weight * l2norm(text), (1.0 - text_weight) * l2norm(collab)], axis=1)


def collab_embeddings(ckpt: Path, num_items: int, table: str = "items") -> np.ndarray:
    """[num_items, D] float32 rows of the chosen table(s) of an item-level checkpoint."""
    names = list(TABLES.values()) if table == "both" else [TABLES[table]]
    sizes = tensor_sizes(Path(ckpt), lambda name: name in names)
    missing = [n for n in names if n not in sizes]
    if missing:
        raise input_error(ckpt, "tensor", missing, "not in the checkpoint (is it an item-level model whose "
                                                   "item_input contains 'id'?)")
    tensors = read_tensors(Path(ckpt), sizes)
    parts = []
    for name in names:
        if tensors[name].shape[0] < num_items:
            raise input_error(ckpt, f"{name} rows", int(tensors[name].shape[0]), f"fewer than {num_items} items")
        parts.append(tensors[name][:num_items].numpy())
    if len(parts) == 1:
        return parts[0].astype(np.float32)
    return np.concatenate([l2norm(p) for p in parts], axis=1).astype(np.float32)
