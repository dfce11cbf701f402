"""Recommendations from the LM for a sequences parquet: prompts from each user's recent history (optionally with
a genre instruction), catalog-constrained SID beams, the user's history excluded; the candidates format
(`user_id`, `item_ids`, `scores`) that `sidgr evaluate` reads."""
from __future__ import annotations

import numpy as np
import torch

from sidgr.data.ragged import Ragged
from sidgr.data.sequences import SequenceBatch
from sidgr.inference.beam import ItemPaths, Ranked
from sidgr.logs import progress_bar
from sidgr.sid.prefix_index import PrefixIndex

from .generate import recommend
from .tasks import TaskRenderer
from .vocab import SidVocab


def recommend_users(model, renderer: TaskRenderer, vocab: SidVocab, index: PrefixIndex, paths: ItemPaths,
                    users: SequenceBatch, width: int, k: int, history_items: int, batch_users: int,
                    genres: list[str] | None = None, templates: list[int] | None = None,
                    exclude_history: bool = True, progress: bool = True) -> Ranked:
    """Top-k items for every user row of `users` (genres: one instruction per user, or None; templates: which
    instruction wording each user gets, default the first)."""
    n = len(users.user_ids)
    items, scores = [], []
    bar = progress_bar(total=n, desc="lm recommend", unit="user", disable=not progress)
    for start in range(0, n, batch_users):
        rows = range(start, min(n, start + batch_users))
        hists = [users.items.row(u) for u in rows]
        prompts = [renderer.recommend_prompt(h[-history_items:], None if genres is None else genres[u],
                                             0 if templates is None else templates[u]) for u, h in zip(rows, hists)]
        ranked = recommend(model, vocab, index, paths, prompts,
                           [torch.as_tensor(h) for h in hists] if exclude_history else None,
                           width, k, renderer.tok.pad_token_id)
        items.append(ranked.items)
        scores.append(ranked.scores)
        bar.update(len(rows))
    bar.close()
    return Ranked(torch.cat(items), torch.cat(scores))


def recall_at(ranked: Ranked, targets: Ragged, k: int) -> float:
    """Share of users whose (first) target is among their top k."""
    first = torch.as_tensor(targets.values[targets.offsets[:-1]])
    return float((ranked.items[:, :k] == first.unsqueeze(1)).any(1).float().mean())


def candidates_of(users: SequenceBatch, ranked: Ranked):
    from sidgr.data.readers import Candidates

    items, scores = ranked.to_ragged()
    return Candidates(np.asarray(users.user_ids), items, scores)
