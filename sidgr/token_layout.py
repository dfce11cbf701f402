"""Token layout shared by training and the inference engine.

Every item k of a user owns H+1 position slots: slot k*(H+1) for its BOS and k*(H+1)+1+h for its level-h code.
Whether an item's BOS is actually present depends on the loss mode, but positions never shift, so the same
item sits at the same positions in training (either mode) and at inference.

How history items are seen (`history`, stored in the arch; `sidgr.arch.HISTORY_MODES`):
  "codes": an item is its H code tokens; every later token may attend to them.
  other:   an item is seen by later items as one ITEM token in its last slot k*(H+1)+H (the model composes its
           vector from the item's codes, prefixes or id: 'rqsum', 'prefixn', '+id'); the code tokens of an item
           being predicted (slots 1..H-1: codes 0..H-2, the chain that predicts the next code) are seen only by
           later tokens of the same item. History then costs one key per item, as in an item-level model, and
           the generated item is still decoded code by code.

Loss modes:
  "last": [history(0) … history(n-2), BOS, codes(n-1)]          loss on the last item only
  "all":  [history(0), BOS, codes(1), BOS, codes(2) …]          loss on every item after the first
Attention is causal, except that a BOS is seen by no token but itself (and, with "items", chain codes only by
their own item). The BOS is only the query that predicts level 0; what later items see of an item never
depends on whether it carried a BOS in training, so in "all" mode every item is predicted exactly as "last"
mode (and inference) would predict it from its own prefix, at any depth.
Inference prefill is "last" mode with the target item unknown: [history(0) … history(n-1), BOS].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

LossMode = Literal["last", "all"]
IGNORE = -100


@dataclass
class TokenBatch:
    tokens: torch.Tensor  # [B, S] global code id (level offset + code); 0 at BOS, ITEM and padding
    is_bos: torch.Tensor  # [B, S] bool
    valid: torch.Tensor  # [B, S] bool, False on right padding
    positions: torch.Tensor  # [B, S] slot positions (see module doc); 0 on padding
    item_index: torch.Tensor  # [B, S] item each token belongs to
    labels: torch.Tensor  # [B, S] global code id the token must predict, IGNORE where no loss
    label_levels: torch.Tensor  # [B, S] level of the label (IGNORE where no loss)
    attention_mask: torch.Tensor  # [B, 1, S, S] bool, True = masked out (Megatron's convention)
    is_item: torch.Tensor  # [B, S] bool: an ITEM token (history other than "codes")
    item_codes: torch.Tensor  # [B, S, H] an ITEM token's global code ids; 0 elsewhere
    item_pids: torch.Tensor  # [B, S] an ITEM token's item id (0 when not given or not an ITEM)
    history: torch.Tensor  # [B, S] bool: every later token may attend to this one
    label_items: torch.Tensor  # [B, S] at a predicted item's BOS: that item's id (when pids are given); else IGNORE

    @property
    def loss_mask(self) -> torch.Tensor:
        return self.labels != IGNORE

    def model_inputs(self) -> tuple[torch.Tensor, ...]:
        """The decoder's forward arguments."""
        return (self.tokens, self.is_bos, self.positions, self.attention_mask, self.is_item, self.item_codes,
                self.item_pids)

    def to(self, device) -> "TokenBatch":
        return TokenBatch(*(getattr(self, f).to(device, non_blocking=True) for f in TokenBatch.__dataclass_fields__))


def build_layout(sids: torch.Tensor, code_present: torch.Tensor, bos_present: torch.Tensor,
                 level_offsets: tuple[int, ...] | list[int], history: str = "codes",
                 pids: torch.Tensor | None = None) -> TokenBatch:
    """sids [B, L, H] per-level codes (pids [B, L] the items' ids, needed by ITEM tokens with id or prefix
    tables); code_present [B, L]: the item's codes are known (it is history or a training target); bos_present
    [B, L]: the item is predicted (BOS, and with ITEM tokens its chain codes)."""
    B, L, H = sids.shape
    offsets = torch.as_tensor(list(level_offsets), dtype=torch.int64)
    glob = sids.to(torch.int64) + offsets  # [B, L, H]
    zero = torch.zeros(B, L, 1, dtype=torch.int64)
    slot_level = torch.arange(-1, H).view(1, 1, H + 1).expand(B, L, H + 1)
    slot_is_bos = (slot_level == -1).clone()
    # label of slot j (BOS or the code before it) = code j of the item, when the item is predicted
    slot_label = torch.cat([glob, torch.full((B, L, 1), IGNORE, dtype=torch.int64)], dim=2)
    slot_label_level = torch.cat([slot_level[:, :, 1:], torch.full((B, L, 1), IGNORE, dtype=torch.int64)], dim=2)
    if history == "codes":
        slot_tok = torch.cat([zero, glob], dim=2)
        slot_present = torch.cat([bos_present.unsqueeze(2), code_present.unsqueeze(2).expand(B, L, H)], dim=2)
        slot_history = ~slot_is_bos
        slot_is_item = torch.zeros(B, L, H + 1, dtype=torch.bool)
    else:
        slot_tok = torch.cat([zero, glob[:, :, :H - 1], zero], dim=2)
        chain = (bos_present & code_present).unsqueeze(2).expand(B, L, H - 1)
        slot_present = torch.cat([bos_present.unsqueeze(2), chain, code_present.unsqueeze(2)], dim=2)
        slot_history = torch.zeros(B, L, H + 1, dtype=torch.bool)
        slot_history[:, :, H] = True
        slot_is_item = slot_history.clone()
    slot_loss = bos_present.unsqueeze(2) & code_present.unsqueeze(2) & (slot_label != IGNORE)
    slot_label = torch.where(slot_loss, slot_label, IGNORE)
    slot_label_level = torch.where(slot_loss, slot_label_level, IGNORE)
    slot_item = torch.arange(L).view(1, L, 1).expand(B, L, H + 1)

    present = slot_present.reshape(B, -1)
    lengths = present.sum(1)
    S = int(lengths.max()) if B else 0
    # Compact present slots to the left, keeping their order.
    dest = torch.cumsum(present.to(torch.int64), 1) - 1
    rows = torch.arange(B).unsqueeze(1).expand_as(dest)[present]
    cols = dest[present]

    def compact(src: torch.Tensor, fill) -> torch.Tensor:
        out = torch.full((B, S) + tuple(src.shape[3:]), fill, dtype=src.dtype)
        out[rows, cols] = src.reshape((B, L * (H + 1)) + tuple(src.shape[3:]))[present]
        return out

    tokens = compact(slot_tok, 0)
    is_bos = compact(slot_is_bos, False)
    positions = compact(torch.arange(L * (H + 1)).view(1, L, H + 1).expand(B, L, H + 1), 0)
    item_index = compact(slot_item, -1)
    labels = compact(slot_label, IGNORE)
    label_levels = compact(slot_label_level, IGNORE)
    is_item = compact(slot_is_item, False)
    item_codes = compact(glob.unsqueeze(2).expand(B, L, H + 1, H) * slot_is_item.unsqueeze(3), 0)
    item_pids = torch.zeros(B, S, dtype=torch.int64)
    if pids is not None:
        item_pids = compact(pids.to(torch.int64).clamp(min=0).unsqueeze(2) * slot_is_item, 0)
    label_items = torch.full((B, S), IGNORE, dtype=torch.int64)
    if pids is not None:
        bos_label = torch.where(slot_loss[:, :, 0], pids.to(torch.int64), IGNORE)
        label_items = compact(torch.cat([bos_label.unsqueeze(2), torch.full((B, L, H), IGNORE)], dim=2), IGNORE)
    hist = compact(slot_history, False)
    valid = torch.arange(S).unsqueeze(0) < lengths.unsqueeze(1)
    hist &= valid
    attention_mask = ~visible_keys(hist, is_bos, item_index, valid).unsqueeze(1)
    return TokenBatch(tokens, is_bos, valid, positions, item_index, labels, label_levels, attention_mask,
                      is_item, item_codes, item_pids, hist, label_items)


def visible_keys(history: torch.Tensor, is_bos: torch.Tensor, item_index: torch.Tensor,
                 valid: torch.Tensor) -> torch.Tensor:
    """[B, S, S] bool, True where query j may attend key i: causal, valid keys that are history, or (for a query
    that is not history itself) code tokens of the query's own item; never a BOS. The diagonal is always
    visible: a BOS sees itself, and padding rows never softmax over nothing."""
    S = is_bos.shape[1]
    causal = torch.ones(S, S, dtype=torch.bool).tril()
    chain_key = valid & ~is_bos & ~history
    same_item = item_index.unsqueeze(2) == item_index.unsqueeze(1)
    own_chain = chain_key.unsqueeze(1) & same_item & ~history.unsqueeze(2)
    allowed = causal & (history.unsqueeze(1) | own_chain)
    return allowed | torch.eye(S, dtype=torch.bool)


def training_layout(sids: torch.Tensor, lengths: torch.Tensor, loss_mode: LossMode,
                    level_offsets, history: str = "codes", pids: torch.Tensor | None = None,
                    targets: int = 0) -> TokenBatch:
    """sids [B, L, H] right-padded items (pids [B, L] their ids, see build_layout), lengths [B] items per user
    (>= 2); targets ("all" mode, DataConfig.targets_per_window): only each row's last `targets` items are
    predicted (0: every item after the first), the others are history only."""
    L = sids.shape[1]
    k = torch.arange(L).unsqueeze(0)
    n = lengths.unsqueeze(1)
    code_present = k < n
    if loss_mode == "last":
        bos_present = k == n - 1
    elif loss_mode == "all":
        bos_present = (k >= 1) & (k < n) & (k >= n - targets if targets else True)
    else:
        raise ValueError(f"loss_mode={loss_mode!r}: expected 'last' or 'all'")
    return build_layout(sids, code_present, bos_present, level_offsets, history, pids)


def prefill_layout(sids: torch.Tensor, lengths: torch.Tensor, level_offsets,
                   history: str = "codes", pids: torch.Tensor | None = None) -> TokenBatch:
    """History [B, L, H] with lengths [B] -> tokens [history(0) … history(n-1), BOS]; the BOS is the last valid
    token."""
    B, L, H = sids.shape
    padded = torch.cat([sids, torch.zeros(B, 1, H, dtype=sids.dtype)], dim=1)
    k = torch.arange(L + 1).unsqueeze(0)
    n = lengths.unsqueeze(1)
    if pids is not None:
        pids = torch.cat([pids, torch.zeros(B, 1, dtype=pids.dtype)], dim=1)
    return build_layout(padded, k < n, k == n, level_offsets, history, pids)


_FILLS = {"tokens": 0, "is_bos": False, "valid": False, "positions": 0, "item_index": -1, "labels": IGNORE,
          "label_levels": IGNORE, "is_item": False, "item_codes": 0, "item_pids": 0, "history": False,
          "label_items": IGNORE}


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[tuple[int, int]]:
    """(packed row, offset) of each row of `lengths` tokens, longest first into the first row with room;
    deterministic (ties in row order). Empty rows get (-1, 0)."""
    fill: list[int] = []
    place = [(-1, 0)] * len(lengths)
    for b in sorted(range(len(lengths)), key=lambda b: -lengths[b]):
        n = lengths[b]
        if n == 0:
            continue
        row = next((i for i, f in enumerate(fill) if f + n <= capacity), len(fill))
        if row == len(fill):
            fill.append(0)
        place[b] = (row, fill[row])
        fill[row] += n
    return place


def pack_rows(valid: torch.Tensor, attention_mask: torch.Tensor,
              per_token: dict[str, tuple[torch.Tensor, object]]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Right-padded rows (valid [B, S], attention_mask [B, 1, S, S] True = masked, per_token {name: ([B, S, ...],
    fill)}) side by side in as few rows of length S as first-fit decreasing finds: each row keeps its tokens and
    its attention block, no token attends across rows, and a padding query sees only itself. Every token then sees
    exactly the keys it saw, so its output and loss are unchanged, with less padding computed. Returns the packed
    attention mask and per-token fields."""
    B, S = valid.shape
    lengths = valid.sum(1)
    place = first_fit_decreasing(lengths.tolist(), S)
    P = max(1, 1 + max((r for r, _ in place), default=-1))
    rows = torch.tensor([r for r, _ in place], dtype=torch.int64)
    offsets = torch.tensor([o for _, o in place], dtype=torch.int64)
    src_b, src_s = valid.nonzero(as_tuple=True)
    dst_r, dst_s = rows[src_b], offsets[src_b] + src_s
    out = {}
    for name, (src, fill) in per_token.items():
        out[name] = torch.full((P, S) + tuple(src.shape[2:]), fill, dtype=src.dtype, device=src.device)
        out[name][dst_r, dst_s] = src[src_b, src_s]
    mask = torch.ones(P, 1, S, S, dtype=torch.bool, device=valid.device)
    for b, (r, o) in enumerate(place):
        n = int(lengths[b])
        if n:
            mask[r, 0, o:o + n, o:o + n] = attention_mask[b, 0, :n, :n]
    pad = torch.ones(P, S, dtype=torch.bool, device=valid.device)
    pad[dst_r, dst_s] = False
    mask[:, 0].diagonal(dim1=-2, dim2=-1)[pad] = False
    return mask, out


def packed(tb: TokenBatch) -> TokenBatch:
    """The batch's rows packed (`pack_rows`): each token's output and loss are those of `tb`, with less padding
    computed (Beauty's SID-GR rows are a third full). Training only: a packed row is no longer one user."""
    mask, fields = pack_rows(tb.valid, tb.attention_mask, {n: (getattr(tb, n), f) for n, f in _FILLS.items()})
    return TokenBatch(attention_mask=mask, **fields)


def decode_position(lengths: torch.Tensor, level: int, num_levels: int) -> torch.Tensor:
    """Position of the level-`level` code of the item being generated after a history of `lengths` items."""
    return lengths * (num_levels + 1) + 1 + level
