"""The decoder's architecture as plain data: what training builds with Megatron and the engine rebuilds in torch."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

HeadMode = Literal["shared", "per_level"]
# how later tokens see a history item: "codes" (its H code tokens) or one ITEM token composed like the item
# models' inputs: the sum of its code embeddings (rqsum) or of its prefix embeddings (prefixn), plus an item-id row
HISTORY_MODES = ("codes", "rqsum", "prefixn", "rqsum+id", "prefixn+id")
DENSE_HEADS = ("tied", "table")


def item_parts(history: str) -> tuple[str, ...]:
    """What an ITEM token sums ('rqsum', 'prefixn', 'id'); () when history items are code tokens."""
    return () if history == "codes" else tuple(history.split("+"))


def needs_item_ids(history: str) -> bool:
    """Whether ITEM tokens need their items' ids (an id or a prefix table), not only their codes."""
    return bool({"id", "prefixn"} & set(item_parts(history)))


@dataclass(frozen=True)
class ModelArch:
    codebook_sizes: tuple[int, ...]
    hidden_size: int = 128
    num_layers: int = 4
    num_attention_heads: int = 4
    ffn_hidden_size: int = 512
    max_items: int = 50  # items kept per user (history + target); positions = max_items * (H + 1)
    head_mode: HeadMode = "shared"
    layernorm_epsilon: float = 1e-5
    history: str = "codes"  # one of HISTORY_MODES
    num_items: int = 0  # rows of the item-id table (history '+id')
    prefix_counts: tuple[int, ...] = ()  # rows of the prefix tables, prefix lengths 1..H (history 'prefixn')
    # > 0: an item-level score beside the SID's: the BOS state's log-softmax over every catalog item's ITEM vector
    # (tied to the history's ITEM tokens), weighted by this in the training loss and added, times this, to each
    # candidate's SID log-likelihood by the engine (`Engine.dense_bonus`)
    dense_weight: float = 0.0
    # the engine's default weight of the dense score at retrieval (None: dense_weight), chosen on validation: the
    # loss weight that trains the model best need not be the ranking weight that retrieves best
    retrieval_dense_weight: float | None = None
    # the dense score's item side: 'tied' (the history's ITEM vectors) or 'table' (its own row per item,
    # `embedding.dense_items`, as SASRec-CE and SID-input score; needs '+id' history, whose catalog cannot grow)
    dense_head: str = "tied"
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "codebook_sizes", tuple(int(c) for c in self.codebook_sizes))
        object.__setattr__(self, "prefix_counts", tuple(int(c) for c in self.prefix_counts))
        if self.head_mode not in ("shared", "per_level"):
            raise ValueError(f"head_mode={self.head_mode!r}: expected 'shared' or 'per_level'")
        if self.history not in HISTORY_MODES:
            raise ValueError(f"history={self.history!r}: expected one of {HISTORY_MODES}")
        if "id" in self.item_parts and self.num_items < 1:
            raise ValueError(f"history={self.history!r} needs num_items (got {self.num_items})")
        if "prefixn" in self.item_parts and len(self.prefix_counts) != self.num_levels:
            raise ValueError(f"history={self.history!r} needs one prefix count per level (got {self.prefix_counts})")
        if self.dense_weight < 0 or (self.dense_weight > 0 and not self.item_parts):
            raise ValueError(f"dense_weight={self.dense_weight}: must be >= 0, and > 0 needs ITEM-token history "
                             f"(the item vectors are the ITEM tokens'), not history={self.history!r}")
        if self.retrieval_dense_weight is not None and (self.retrieval_dense_weight < 0 or not self.dense_weight):
            raise ValueError(f"retrieval_dense_weight={self.retrieval_dense_weight}: must be >= 0, and needs a model "
                             f"trained with the dense score (dense_weight > 0, got {self.dense_weight})")
        if self.dense_head not in DENSE_HEADS or (self.dense_head == "table" and
                                                  not (self.dense_weight > 0 and "id" in self.item_parts)):
            raise ValueError(f"dense_head={self.dense_head!r}: expected one of {DENSE_HEADS}; 'table' needs "
                             f"dense_weight > 0 and '+id' history (got {self.dense_weight}, {self.history!r})")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} not divisible by num_attention_heads="
                             f"{self.num_attention_heads}")

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    @property
    def item_parts(self) -> tuple[str, ...]:
        return item_parts(self.history)

    @property
    def needs_item_ids(self) -> bool:
        return needs_item_ids(self.history)

    @property
    def needs_pids(self) -> bool:
        """Whether training batches need item ids: ITEM-token tables, or the item-level (dense) loss's labels."""
        return self.needs_item_ids or self.dense_weight > 0

    @property
    def vocab_size(self) -> int:
        """Rows of the shared code table: level h uses rows level_offsets[h] .. level_offsets[h] + C_h - 1."""
        return sum(self.codebook_sizes)

    @property
    def level_offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for c in self.codebook_sizes:
            out.append(acc)
            acc += c
        return tuple(out)

    @property
    def max_positions(self) -> int:
        return self.max_items * (self.num_levels + 1)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelArch":
        return cls(**d)
