"""The engine facade: load an engine directory, prefill histories, and rank items by beam search or exactly."""
from __future__ import annotations

import os

import numpy as np
import torch

from sidgr.data.ragged import Ragged, offsets_from_lengths
from sidgr.data.readers import check_in_catalog, check_nonempty
from sidgr.errors import input_error
from sidgr.token_layout import prefill_layout
from sidgr.sid.prefix_index import PrefixIndex

from .beam import (NEG_INF, ItemPaths, Ranked, backoff_candidates, beam_search, beam_widths, fully_seen_prefixes,
                   history_pairs, rank_items, sorted_topk)
from .exact import exact_top_leaves, item_sid_scores
from .model import EngineModel
from .weights import EngineFiles, load_engine


class Engine:
    """A trained SID-GR model ready to retrieve: weights, the SID mapping and its prefix index.

        engine = Engine.load("runs/ml100k/engine")
        ranked = engine.retrieve([torch.tensor([3, 17, 42])], k=50, widths=256)
        ranked.items[0], ranked.scores[0]   # best first; scores are SID log-likelihoods
    """

    def __init__(self, files: EngineFiles):
        self.arch = files.arch
        self.mapping = files.mapping
        self.index = PrefixIndex.build(files.mapping)
        nodes = self.index.prefix_nodes(files.mapping.codes) if "prefixn" in files.arch.item_parts else None
        self.model = EngineModel.from_state_dict(files.arch, files.state_dict, nodes)
        self.paths = ItemPaths.build(self.index, files.mapping.num_items)
        self.item_table = self.catalog_vectors() if files.arch.dense_weight > 0 else None

    def catalog_vectors(self) -> torch.Tensor:
        """Every catalog item's vector on the item side of the dense item-level score [N, h]: its ITEM vector, or
        its own row (dense_head 'table')."""
        if self.arch.dense_head == "table":
            return self.model.embedding.dense_items.weight.detach()
        offsets = torch.tensor(self.arch.level_offsets, dtype=torch.int64)
        codes = self.mapping.codes.to(torch.int64).t() + offsets
        with torch.no_grad():
            return self.model.embedding.item_vectors(codes, torch.arange(self.mapping.num_items))

    def dense_weight(self, weight: float | None) -> float:
        """The weight of the dense item-level score in the ranking: `weight`, or (None) the engine's default (the
        arch's retrieval_dense_weight, else the trained weight)."""
        if weight is None:
            weight = self.arch.dense_weight if self.arch.retrieval_dense_weight is None else \
                self.arch.retrieval_dense_weight
        weight = float(weight)
        if weight < 0:
            raise input_error("retrieve", "dense_weight", weight, "must be >= 0")
        if weight > 0 and self.item_table is None:
            raise input_error("retrieve", "dense_weight", weight, "the engine's model was trained without the dense "
                                                                  "item-level score (ModelConfig.dense_weight = 0)")
        return weight

    def dense_bonus(self, bos_hidden: torch.Tensor, weight: float | None) -> torch.Tensor | None:
        """weight * log-softmax of the BOS states over every item's ITEM vector [B, N]; None when the weight is 0."""
        weight = self.dense_weight(weight)
        return (bos_hidden @ self.item_table.t()).log_softmax(-1).mul_(weight) if weight else None

    @classmethod
    def load(cls, engine_dir: str | os.PathLike) -> "Engine":
        """Load a directory written by `sidgr export` (model.safetensors, engine.json, the SID mapping)."""
        return cls(load_engine(engine_dir))

    @property
    def max_history(self) -> int:
        """Items of history the positions can hold (the generated item takes the last item slot)."""
        return self.arch.max_items - 1

    def checked_histories(self, histories, source="histories") -> list[torch.Tensor]:
        """Histories as int64 item-id tensors, every one non-empty and inside the engine's catalog (one-line
        InputError naming the row)."""
        histories = [torch.as_tensor(h, dtype=torch.int64).reshape(-1) for h in histories]
        lengths = np.array([h.numel() for h in histories], dtype=np.int64)
        values = torch.cat(histories).numpy() if histories else np.zeros(0, np.int64)
        lists = Ragged(values, offsets_from_lengths(lengths))
        users = np.arange(len(histories), dtype=np.int64)
        check_nonempty(lists, source, "item_ids", users)
        check_in_catalog(lists, self.mapping.num_items, source, "item_ids", users)
        return histories

    @torch.no_grad()
    def prefill(self, histories: list[torch.Tensor]):
        """Histories (PID tensors, time order) -> BOS hidden [B, h] and history cache; keeps the last
        `max_history` items of longer histories."""
        kept = [h[-self.max_history:] for h in histories]
        lengths = torch.tensor([len(h) for h in kept], dtype=torch.int64)
        L, H = int(lengths.max()), self.arch.num_levels
        sids = torch.zeros(len(kept), L, H, dtype=torch.int64)
        pids = torch.zeros(len(kept), L, dtype=torch.int64)
        for row, h in enumerate(kept):
            sids[row, :len(h)] = self.mapping.pid_to_sid(h)
            pids[row, :len(h)] = h
        batch = prefill_layout(sids, lengths, self.arch.level_offsets, self.arch.history, pids)
        return self.model.prefill(batch, lengths)

    @property
    def new_items(self) -> torch.Tensor:
        """Items added to the catalog after training (`sidgr tokenize --extend`): the model never saw them."""
        start = int(self.mapping.meta.get("extended", {}).get("from_items", self.mapping.num_items))
        return torch.arange(start, self.mapping.num_items)

    @property
    def backoff_depth(self) -> int:
        """The prefix depth new items are scored at: every semantic level but the last."""
        return max(1, self.arch.num_levels - 1 - int(self.mapping.has_dedup_level))

    @torch.no_grad()
    def retrieve(self, histories: list[torch.Tensor], k: int, widths: int | list[int],
                 exclude_history: bool = False, exact: bool = False, new_items: str = "model",
                 dense_weight: float | None = None, dense_candidates: int | None = None) -> Ranked:
        """Top-k catalog items for each history (item ids, time order; the last max_history are used).

        widths: the beam width (int) or one width per level; k must not exceed the last one. exclude_history:
        never return an item of the history; with every width >= k each user then gets min(k, unseen catalog
        items) items. exact: score every item's SID instead of beam search (slow, the
        reference). new_items: "model" scores items added after training like any other (the trained model gives
        their unseen SID suffixes almost no mass); "backoff" also ranks each new item under the beam's prefixes
        of depth `backoff_depth` as an average item of its prefix (`backoff_candidates`; beam search only).
        dense_weight: a model trained with the dense item-level score ranks the candidates by SID log-likelihood +
        dense_weight * that score (None: the weight it was trained with; 0: by SID alone); with beam search the
        candidates are the beam's items, with exact every item. dense_candidates = M (beam search with the dense
        score; None: the final beam width): the M items the dense score ranks highest (history excluded when it
        is) join the beam's candidates, each scored by its SID log-likelihood (teacher-forced) + the weighted dense
        score; the beam's items alone can miss items the sum would rank first.
        Only real catalog items come out; users with fewer reachable items get -1 padding."""
        if new_items not in ("model", "backoff"):
            raise input_error("retrieve", "new_items", new_items, "expected 'model' or 'backoff'")
        if exact and new_items == "backoff":
            raise input_error("retrieve", "new_items", new_items, "backoff scoring needs beam search, not --exact")
        histories = self.checked_histories(histories)
        weight = self.dense_weight(dense_weight)
        if not exact:
            return self.beam_ranked(histories, k, widths, [weight] if weight else None, exclude_history, new_items,
                                    dense_candidates)[0]
        bos_hidden, cache = self.prefill(histories)
        bonus = self.dense_bonus(bos_hidden, weight)
        seen = history_pairs(histories) if exclude_history else None
        # k leaves hold >= k items; each excluded history item can remove at most one leaf
        keep = k + (max(len(torch.unique(h)) for h in histories) if exclude_history else 0)
        if bonus is not None:  # any leaf may win once the item-level score is added
            keep = self.index.num_nodes(self.arch.num_levels)
        leaves, scores = exact_top_leaves(self.model, self.index, bos_hidden, cache, keep)
        return rank_items(self.index, leaves, scores, k, seen, bonus=bonus)

    @torch.no_grad()
    def retrieve_at_weights(self, histories: list[torch.Tensor], k: int, widths: int | list[int],
                            weights: list[float], exclude_history: bool = False,
                            dense_candidates: int | None = None) -> list[Ranked]:
        """`retrieve` (beam search) at several dense weights > 0 from one decoding, one Ranked per weight: the
        candidates (the beam's items and the dense score's top items) do not depend on the weight, only their
        order does. For choosing ModelConfig.retrieval_dense_weight on validation (scripts/tune_dense_weight.py)."""
        for w in weights:
            if self.dense_weight(w) <= 0:
                raise input_error("retrieve", "dense_weight", w, "must be > 0 here (0 ranks the beam's items alone)")
        histories = self.checked_histories(histories)
        return self.beam_ranked(histories, k, widths, [float(w) for w in weights], exclude_history, "model",
                                dense_candidates)

    def beam_ranked(self, histories: list[torch.Tensor], k: int, widths, weights: list[float] | None,
                    exclude_history: bool, new_items: str, dense_candidates: int | None) -> list[Ranked]:
        """Beam search (+ the dense score's top items, + new items' backoff), ranked once per dense weight
        (weights None: by SID alone, one Ranked)."""
        ws = beam_widths(widths, self.arch.num_levels)
        dense_candidates = self.dense_candidates(dense_candidates, ws[-1], bool(weights))
        if k > ws[-1]:
            raise input_error("retrieve", "k", k, f"larger than the final beam width {ws[-1]}")
        bos_hidden, cache = self.prefill(histories)
        logp = self.dense_bonus(bos_hidden, 1.0) if weights else None
        seen = history_pairs(histories) if exclude_history else None
        exclude = fully_seen_prefixes(self.index, self.paths, *seen) if seen is not None else None
        extra = self.dense_top_items(bos_hidden, cache, logp, seen, dense_candidates) if dense_candidates else None
        if new_items == "model" or not self.new_items.numel():
            leaves, scores = beam_search(self.model, self.index, bos_hidden, cache, ws, exclude)
        else:
            d = self.backoff_depth
            leaves, scores, prefixes, prefix_scores = beam_search(self.model, self.index, bos_hidden, cache, ws,
                                                                  exclude, keep_depth=d)
            backoff = backoff_candidates(self.paths, self.new_items, d, prefixes, prefix_scores)
            extra = backoff if extra is None else tuple(torch.cat([a, b]) for a, b in zip(backoff, extra))
        return [rank_items(self.index, leaves, scores, k, seen, extra, self.paths.nodes[-1],
                           None if logp is None else logp * w) for w in (weights or [None])]

    @staticmethod
    def dense_candidates(m: int | None, final_width: int, weighted: bool, source="retrieve") -> int:
        """How many of the dense score's top items join the beam's: `m`, or (None) the final beam width when the
        ranking uses the dense score, else 0."""
        if m is None:
            return final_width if weighted else 0
        if m < 0 or (m and not weighted):
            raise input_error(source, "dense_candidates", m,
                              "must be >= 0, and > 0 needs the dense item-level score (a dense weight > 0)")
        return m

    def dense_top_items(self, bos_hidden: torch.Tensor, cache, bonus: torch.Tensor, seen, m: int):
        """The m items of each user the dense score ranks highest (`seen` pairs excluded), with their SID
        log-likelihoods: (user rows, items, scores) candidates for `rank_items`."""
        dense = bonus.clone()
        if seen is not None:
            dense[seen] = NEG_INF
        vals, items = sorted_topk(dense, min(m, dense.shape[1]))
        sid = item_sid_scores(self.model, bos_hidden, cache, self.mapping.codes.t()[items].to(torch.int64))
        live = torch.isfinite(vals)
        users = torch.arange(items.shape[0]).unsqueeze(1).expand_as(items)
        return users[live], items[live], sid[live]
