"""Token-mean cross-entropy (fp32, vocab-parallel under TP) over the global batch.

loss = (sum of this DP rank's token losses) / (loss tokens in the whole global batch). Megatron DDP is built with
`calculate_per_token_loss=True`, so it sums gradients over DP: DP=2 on half batches equals DP=1 on the whole.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core import parallel_state as ps
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from sidgr.token_layout import IGNORE, TokenBatch
from sidgr.training.dist import all_reduce_dp


@dataclass
class TokenLosses:
    # [n] fp32 per loss token, in row-major (b, s) order of batch.loss_mask; then, with a dense item-level
    # score, one weighted item CE per predicted item (level -1)
    losses: torch.Tensor
    levels: torch.Tensor  # [n] level of each label (-1: the dense item-level term)
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
        # the softmax at level h covers level h's codes only: the distribution the engine scores with
        logits = level_masked_logits(model.head_logits(0, h_sel), levels, arch.level_offsets, arch.codebook_sizes,
                                     ps.get_tensor_model_parallel_rank())
        losses = vocab_parallel_cross_entropy(logits, labels)
    else:
        losses = torch.zeros(labels.shape[0], dtype=torch.float32, device=hidden.device)
        for h, offset in enumerate(arch.level_offsets):
            idx = (levels == h).nonzero(as_tuple=True)[0]
            if idx.numel():
                ce = vocab_parallel_cross_entropy(model.head_logits(h, h_sel[idx]), labels[idx] - offset)
                losses = losses.index_put((idx,), ce)
    tl = TokenLosses(losses, levels, rows, cols)
    return with_dense_losses(tl, model, hidden, batch) if arch.dense_weight > 0 else tl


def with_dense_losses(tl: TokenLosses, model, hidden: torch.Tensor, batch: TokenBatch) -> TokenLosses:
    """Append dense_weight * CE of each predicted item under the BOS state's softmax over every catalog item.
    Its terms share the code tokens' normaliser (the global count of code labels), so the weight is relative to
    one code token's CE."""
    rows, cols = (batch.label_items != IGNORE).nonzero(as_tuple=True)
    ce = F.cross_entropy(model.item_logits(hidden[cols, rows]), batch.label_items[rows, cols], reduction="none")
    return TokenLosses(torch.cat([tl.losses, model.arch.dense_weight * ce]),
                       torch.cat([tl.levels, torch.full_like(rows, -1)]),
                       torch.cat([tl.rows, rows]), torch.cat([tl.cols, cols]))


def level_masked_logits(logits: torch.Tensor, levels: torch.Tensor, level_offsets, codebook_sizes,
                        tp_rank: int = 0) -> torch.Tensor:
    """Shared head: this rank's vocab slice of the logits [n, V_padded / TP], with every code outside each row's
    label level (global ids level_offsets[h] .. + codebook_sizes[h]) masked, so the vocab-parallel softmax is
    the engine's per-level softmax. A rank whose slice holds none of a row's level masks the whole row; the
    max/sum all-reduces of the vocab-parallel cross-entropy then take everything from the other ranks."""
    per_rank = logits.shape[-1]
    col = torch.arange(tp_rank * per_rank, (tp_rank + 1) * per_rank, device=logits.device)
    offsets = torch.as_tensor(list(level_offsets), dtype=torch.int64, device=logits.device)
    sizes = torch.as_tensor(list(codebook_sizes), dtype=torch.int64, device=logits.device)
    lo = offsets[levels].unsqueeze(1)
    hi = lo + sizes[levels].unsqueeze(1)
    outside = (col.unsqueeze(0) < lo) | (col.unsqueeze(0) >= hi)
    return logits.masked_fill(outside, torch.finfo(torch.float32).min)


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
