"""The mixed next-token loss: text targets use the whole vocabulary, SID code targets only their level's codes
(the softmax generation uses, and a fraction of the 49k-row head's cost)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .tasks import NO_LOSS, TEXT
from .vocab import SidVocab


def lm_loss(hidden: torch.Tensor, weight: torch.Tensor, input_ids: torch.Tensor, kinds: torch.Tensor,
            vocab: SidVocab) -> tuple[torch.Tensor, int]:
    """hidden [R, T, d] (final-norm output), weight [V, d] (the tied head). Token t+1 is predicted from position t
    with the kind kinds[:, t+1]. Returns (mean loss over targets, number of targets)."""
    h = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    target, kind = input_ids[:, 1:].reshape(-1), kinds[:, 1:].reshape(-1)
    total = hidden.new_zeros((), dtype=torch.float32)
    count = int((kind != NO_LOSS).sum())
    text = (kind == TEXT).nonzero().squeeze(1)
    if text.numel():
        logits = h[text] @ weight.t()
        total = total + F.cross_entropy(logits.float(), target[text], reduction="sum")
    for level, ids in enumerate(vocab.level_ids):
        rows = (kind == 1 + level).nonzero().squeeze(1)
        if not rows.numel():
            continue
        logits = h[rows] @ weight[ids].t()
        code = target[rows] - ids[0]  # a level's tokens were added consecutively
        total = total + F.cross_entropy(logits.float(), code, reduction="sum")
    return total / max(count, 1), count
