"""Catalog-constrained wide beam search over the KV-cache decoder.

Step h scores only level-h codes (the level's slice of the shared head, or head h), log-softmax within the
level, adds the beam's cumulative log-prob, masks codes that do not extend a catalog prefix
(`PrefixIndex.allowed_mask`, vectorized over all beams), and keeps the top W_h (beam, code) pairs of each user.
Beams are distinct catalog prefixes, so a step never has more beams than prefixes of that length exist:
fewer valid candidates -> fewer beams (padded as dead: node -1, score -inf), never invalid ones.
All work is done in place on the [B, W, C_h] logits buffer, so a step's memory is O(B * W * C_h) whatever the
catalog size. Ties are broken deterministically: higher score first, then lower (beam, code) index; final
items: higher score first, then lower item id (items sharing a SID tie exactly and come in item-id order).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sidgr.data.ragged import Ragged, offsets_from_lengths
from sidgr.errors import input_error
from sidgr.token_layout import decode_position
from sidgr.sid.prefix_index import PrefixIndex

from .kv_cache import BeamCache, HistoryCache
from .model import EngineModel

NEG_INF = float("-inf")


@dataclass
class Ranked:
    items: torch.Tensor  # [B, K] int64, -1 where a user has fewer than K candidates
    scores: torch.Tensor  # [B, K] float32 log-likelihood of the item's SID, -inf where padded

    def rows(self) -> tuple[list[list[int]], list[list[float]]]:
        keep = self.items >= 0
        items = [r[m].tolist() for r, m in zip(self.items, keep)]
        scores = [r[m].tolist() for r, m in zip(self.scores, keep)]
        return items, scores

    def to_ragged(self) -> tuple[Ragged, Ragged]:
        """(items, scores) per user without the padding, best first."""
        keep = (self.items >= 0).cpu().numpy()
        offsets = offsets_from_lengths(keep.sum(1))
        return (Ragged(self.items.cpu().numpy()[keep], offsets),
                Ragged(self.scores.cpu().numpy()[keep].astype(np.float32), offsets))


def beam_widths(widths: int | list[int], num_levels: int, source="beam") -> list[int]:
    """An int (same width every step) or one width per level -> list of H positive widths."""
    ws = [int(widths)] * num_levels if isinstance(widths, int) else [int(w) for w in widths]
    if len(ws) != num_levels:
        raise input_error(source, "beam widths", ws, f"need one width per level ({num_levels} levels)")
    for w in ws:
        if w < 1:
            raise input_error(source, "beam width", w, "must be >= 1")
    return ws


def sorted_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of each row of [B, N], best first; equal scores ordered by lower index (deterministic)."""
    vals, idx = scores.topk(k, dim=1, sorted=False)
    by_idx = idx.argsort(dim=1, stable=True)
    vals, idx = vals.gather(1, by_idx), idx.gather(1, by_idx)
    by_val = vals.argsort(dim=1, descending=True, stable=True)
    return vals.gather(1, by_val), idx.gather(1, by_val)


def item_leaves(index: PrefixIndex, num_items: int) -> torch.Tensor:
    """[N] leaf id of every item."""
    leaf_of_pos = torch.searchsorted(index.leaf_offsets, torch.arange(index.leaf_items.numel()), right=True) - 1
    out = torch.empty(num_items, dtype=torch.int64)
    out[index.leaf_items] = leaf_of_pos
    return out


def history_pairs(histories: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique (user row, item) pairs of the histories."""
    users = torch.cat([torch.full((len(h),), b, dtype=torch.int64) for b, h in enumerate(histories)])
    items = torch.cat([torch.as_tensor(h, dtype=torch.int64) for h in histories])
    n = int(items.max()) + 1 if items.numel() else 1
    key = torch.unique(users * n + items)
    return key // n, key % n


def fully_seen_leaves(index: PrefixIndex, leaf_of_item: torch.Tensor, users: torch.Tensor,
                      items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(user, leaf) pairs whose items are all in the user's history (unique history pairs given)."""
    leaves = leaf_of_item[items]
    m = index.num_nodes(index.num_levels)
    key, counts = torch.unique(users * m + leaves, return_counts=True)
    u, leaf = key // m, key % m
    full = counts == index.leaf_sizes(leaf)
    return u[full], leaf[full]


def _mask_children(total: torch.Tensor, nodes: torch.Tensor, users: torch.Tensor, parents: torch.Tensor,
                   codes: torch.Tensor) -> None:
    """Set total[b, w, code] = -inf where beam w of user b sits on `parents` (one entry per (user, parent, code))."""
    B, W, C = total.shape
    m = int(max(int(nodes.max()), int(parents.max()) if parents.numel() else 0)) + 2
    beam_keys = (torch.arange(B).unsqueeze(1) * m + nodes + 1).reshape(-1)
    sorted_keys, perm = beam_keys.sort()
    q = users * m + parents + 1
    pos = torch.searchsorted(sorted_keys, q).clamp(max=sorted_keys.numel() - 1)
    hit = sorted_keys[pos] == q
    total.view(B * W, C)[perm[pos[hit]], codes[hit]] = NEG_INF


def _expand_step(index: PrefixIndex, logits: torch.Tensor, cum: torch.Tensor,
                 nodes: torch.Tensor, depth: int, width: int, exclude=None):
    """One constrained selection: logits [B, W, C] (consumed in place), cum/nodes [B, W] -> new beams."""
    B, W, C = logits.shape
    total = logits.sub_(logits.logsumexp(-1, keepdim=True)).add_(cum.unsqueeze(-1))
    allowed = index.allowed_mask(depth, nodes.clamp(min=0).reshape(-1)).view(B, W, C)
    total.masked_fill_(allowed.logical_not_(), NEG_INF)
    if exclude is not None and exclude[0].numel():
        _mask_children(total, nodes, *exclude)
    vals, idx = sorted_topk(total.view(B, W * C), min(width, W * C))
    alive = torch.isfinite(vals)
    keep = max(int(alive.sum(1).max()), 1)
    vals, idx, alive = vals[:, :keep], idx[:, :keep], alive[:, :keep]
    parent, code = idx // C, idx % C
    child = index.child(depth, nodes.gather(1, parent).clamp(min=0), code)
    child = torch.where(alive, child, torch.full_like(child, -1))
    return vals, parent, code, child


@torch.no_grad()
def beam_search(model: EngineModel, index: PrefixIndex, bos_hidden: torch.Tensor, history: HistoryCache,
                widths: list[int], exclude_leaves: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """H constrained steps from the prefill's BOS hidden state [B, h].
    exclude_leaves: (user rows, leaf ids) never to be chosen at the last step.
    Returns final leaves [B, W'] (-1 = dead beam) and their SID log-likelihoods [B, W'] (-inf when dead)."""
    arch = model.arch
    H, B = arch.num_levels, bos_hidden.shape[0]
    cum = torch.zeros(B, 1)
    nodes = torch.zeros(B, 1, dtype=torch.int64)
    codes = None
    cache = BeamCache()
    for depth in range(H):
        if depth == 0:
            hidden = bos_hidden.unsqueeze(1)
        else:
            tokens = codes + arch.level_offsets[depth - 1]
            pos = decode_position(history.lengths, depth - 1, H)
            hidden, cache = model.decode_step(tokens, pos, history, cache)
        exclude = None
        if exclude_leaves is not None and depth == H - 1:
            users, leaves = exclude_leaves
            exclude = (users, index.child_parent[depth][leaves], index.child_code[depth][leaves])
        logits = model.level_logits(hidden, depth)
        cum, parent, codes, nodes = _expand_step(index, logits, cum, nodes, depth, widths[depth], exclude)
        if depth < H - 1 and depth > 0:
            cache = cache.reorder(parent)
    return nodes, cum


def rank_items(index: PrefixIndex, leaves: torch.Tensor, scores: torch.Tensor, k: int,
               seen: tuple[torch.Tensor, torch.Tensor] | None = None) -> Ranked:
    """Leaves [B, W] with scores -> top-k items per user: every item of a leaf gets the leaf's score;
    order: score desc, then item id asc. `seen` (user rows, items) are dropped (history exclusion)."""
    B, W = leaves.shape
    live = (leaves >= 0).reshape(-1).nonzero().squeeze(1)
    items, owner = index.leaf_to_items(leaves.reshape(-1)[live])
    flat = live[owner]
    users, item_scores = flat // W, scores.reshape(-1)[flat]
    if seen is not None and seen[0].numel():
        n = int(max(int(items.max()) if items.numel() else 0, int(seen[1].max()))) + 1
        seen_keys = (seen[0] * n + seen[1]).sort().values
        q = users * n + items
        pos = torch.searchsorted(seen_keys, q).clamp(max=seen_keys.numel() - 1)
        keep = seen_keys[pos] != q
        users, items, item_scores = users[keep], items[keep], item_scores[keep]
    order = items.argsort(stable=True)
    order = order[item_scores[order].argsort(descending=True, stable=True)]
    order = order[users[order].argsort(stable=True)]
    users, items, item_scores = users[order], items[order], item_scores[order]
    first = torch.searchsorted(users, torch.arange(B))
    rank = torch.arange(users.numel()) - first[users]
    take = rank < k
    out_items = torch.full((B, k), -1, dtype=torch.int64)
    out_scores = torch.full((B, k), NEG_INF)
    out_items[users[take], rank[take]] = items[take]
    out_scores[users[take], rank[take]] = item_scores[take]
    return Ranked(out_items, out_scores)
