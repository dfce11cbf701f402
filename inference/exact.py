"""Exact scorer: the log-likelihood of every catalog item's SID for each user, by teacher forcing over the trie.

Every catalog prefix is decoded once per user (not once per item): depth h runs the prefixes of length h as
"beams" over the shared history cache, i.e. beam search with every prefix kept. To bound memory the leaves are
processed in contiguous chunks (leaves are in lexicographic SID order, so a chunk's ancestors at every depth are
a contiguous node range; only the <= H-1 ancestors on a chunk boundary are decoded twice), and a running top
list of leaves per user is kept. Used to validate the beam (`sidgr retrieve --exact`); its cost grows with the
catalog, the beam's does not.
"""
from __future__ import annotations

import torch

from sidgr.token_layout import decode_position
from sidgr.sid.prefix_index import PrefixIndex

from .beam import sorted_topk
from .kv_cache import BeamCache, HistoryCache
from .model import EngineModel


@torch.no_grad()
def chunk_leaf_scores(model: EngineModel, index: PrefixIndex, logp0: torch.Tensor, history: HistoryCache,
                      anc: list[torch.Tensor], first: int, last: int) -> torch.Tensor:
    """[B, last - first]: log-likelihoods of leaves first..last-1, decoding only their ancestors."""
    arch = model.arch
    H, B = arch.num_levels, logp0.shape[0]
    lo = [int(anc[d][first]) for d in range(H + 1)]
    hi = [int(anc[d][last - 1]) + 1 for d in range(H + 1)]
    scores = torch.zeros(B, 1)
    cache = BeamCache()
    for depth in range(H):
        if depth == 0:
            logp = logp0.unsqueeze(1)
        else:
            codes = index.child_code[depth - 1][lo[depth]:hi[depth]] + arch.level_offsets[depth - 1]
            pos = decode_position(history.lengths, depth - 1, H)
            hidden, cache = model.decode_step(codes.unsqueeze(0).expand(B, -1), pos, history, cache)
            logp = model.level_log_probs(hidden, depth)  # [B, nodes, C]
        parent = index.child_parent[depth][lo[depth + 1]:hi[depth + 1]] - lo[depth]
        code = index.child_code[depth][lo[depth + 1]:hi[depth + 1]]
        scores = scores[:, parent] + logp[:, parent, code]
        if 0 < depth < H - 1:
            cache = cache.reorder(parent.unsqueeze(0).expand(B, -1))
    return scores


@torch.no_grad()
def exact_top_leaves(model: EngineModel, index: PrefixIndex, bos_hidden: torch.Tensor, history: HistoryCache,
                     keep: int, max_tokens: int = 1 << 15) -> tuple[torch.Tensor, torch.Tensor]:
    """The `keep` best leaves per user by exact SID log-likelihood: (leaves [B, keep'], scores), best first;
    equal scores: lower leaf id first. Each decode step runs at most ~max_tokens beam tokens."""
    B = bos_hidden.shape[0]
    num_leaves = index.num_nodes(index.num_levels)
    anc = index.leaf_ancestors()
    logp0 = model.level_log_probs(bos_hidden, 0)
    chunk = max(1, max_tokens // max(B, 1))
    best_s = torch.empty(B, 0)
    best_l = torch.empty(B, 0, dtype=torch.int64)
    for first in range(0, num_leaves, chunk):
        last = min(first + chunk, num_leaves)
        s = chunk_leaf_scores(model, index, logp0, history, anc, first, last)
        all_s = torch.cat([best_s, s], 1)
        all_l = torch.cat([best_l, torch.arange(first, last).unsqueeze(0).expand(B, -1)], 1)
        # leaf ids grow with the chunks, so position order == leaf order and ties keep the lower leaf
        vals, idx = sorted_topk(all_s, min(keep, all_s.shape[1]))
        best_s, best_l = vals, all_l.gather(1, idx)
    return best_l, best_s


@torch.no_grad()
def item_sid_scores(model: EngineModel, bos_hidden: torch.Tensor, history: HistoryCache,
                    codes: torch.Tensor) -> torch.Tensor:
    """[B, M] SID log-likelihoods of given items by teacher forcing: codes [B, M, H] (per-level, not offset) are
    M items per user, each decoded as its own beam over the shared history cache (the beam's level log-softmax,
    no catalog renormalisation, so a beam-found item gets the same score)."""
    arch = model.arch
    H = arch.num_levels
    logp = model.level_log_probs(bos_hidden, 0)  # [B, C_0]
    scores = logp.gather(1, codes[:, :, 0])
    cache = BeamCache()
    for depth in range(1, H):
        tokens = codes[:, :, depth - 1] + arch.level_offsets[depth - 1]
        hidden, cache = model.decode_step(tokens, decode_position(history.lengths, depth - 1, H), history, cache)
        scores = scores + model.level_log_probs(hidden, depth).gather(2, codes[:, :, depth:depth + 1]).squeeze(2)
    return scores
