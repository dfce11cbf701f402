"""The engine facade: load an engine directory, prefill histories, and rank items by beam search or exactly."""
from __future__ import annotations

import os

import torch

from sidgr.errors import input_error
from sidgr.token_layout import prefill_layout
from sidgr.sid.prefix_index import PrefixIndex

from .beam import Ranked, beam_search, beam_widths, fully_seen_leaves, history_pairs, item_leaves, rank_items
from .exact import exact_top_leaves
from .model import EngineModel
from .weights import EngineFiles, load_engine


class Engine:
    def __init__(self, files: EngineFiles):
        self.arch = files.arch
        self.mapping = files.mapping
        self.model = EngineModel.from_state_dict(files.arch, files.state_dict)
        self.index = PrefixIndex.build(files.mapping)
        self.leaf_of_item = item_leaves(self.index, files.mapping.num_items)

    @classmethod
    def load(cls, engine_dir: str | os.PathLike) -> "Engine":
        return cls(load_engine(engine_dir))

    @property
    def max_history(self) -> int:
        """Items of history the positions can hold (the generated item takes the last item slot)."""
        return self.arch.max_items - 1

    def check_histories(self, histories: list[torch.Tensor], source="histories", user_ids=None) -> None:
        n = self.mapping.num_items
        for row, h in enumerate(histories):
            user = user_ids[row] if user_ids is not None else row
            if h.numel() == 0:
                raise input_error(source, f"user_id {user} item_ids", [], "empty history: nothing to condition on")
            lo, hi = int(h.min()), int(h.max())
            if lo < 0 or hi >= n:
                raise input_error(source, f"user_id {user} item_ids", lo if lo < 0 else hi,
                                  f"item id outside the engine's SID mapping 0..{n - 1}")

    @torch.no_grad()
    def prefill(self, histories: list[torch.Tensor]):
        """Histories (PID tensors, time order) -> BOS hidden [B, h] and history cache; keeps the last
        `max_history` items of longer histories."""
        kept = [h[-self.max_history:] for h in histories]
        lengths = torch.tensor([len(h) for h in kept], dtype=torch.int64)
        L, H = int(lengths.max()), self.arch.num_levels
        sids = torch.zeros(len(kept), L, H, dtype=torch.int64)
        for row, h in enumerate(kept):
            sids[row, :len(h)] = self.mapping.pid_to_sid(h)
        batch = prefill_layout(sids, lengths, self.arch.level_offsets)
        return self.model.prefill(batch, lengths)

    @torch.no_grad()
    def retrieve(self, histories: list[torch.Tensor], k: int, widths: int | list[int],
                 exclude_history: bool = False, exact: bool = False) -> Ranked:
        histories = [torch.as_tensor(h, dtype=torch.int64).reshape(-1) for h in histories]
        self.check_histories(histories)
        bos_hidden, cache = self.prefill(histories)
        seen = history_pairs(histories) if exclude_history else None
        if exact:
            # k leaves hold >= k items; each excluded history item can remove at most one leaf
            keep = k + (max(len(torch.unique(h)) for h in histories) if exclude_history else 0)
            leaves, scores = exact_top_leaves(self.model, self.index, bos_hidden, cache, keep)
            return rank_items(self.index, leaves, scores, k, seen)
        ws = beam_widths(widths, self.arch.num_levels)
        if k > ws[-1]:
            raise input_error("retrieve", "k", k, f"larger than the final beam width {ws[-1]}")
        exclude = fully_seen_leaves(self.index, self.leaf_of_item, *seen) if seen is not None else None
        leaves, scores = beam_search(self.model, self.index, bos_hidden, cache, ws, exclude)
        return rank_items(self.index, leaves, scores, k, seen)
