"""Catalog-constrained wide beam search over the KV-cache decoder.

Step h scores only level-h codes (the level's slice of the shared head, or head h), log-softmax within the
level, adds the beam's cumulative log-prob, masks codes that do not extend a catalog prefix
(`PrefixIndex.allowed_mask`, vectorized over all beams), and keeps the top W_h (beam, code) pairs of each user.
Beams are distinct catalog prefixes, so a step never has more beams than prefixes of that length exist:
fewer valid candidates -> fewer beams (padded as dead: node -1, score -inf), never invalid ones.
History exclusion acts at every level: a prefix all of whose items the user has seen is masked like a prefix
outside the catalog, so every live beam holds at least one unseen item. Hence with every level's width >= k a
user gets min(k, unseen catalog items) distinct unseen items: at each level the beam either holds W live
prefixes (>= W unseen items below them) or every live prefix of that length (every unseen item below them).
All work is done in place on the [B, W, C_h] logits buffer, so a step's memory is O(B * W * C_h) whatever the
catalog size. Ties are broken deterministically, the same way here and in the exact scorer: higher score first,
then the lexicographically smaller SID (beams are kept in SID order, so a lower (beam, code) index is a smaller
prefix), then lower item id (items sharing a SID tie exactly and come in item-id order).
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
    """Top-k of each row of [B, N], best first; among equal scores the lower index is kept and comes first,
    also at the cut (which of several tied entries makes the top-k is decided by index, not by `topk`)."""
    B, N = scores.shape
    if k >= N:
        idx = scores.argsort(dim=1, descending=True, stable=True)
        return scores.gather(1, idx), idx
    kth = scores.topk(k, dim=1, sorted=False).values.min(dim=1, keepdim=True).values  # the k-th best score
    above = scores > kth
    tied = scores == kth
    room = k - above.sum(1, keepdim=True)  # how many of the tied entries fit, lowest index first
    keep = above | (tied & (tied.cumsum(1) <= room))
    idx = keep.nonzero()[:, 1].view(B, k)  # exactly k per row, in index order
    vals = scores.gather(1, idx)
    by_val = vals.argsort(dim=1, descending=True, stable=True)
    return vals.gather(1, by_val), idx.gather(1, by_val)


@dataclass
class ItemPaths:
    """Every item's node at every depth and the number of items below each node (for history exclusion)."""
    nodes: list[torch.Tensor]  # nodes[d][item] = its depth-d prefix node, d = 0..H
    sizes: list[torch.Tensor]  # sizes[d][node] = catalog items below the depth-d node

    @classmethod
    def build(cls, index: PrefixIndex, num_items: int) -> "ItemPaths":
        leaf = index.item_leaves(num_items)
        nodes = [anc[leaf] for anc in index.leaf_ancestors()]
        sizes = [torch.bincount(n, minlength=index.num_nodes(d)) for d, n in enumerate(nodes)]
        return cls(nodes, sizes)


def history_pairs(histories: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique (user row, item) pairs of the histories."""
    users = torch.cat([torch.full((len(h),), b, dtype=torch.int64) for b, h in enumerate(histories)])
    items = torch.cat([torch.as_tensor(h, dtype=torch.int64) for h in histories])
    n = int(items.max()) + 1 if items.numel() else 1
    key = torch.unique(users * n + items)
    return key // n, key % n


def fully_seen_prefixes(index: PrefixIndex, paths: ItemPaths, users: torch.Tensor, items: torch.Tensor
                        ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For each beam step h (choosing the depth-h+1 prefix): the (user, parent, code) choices leading to a prefix
    whose items the user has all seen. `users`, `items`: unique history pairs (`history_pairs`)."""
    out = []
    for depth in range(1, index.num_levels + 1):
        nodes = paths.nodes[depth][items]
        m = index.num_nodes(depth)
        key, counts = torch.unique(users * m + nodes, return_counts=True)
        full = counts == paths.sizes[depth][key % m]
        u, node = key[full] // m, key[full] % m
        out.append((u, index.child_parent[depth - 1][node], index.child_code[depth - 1][node]))
    return out


def _mask_children(total: torch.Tensor, nodes: torch.Tensor, users: torch.Tensor, parents: torch.Tensor,
                   codes: torch.Tensor) -> None:
    """Set total[b, w, code] = -inf where beam w of user b sits on `parents` (one entry per (user, parent, code))."""
    B, W, C = total.shape
    m = int(max(int(nodes.max()), int(parents.max()))) + 2
    beam_keys = (torch.arange(B).unsqueeze(1) * m + nodes + 1).reshape(-1)
    sorted_keys, perm = beam_keys.sort()
    q = users * m + parents + 1
    pos = torch.searchsorted(sorted_keys, q).clamp(max=sorted_keys.numel() - 1)
    hit = sorted_keys[pos] == q
    total.view(B * W, C)[perm[pos[hit]], codes[hit]] = NEG_INF


def expand_step(index: PrefixIndex, logits: torch.Tensor, cum: torch.Tensor,
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
    # beams kept in SID order (dead last): the next step's lower (beam, code) index is then the smaller prefix
    sid_key = torch.where(alive, child, torch.full_like(child, index.num_nodes(depth + 1)))
    by_sid = sid_key.argsort(dim=1, stable=True)
    vals, parent, code, child, alive = (t.gather(1, by_sid) for t in (vals, parent, code, child, alive))
    child = torch.where(alive, child, torch.full_like(child, -1))
    return vals, parent, code, child


@torch.no_grad()
def beam_search(model: EngineModel, index: PrefixIndex, bos_hidden: torch.Tensor, history: HistoryCache,
                widths: list[int], exclude: list | None = None, keep_depth: int | None = None):
    """H constrained steps from the prefill's BOS hidden state [B, h].
    exclude: per step, (user rows, parents, codes) never to be chosen (`fully_seen_prefixes`).
    Returns final leaves [B, W'] (-1 = dead beam) and their SID log-likelihoods [B, W'] (-inf when dead); with
    keep_depth = d also the beams' depth-d prefix nodes and log-probabilities (for `backoff_candidates`)."""
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
        logits = model.level_logits(hidden, depth)
        cum, parent, codes, nodes = expand_step(index, logits, cum, nodes, depth, widths[depth],
                                                 exclude[depth] if exclude is not None else None)
        if depth + 1 == keep_depth:
            kept = (nodes.clone(), cum.clone())
        if depth < H - 1 and depth > 0:
            cache = cache.reorder(parent)
    return (nodes, cum) if keep_depth is None else (nodes, cum, *kept)


def backoff_candidates(paths: ItemPaths, new_items: torch.Tensor, depth: int, prefix_nodes: torch.Tensor,
                       prefix_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Items the model has never seen (added by `tokenize --extend`) under the beam's depth-d prefixes, each scored
    as an average item of its prefix: log P(prefix) - log(catalog items below the prefix). The model has evidence
    for the prefix (shared with trained items) but none for the new item's own suffix, which a trained model
    gives almost no mass (it never saw that suffix under this prefix). Returns (user rows, items, scores)."""
    B, W = prefix_nodes.shape
    node_of_new = paths.nodes[depth][new_items]
    order = node_of_new.argsort(stable=True)
    sorted_nodes, sorted_items = node_of_new[order], new_items[order]
    flat_nodes = prefix_nodes.reshape(-1)
    live = flat_nodes >= 0
    start = torch.searchsorted(sorted_nodes, flat_nodes.clamp(min=0))
    count = torch.where(live, torch.searchsorted(sorted_nodes, flat_nodes.clamp(min=0), right=True) - start, 0)
    owner = torch.repeat_interleave(torch.arange(B * W), count)
    first = torch.repeat_interleave(start - (torch.cumsum(count, 0) - count), count)
    items = sorted_items[torch.arange(owner.numel()) + first]
    node = flat_nodes[owner]
    scores = prefix_scores.reshape(-1)[owner] - paths.sizes[depth][node].float().log()
    return owner // W, items, scores


def rank_items(index: PrefixIndex, leaves: torch.Tensor, scores: torch.Tensor, k: int,
               seen: tuple[torch.Tensor, torch.Tensor] | None = None, extra=None, item_leaves=None,
               bonus: torch.Tensor | None = None) -> Ranked:
    """Leaves [B, W] with scores -> top-k items per user: every item of a leaf gets the leaf's score;
    order: score desc, then SID (leaf id) asc, then item id asc. `seen` (user rows, items) are dropped.
    extra: more (user rows, items, scores) candidates (`backoff_candidates`; item_leaves [N] maps items to
    leaves); an item found both ways keeps its higher score. bonus [B, N]: added to each candidate's score
    (the dense item-level score) before ranking."""
    B, W = leaves.shape
    live = (leaves >= 0).reshape(-1).nonzero().squeeze(1)
    items, owner = index.leaf_to_items(leaves.reshape(-1)[live])
    flat = live[owner]
    users, item_scores, item_leaf = flat // W, scores.reshape(-1)[flat], leaves.reshape(-1)[flat]
    if extra is not None and extra[0].numel():
        users, items = torch.cat([users, extra[0]]), torch.cat([items, extra[1]])
        item_scores, item_leaf = torch.cat([item_scores, extra[2]]), torch.cat([item_leaf, item_leaves[extra[1]]])
        n = int(items.max()) + 1
        order = item_scores.argsort(descending=True, stable=True)
        order = order[(users[order] * n + items[order]).argsort(stable=True)]
        key = users[order] * n + items[order]
        first = torch.ones_like(key, dtype=torch.bool)
        first[1:] = key[1:] != key[:-1]
        keep = order[first]  # the best score of each (user, item)
        users, items, item_scores, item_leaf = users[keep], items[keep], item_scores[keep], item_leaf[keep]
    if bonus is not None:
        item_scores = item_scores + bonus[users, items]
    if seen is not None and seen[0].numel():
        n = int(max(int(items.max()) if items.numel() else 0, int(seen[1].max()))) + 1
        seen_keys = (seen[0] * n + seen[1]).sort().values
        q = users * n + items
        pos = torch.searchsorted(seen_keys, q).clamp(max=seen_keys.numel() - 1)
        keep = seen_keys[pos] != q
        users, items, item_scores, item_leaf = users[keep], items[keep], item_scores[keep], item_leaf[keep]
    order = items.argsort(stable=True)
    order = order[item_leaf[order].argsort(stable=True)]
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
