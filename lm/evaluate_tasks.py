"""The LM's language-side measurements (`sidgr lm eval`):
  SID -> title: greedy free text, exact match with the item's name, on trained and on held-out items;
  title -> SID: top-1 of the constrained SID beam (width 5) is the item, on trained and on held-out items;
  instructions: for test users, an instruction (a seeded one of INSTRUCTIONS) with a seeded genre (among genres
  with >= 20 items); the share of top-1 and top-10 answers (history excluded) that carry the genre, beside the same share in
  the plain recommendations for the same users (what the instruction changes)."""
from __future__ import annotations

import numpy as np
import torch

from sidgr.inference.beam import ItemPaths
from sidgr.logs import progress_bar
from sidgr.sid.prefix_index import PrefixIndex

from .generate import greedy_text, sid_beam
from .recommend import recommend_users
from .tasks import INSTRUCTIONS, TaskRenderer


def sid_to_title_accuracy(model, renderer: TaskRenderer, items: np.ndarray, batch: int = 32) -> dict:
    hits, examples = 0, []
    for start in progress_bar(range(0, len(items), batch), desc="sid->title", unit="batch"):
        chunk = [int(p) for p in items[start:start + batch]]
        texts = greedy_text(model, renderer.tok, [renderer.sid_to_title_prompt(p) for p in chunk])
        for p, text in zip(chunk, texts):
            hits += text == renderer.catalog.names[p]
            if len(examples) < 5:
                examples.append({"item": p, "name": renderer.catalog.names[p], "generated": text})
    return {"items": len(items), "exact_match": hits / max(len(items), 1), "examples": examples}


def title_to_sid_accuracy(model, renderer: TaskRenderer, index: PrefixIndex, items: np.ndarray,
                          batch: int = 32) -> dict:
    leaves_of = index.item_leaves(renderer.catalog.num_items)
    hits = 0
    for start in progress_bar(range(0, len(items), batch), desc="title->sid", unit="batch"):
        chunk = [int(p) for p in items[start:start + batch]]
        leaves, _ = sid_beam(model, renderer.vocab, index, [renderer.title_to_sid_prompt(p) for p in chunk], 5,
                             renderer.tok.pad_token_id)
        hits += int((leaves[:, 0] == leaves_of[torch.tensor(chunk)]).sum())
    return {"items": len(items), "top1_accuracy": hits / max(len(items), 1)}


def instruction_share(model, renderer: TaskRenderer, index: PrefixIndex, paths: ItemPaths, users, seed: int,
                      history_items: int, batch_users: int) -> dict:
    catalog = renderer.catalog
    counts: dict[str, int] = {}
    for gs in catalog.genres:
        for g in gs:
            counts[g] = counts.get(g, 0) + 1
    choices = sorted(g for g, c in counts.items() if c >= 20)
    if not choices:
        return {"users": 0, "note": "the catalog has no genres"}
    rng = np.random.default_rng([seed, 11])
    asked = [choices[int(i)] for i in rng.integers(len(choices), size=len(users.user_ids))]
    templates = [int(t) for t in rng.integers(len(INSTRUCTIONS), size=len(users.user_ids))]

    def share(ranked, k):
        ok = total = 0
        for u, row in enumerate(ranked.items[:, :k].tolist()):
            for p in row:
                if p >= 0:
                    ok += asked[u] in catalog.genres[p]
                    total += 1
        return ok / max(total, 1)

    told = recommend_users(model, renderer, renderer.vocab, index, paths, users, 10, 10, history_items,
                           batch_users, genres=asked, templates=templates)
    plain = recommend_users(model, renderer, renderer.vocab, index, paths, users, 10, 10, history_items,
                            batch_users)
    return {"users": len(asked), "genres": choices,
            "instructed_top1": share(told, 1), "instructed_top10": share(told, 10),
            "plain_top1": share(plain, 1), "plain_top10": share(plain, 10)}
