"""The decoder's architecture as plain data: what training builds with Megatron and the engine rebuilds in torch."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

HeadMode = Literal["shared", "per_level"]
HistoryMode = Literal["codes", "items"]


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
    history: HistoryMode = "codes"  # how later tokens see a history item: its code tokens, or one ITEM token
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "codebook_sizes", tuple(int(c) for c in self.codebook_sizes))
        if self.head_mode not in ("shared", "per_level"):
            raise ValueError(f"head_mode={self.head_mode!r}: expected 'shared' or 'per_level'")
        if self.history not in ("codes", "items"):
            raise ValueError(f"history={self.history!r}: expected 'codes' or 'items'")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} not divisible by num_attention_heads="
                             f"{self.num_attention_heads}")

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

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
