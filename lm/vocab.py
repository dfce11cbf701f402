"""The SID vocabulary of the language model: one token per (level, code), e.g. `<|sid_0_17|>`, plus the item
boundary tokens `<|sid_begin|>` and `<|sid_end|>`. An item is written begin, its H codes, end."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sidgr.errors import input_error

SID_BEGIN = "<|sid_begin|>"
SID_END = "<|sid_end|>"


def code_token(level: int, code: int) -> str:
    return f"<|sid_{level}_{code}|>"


def sid_token_strings(codebook_sizes: list[int]) -> list[str]:
    return [SID_BEGIN, SID_END] + [code_token(h, c) for h, size in enumerate(codebook_sizes) for c in range(size)]


@dataclass
class SidVocab:
    codebook_sizes: list[int]
    begin_id: int
    end_id: int
    level_ids: list[torch.Tensor]  # level_ids[h][c]: the token id of code c at level h

    @classmethod
    def from_tokenizer(cls, tokenizer, codebook_sizes: list[int], source="tokenizer") -> "SidVocab":
        vocab = tokenizer.get_vocab()
        missing = [t for t in sid_token_strings(codebook_sizes) if t not in vocab]
        if missing:
            raise input_error(source, "SID tokens", missing[0],
                              f"missing from the tokenizer ({len(missing)} of them): built for another mapping?")
        levels = [torch.tensor([vocab[code_token(h, c)] for c in range(size)], dtype=torch.int64)
                  for h, size in enumerate(codebook_sizes)]
        return cls(list(codebook_sizes), vocab[SID_BEGIN], vocab[SID_END], levels)

    @property
    def num_levels(self) -> int:
        return len(self.codebook_sizes)

    def item_tokens(self, sids: torch.Tensor) -> torch.Tensor:
        """[N, H] SIDs -> [N, H + 2] token ids: begin, one token per level, end."""
        sids = torch.as_tensor(sids, dtype=torch.int64)
        codes = torch.stack([self.level_ids[h][sids[:, h]] for h in range(self.num_levels)], dim=1)
        n = sids.shape[0]
        return torch.cat([torch.full((n, 1), self.begin_id), codes, torch.full((n, 1), self.end_id)], dim=1)

    def code_of_token(self) -> dict[int, tuple[int, int]]:
        """token id -> (level, code), for reading generated text back."""
        return {int(t): (h, c) for h, ids in enumerate(self.level_ids) for c, t in enumerate(ids.tolist())}
