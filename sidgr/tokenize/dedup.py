"""Collision statistics and the de-duplication level that makes every item's SID unique."""
from __future__ import annotations

import numpy as np


def collision_groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group id [N], rank of the item inside its group [N]) where a group is the set of items sharing a full
    SID; groups are numbered in SID order and ranks follow item id order."""
    n = codes.shape[1]
    order = np.lexsort(tuple([np.arange(n)] + [codes[h] for h in reversed(range(codes.shape[0]))]))
    sorted_codes = codes[:, order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (sorted_codes[:, 1:] != sorted_codes[:, :-1]).any(axis=0)
    group_sorted = np.cumsum(new_group) - 1
    starts = np.flatnonzero(new_group)
    rank_sorted = np.arange(n) - starts[group_sorted]
    group, rank = np.empty(n, np.int64), np.empty(n, np.int64)
    group[order], rank[order] = group_sorted, rank_sorted
    return group, rank


def collision_stats(codes: np.ndarray) -> dict:
    n = codes.shape[1]
    group, _ = collision_groups(codes)
    sizes = np.bincount(group)
    colliding = int(sizes[sizes > 1].sum())
    return {
        "num_items": int(n),
        "unique_sids": int(len(sizes)),
        "collision_rate": colliding / n if n else 0.0,  # share of items whose SID is shared with another item
        "colliding_items": colliding,
        "largest_bucket": int(sizes.max()) if n else 0,
    }


def add_dedup_level(codes: np.ndarray) -> tuple[np.ndarray, int]:
    """Append a level: items sharing levels 0..H-1 get 0, 1, 2, ... in item-id order. Its size is the largest
    collision group plus headroom (half of it, at least 2), so items added later (`sidgr tokenize --extend`) find
    free codes under a semantic SID that is already taken."""
    _, rank = collision_groups(codes)
    largest = int(rank.max()) + 1 if rank.size else 1
    return np.concatenate([codes, rank[None, :]], axis=0), dedup_size(largest)


def dedup_size(largest_bucket: int) -> int:
    return largest_bucket + max(2, largest_bucket // 2)
