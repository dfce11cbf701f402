"""Full-catalog top-k with history exclusion, written once for every model that scores items directly
(item-level models' logits, popularity counts).

Ties are broken toward the earlier column, i.e. toward the smaller item id when the columns are the catalog
(a stable sort), so equal scores always come out in the same order.
"""
from __future__ import annotations

import numpy as np
import torch

from sidgr.data.ragged import Ragged, offsets_from_lengths


def mask_history(scores: torch.Tensor, history: Ragged, item_ids: torch.Tensor | None = None) -> torch.Tensor:
    """scores [U, M] with -inf where column j's item (item_ids[j], or j itself) is in row u's history."""
    rows = torch.from_numpy(history.row_ids()).to(scores.device)
    items = torch.from_numpy(history.values).to(scores.device)
    if item_ids is not None:
        size = max(int(item_ids.max()), int(history.values.max(initial=-1))) + 1
        column_of = torch.full((size,), -1, dtype=torch.int64, device=scores.device)
        column_of[item_ids] = torch.arange(len(item_ids), device=scores.device)
        cols = column_of[items]
        rows, items = rows[cols >= 0], cols[cols >= 0]
    return scores.index_put((rows, items), torch.tensor(float("-inf"), device=scores.device))


def top_k_unseen(scores: torch.Tensor, k: int, history: Ragged | None = None,
                 item_ids: torch.Tensor | None = None) -> tuple[Ragged, Ragged]:
    """Per row, the k best-scoring items not in the row's history, best first -> (items, scores) as Ragged.

    scores [U, M] scores the catalog (column j = item j) or the items `item_ids` [M]; rows with fewer than k
    unseen items get shorter lists."""
    if history is not None:
        scores = mask_history(scores, history, item_ids)
    k = min(k, scores.shape[1])
    top, cols = torch.sort(scores, dim=1, descending=True, stable=True)
    top, cols = top[:, :k].cpu().numpy(), cols[:, :k].cpu()
    items = (item_ids.cpu()[cols] if item_ids is not None else cols).numpy()
    keep = top > -np.inf  # excluded items sort last as -inf
    offsets = offsets_from_lengths(keep.sum(1))
    return Ragged(items[keep].astype(np.int64), offsets), Ragged(top[keep].astype(np.float32), offsets)
