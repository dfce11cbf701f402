"""Token-mean cross-entropy (fp32, vocab-parallel under TP) over the global batch.

loss = (sum of this DP rank's token losses) / (loss tokens in the whole global batch). Megatron DDP is built with
`calculate_per_token_loss=True`, so it sums gradients over DP: DP=2 on half batches equals DP=1 on the whole.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from sidgr.token_layout import TokenBatch
from sidgr.training.dist import all_reduce_dp


@dataclass
class TokenLosses:
    losses: torch.Tensor  # [n] fp32 per loss token, in row-major (b, s) order of batch.loss_mask
    levels: torch.Tensor  # [n] level of each label
    rows: torch.Tensor  # [n] batch row of each loss token
    cols: torch.Tensor  # [n] sequence position of each loss token


def token_losses(model, hidden: torch.Tensor, batch: TokenBatch) -> TokenLosses:
    """hidden [S, B, hidden] (final LayerNorm applied) -> per-token cross-entropy at the labelled positions."""
    arch = model.arch
    mask = batch.loss_mask
    rows, cols = mask.nonzero(as_tuple=True)
    h_sel = hidden[cols, rows]  # [n, hidden]
    labels = batch.labels[rows, cols]
    levels = batch.label_levels[rows, cols]
    if arch.head_mode == "shared":
        losses = vocab_parallel_cross_entropy(model.head_logits(0, h_sel), labels)
    else:
        losses = torch.zeros(labels.shape[0], dtype=torch.float32, device=hidden.device)
        for h, offset in enumerate(arch.level_offsets):
            idx = (levels == h).nonzero(as_tuple=True)[0]
            if idx.numel():
                ce = vocab_parallel_cross_entropy(model.head_logits(h, h_sel[idx]), labels[idx] - offset)
                losses = losses.index_put((idx,), ce)
    return TokenLosses(losses, levels, rows, cols)


def global_mean_loss(tl: TokenLosses, global_count: torch.Tensor) -> torch.Tensor:
    """This rank's share of the global token-mean: its loss sum over the global count (sum over DP = the mean)."""
    return tl.losses.sum() / global_count.clamp_min(1.0).squeeze(0)


def forward_loss(ddp, model, batch, losses_fn=token_losses) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward `batch` (a TokenBatch or an ItemBatch) -> (this rank's share of the global token-mean loss,
    the global loss-token count). `losses_fn(model, hidden, batch)` is the model family's per-token CE."""
    count = all_reduce_dp(batch.loss_mask.sum().to(dtype=torch.float32).reshape(1))
    hidden = ddp(*batch.model_inputs())
    tl = losses_fn(model, hidden, batch)
    loss = global_mean_loss(tl, count)
    if tl.losses.numel() == 0:
        loss = loss + 0.0 * hidden.sum()  # keep the graph (and DDP's hooks) connected
    return loss, count
