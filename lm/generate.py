"""Generation with the fine-tuned LM: catalog-constrained SID beam search (only real items come out) and greedy
free text.

The SID beam reuses the engine's step (`inference.beam.expand_step`): each level is scored over that level's code
tokens, log-softmaxed within the level, masked to the prefixes of catalog items (`PrefixIndex`), with the same
deterministic tie-breaking and the same history exclusion as `sidgr retrieve`. The prompt is run once per user;
its KV cache is then reordered to follow the surviving beams."""
from __future__ import annotations

import torch

from sidgr.inference.beam import Ranked, expand_step, fully_seen_prefixes, history_pairs, rank_items, ItemPaths
from sidgr.sid.prefix_index import PrefixIndex

from .vocab import SidVocab


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(prompts), T), dtype=torch.int64)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):] = torch.tensor(p)
        mask[b, T - len(p):] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(1) - 1).clamp(min=0)


@torch.no_grad()
def sid_beam(model, vocab: SidVocab, index: PrefixIndex, prompts: list[list[int]], width: int, pad_id: int,
             exclude=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts ending in the begin token -> final leaves [B, W] (-1 dead) and SID log-likelihoods [B, W]."""
    dev = model.device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(dev), mask.to(dev)
    out = model.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True)
    cache, weight = out.cache, model.get_output_embeddings().weight
    hidden = out.last_hidden_state[:, -1:]  # [B, 1, d]
    B = ids.shape[0]
    cum = torch.zeros(B, 1)
    nodes = torch.zeros(B, 1, dtype=torch.int64)
    for depth in range(vocab.num_levels):
        logits = (hidden @ weight[vocab.level_ids[depth].to(dev)].t()).float().cpu()
        prev = cum.shape[1]
        cum, parent, codes, nodes = expand_step(index, logits, cum, nodes, depth, width,
                                                exclude[depth] if exclude is not None else None)
        if depth == vocab.num_levels - 1:
            break
        rows = (torch.arange(B).unsqueeze(1) * prev + parent).reshape(-1).to(dev)
        cache.reorder_cache(rows)
        mask = torch.cat([mask[rows], torch.ones(rows.numel(), 1, dtype=mask.dtype, device=dev)], dim=1)
        tokens = vocab.level_ids[depth][codes].reshape(-1, 1).to(dev)
        out = model.model(input_ids=tokens, attention_mask=mask, position_ids=_positions(mask)[:, -1:],
                          cache=cache, use_cache=True)
        cache, hidden = out.cache, out.last_hidden_state.view(B, cum.shape[1], -1)
    return nodes, cum


@torch.no_grad()
def recommend(model, vocab: SidVocab, index: PrefixIndex, paths: ItemPaths, prompts: list[list[int]],
              histories: list[torch.Tensor] | None, width: int, k: int, pad_id: int) -> Ranked:
    """Top-k catalog items per prompt; items of `histories` (when given) are never returned."""
    exclude = seen = None
    if histories is not None:
        seen = history_pairs(histories)
        exclude = fully_seen_prefixes(index, paths, *seen)
    leaves, scores = sid_beam(model, vocab, index, prompts, width, pad_id, exclude)
    return rank_items(index, leaves, scores, k, seen=seen)


@torch.no_grad()
def greedy_text(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 32) -> list[str]:
    """Greedy continuation of each prompt up to end of text; returns the decoded new text, stripped."""
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(row[ids.shape[1]:], skip_special_tokens=False).split(tokenizer.eos_token)[0].strip()
            for row in out.cpu()]
