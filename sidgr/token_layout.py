"""Token layout shared by training and the inference engine.

Every item k of a user owns H+1 position slots: slot k*(H+1) for its BOS and k*(H+1)+1+h for its level-h code.
Whether an item's BOS is actually present depends on the loss mode, but positions never shift, so the same
item sits at the same positions in training (either mode) and at inference.

Loss modes:
  "last": [codes(0) … codes(n-2), BOS, codes(n-1)]              loss on the last item only
  "all":  [codes(0), BOS, codes(1), BOS, codes(2) …]            loss on every item after the first
Attention is causal, except that a BOS is seen by no token but itself. The BOS is only the query that predicts
level 0; code tokens never see one, so a history item's hidden states are identical whether or not it carried a
BOS in training, and in "all" mode every item is predicted exactly as "last" mode (and inference) would predict
it from its own prefix, at any depth.
Inference prefill is "last" mode with the target item unknown: [codes(0) … codes(n-1), BOS].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossMode = Literal["last", "all"]
IGNORE = -100


@dataclass
class TokenBatch:
    tokens: torch.Tensor  # [B, S] global code id (level offset + code); 0 at BOS and padding
    is_bos: torch.Tensor  # [B, S] bool
    valid: torch.Tensor  # [B, S] bool, False on right padding
    positions: torch.Tensor  # [B, S] slot positions (see module doc); 0 on padding
    item_index: torch.Tensor  # [B, S] item each token belongs to
    labels: torch.Tensor  # [B, S] global code id the token must predict, IGNORE where no loss
    label_levels: torch.Tensor  # [B, S] level of the label (IGNORE where no loss)
    attention_mask: torch.Tensor  # [B, 1, S, S] bool, True = masked out (Megatron's convention)

    @property
    def loss_mask(self) -> torch.Tensor:
        return self.labels != IGNORE

    def model_inputs(self) -> tuple[torch.Tensor, ...]:
        """The decoder's forward arguments."""
        return self.tokens, self.is_bos, self.positions, self.attention_mask


def build_layout(sids: torch.Tensor, code_present: torch.Tensor, bos_present: torch.Tensor,
                 level_offsets: tuple[int, ...] | list[int]) -> TokenBatch:
    """sids [B, L, H] per-level codes; code_present / bos_present [B, L] bool select which slots exist."""
    B, L, H = sids.shape
    offsets = torch.as_tensor(list(level_offsets), dtype=torch.int64)
    slot_tok = torch.cat([torch.zeros(B, L, 1, dtype=torch.int64), sids.to(torch.int64) + offsets], dim=2)
    slot_present = torch.cat([bos_present.unsqueeze(2), code_present.unsqueeze(2).expand(B, L, H)], dim=2)
    slot_is_bos = torch.zeros(B, L, H + 1, dtype=torch.bool)
    slot_is_bos[:, :, 0] = True
    slot_item = torch.arange(L).view(1, L, 1).expand(B, L, H + 1)
    slot_level = torch.arange(-1, H).view(1, 1, H + 1).expand(B, L, H + 1)
    slot_loss_item = bos_present.unsqueeze(2).expand(B, L, H + 1)

    present = slot_present.reshape(B, -1)
    lengths = present.sum(1)
    S = int(lengths.max()) if B else 0
    # Compact present slots to the left, keeping their order.
    dest = torch.cumsum(present.to(torch.int64), 1) - 1
    rows = torch.arange(B).unsqueeze(1).expand_as(dest)[present]
    cols = dest[present]

    def compact(src: torch.Tensor, fill) -> torch.Tensor:
        out = torch.full((B, S), fill, dtype=src.dtype)
        out[rows, cols] = src.reshape(B, -1)[present]
        return out

    tokens = compact(slot_tok, 0)
    is_bos = compact(slot_is_bos, False)
    positions = compact(torch.arange(L * (H + 1)).view(1, L, H + 1).expand(B, L, H + 1), 0)
    item_index = compact(slot_item, -1)
    level = compact(slot_level, -1)
    loss_item = compact(slot_loss_item, False)
    valid = torch.arange(S).unsqueeze(0) < lengths.unsqueeze(1)

    # Token t predicts token t+1 when t+1 is a code of an item that carries loss.
    labels = torch.full((B, S), IGNORE, dtype=torch.int64)
    label_levels = torch.full((B, S), IGNORE, dtype=torch.int64)
    if S > 1:
        nxt_is_target = valid[:, 1:] & ~is_bos[:, 1:] & loss_item[:, 1:]
        labels[:, :-1] = torch.where(nxt_is_target, tokens[:, 1:], IGNORE)
        label_levels[:, :-1] = torch.where(nxt_is_target, level[:, 1:], IGNORE)

    attention_mask = ~visible_keys(is_bos, valid).unsqueeze(1)
    return TokenBatch(tokens, is_bos, valid, positions, item_index, labels, label_levels, attention_mask)


def visible_keys(is_bos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, S, S] bool, True where query j may attend key i: causal, valid, non-BOS keys.
    The diagonal is always visible: a BOS sees itself, and padding rows never softmax over nothing."""
    S = is_bos.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    allowed = causal & history_keys(is_bos, valid).unsqueeze(1)
    return allowed | torch.eye(S, dtype=torch.bool)


def history_keys(is_bos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, S] bool: the tokens any later token may attend to (valid code tokens, never a BOS)."""
    return valid & ~is_bos


def training_layout(sids: torch.Tensor, lengths: torch.Tensor, loss_mode: LossMode,
                    level_offsets) -> TokenBatch:
    """sids [B, L, H] right-padded items, lengths [B] items per user (>= 2)."""
    L = sids.shape[1]
    k = torch.arange(L).unsqueeze(0)
    n = lengths.unsqueeze(1)
    code_present = k < n
    if loss_mode == "last":
        bos_present = k == n - 1
    elif loss_mode == "all":
        bos_present = (k >= 1) & (k < n)
    else:
        raise ValueError(f"loss_mode={loss_mode!r}: expected 'last' or 'all'")
    return build_layout(sids, code_present, bos_present, level_offsets)


def prefill_layout(sids: torch.Tensor, lengths: torch.Tensor, level_offsets) -> TokenBatch:
    """History [B, L, H] with lengths [B] -> tokens [codes(0) … codes(n-1), BOS]; the BOS is the last valid token."""
    B, L, H = sids.shape
    padded = torch.cat([sids, torch.zeros(B, 1, H, dtype=sids.dtype)], dim=1)
    k = torch.arange(L + 1).unsqueeze(0)
    n = lengths.unsqueeze(1)
    return build_layout(padded, k < n, k == n, level_offsets)


def decode_position(lengths: torch.Tensor, level: int, num_levels: int) -> torch.Tensor:
    """Position of the level-`level` code of the item being generated after a history of `lengths` items."""
    return lengths * (num_levels + 1) + 1 + level
