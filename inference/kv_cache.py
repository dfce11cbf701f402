"""Key/value caches for decoding: one shared history cache per user, one small ancestor cache per beam.

The history ([codes(0) … codes(n-1), BOS], right-padded) is encoded once; its keys/values are shared by all
beams of a user (never copied per beam). Each beam additionally carries the keys/values of its own generated
tokens (at most H-1 of them); after every step the beam cache is gathered by parent index.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class HistoryCache:
    keys: list[torch.Tensor]  # per layer [B, nh, S, hd]
    values: list[torch.Tensor]  # per layer [B, nh, S, hd]
    visible: torch.Tensor  # [B, S] bool: key may be attended by the item being generated
    lengths: torch.Tensor  # [B] history items per user

    @property
    def masked(self) -> torch.Tensor:
        """[B, 1, 1, S] True where the key is hidden from the generated item (broadcasts over heads, beams)."""
        if getattr(self, "_masked", None) is None:
            self._masked = ~self.visible[:, None, None, :]
        return self._masked


@dataclass
class BeamCache:
    keys: list[torch.Tensor] = field(default_factory=list)  # per layer [B, W, t, nh, hd]
    values: list[torch.Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2]) if self.keys else 0

    def appended(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of layer `layer` with the new tokens' k, v [B, W, nh, hd] appended as the last slot."""
        if layer < len(self.keys):
            return (torch.cat([self.keys[layer], k.unsqueeze(2)], dim=2),
                    torch.cat([self.values[layer], v.unsqueeze(2)], dim=2))
        return k.unsqueeze(2), v.unsqueeze(2)

    def reorder(self, parents: torch.Tensor) -> "BeamCache":
        """parents [B, W'] index the previous step's beams of the same user."""
        B = parents.shape[0]
        rows = torch.arange(B).unsqueeze(1)
        return BeamCache([k[rows, parents] for k in self.keys], [v[rows, parents] for v in self.values])
