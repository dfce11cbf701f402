"""The item-level models (SASRec-CE, SID-input) as a trainer task, and their full-catalog ranking.

Validation during training and `sidgr score-items` rank with the same function (`rank_items`: the most recent
max_items - 1 history items as input, every item of the whole history excluded) and score with the same code as
`sidgr evaluate` (`sidgr.evaluate.score_candidates`), so the Recall@10 that selects a checkpoint is the number
`sidgr evaluate` reports for that checkpoint's candidates.
"""
from __future__ import annotations

import numpy as np
import torch

from sidgr.arch import ModelArch
from sidgr.data.ragged import Ragged
from sidgr.errors import input_error
from sidgr.ranking import top_k_unseen
from sidgr.sid.mapping import SIDMapping
from sidgr.training.item_model import (ItemBatch, ItemCatalog, ItemSeqModel, build_item_model, history_layout,
                                       item_arch, item_token_losses, next_item_layout, packed_items)

VALID_K = 10
VALID_USERS_PER_BATCH = 256


@torch.no_grad()
def item_logits_for(ddp, model: ItemSeqModel, history: Ragged, keep: int, device) -> torch.Tensor:
    """Logits [U, N] of the next item after each user's most recent `keep` history items."""
    pids, lengths = history.recent(keep)
    ib = history_layout(torch.from_numpy(pids), torch.from_numpy(lengths)).to(device)
    hidden = ddp(*ib.model_inputs())
    rows = torch.arange(history.num_rows, device=device)
    return model.full_logits(hidden[ib.query.clamp(min=0), rows])


def rank_items(logits: torch.Tensor, history: Ragged, k: int, exclude_history: bool = True) -> tuple[Ragged, Ragged]:
    """Top-k items per user, the whole history excluded; users without history get an empty list."""
    items, scores = top_k_unseen(logits, k, history if exclude_history else None)
    has_history = np.repeat(history.lengths > 0, items.lengths)
    return items.select(has_history), scores.select(has_history)


def target_cross_entropy(logits: torch.Tensor, targets: np.ndarray) -> torch.Tensor:
    """Per-user CE of the held-out target under the full-catalog softmax (fp64 sum)."""
    t = torch.from_numpy(targets).to(logits.device)
    return (torch.logsumexp(logits.double(), 1) - logits.double().gather(1, t.unsqueeze(1)).squeeze(1)).sum()


class ItemTask:
    """The item-level family (see `training/task.py` for the protocol)."""

    def __init__(self, mapping: SIDMapping, item_input: str, item_head: str = "table", temperature: float = 0.0):
        self.catalog = ItemCatalog.from_mapping(mapping)
        self.item_input, self.item_head, self.temperature = item_input, item_head, temperature
        self.valid = None
        self.keep = None

    def arch(self, arch: ModelArch) -> ModelArch:
        self.keep = arch.max_items - 1
        return item_arch(arch, self.catalog, self.item_input, self.item_head, self.temperature)

    def build(self, model_cfg, arch: ModelArch, tp: int, device) -> ItemSeqModel:
        return build_item_model(model_cfg, arch, self.catalog, tp, device)

    def batch(self, batch, loss_mode: str, device, targets: int = 0) -> ItemBatch:
        """A training batch, its rows packed (`packed_items`: the same losses, less padding computed)."""
        pids = self.catalog.sids_to_pids(batch.sids, batch.lengths)
        return packed_items(next_item_layout(pids, batch.lengths, loss_mode, targets)).to(device)

    token_losses = staticmethod(item_token_losses)

    def setup_validation(self, data_cfg, mapping, dist_info) -> None:
        """This DP rank's share (rows r, r + DP, ...) of the valid users, read once."""
        from sidgr.data.readers import read_targets

        if data_cfg.valid_path:
            targets, has_history = read_targets(data_cfg.valid_path, self.catalog.num_items)
            if not has_history:
                raise input_error(data_cfg.valid_path, "columns", "item_ids",
                                  "validation needs the users' histories (item_ids)")
            self.valid = targets.take(np.arange(dist_info.dp_rank, targets.num_users, dist_info.dp_size))

    def score_checkpoint(self, ckpt, run_dir, data_cfg, trainer_cfg) -> dict:
        return {}  # validate() already ranks the catalog (valid_recall@10)

    @torch.no_grad()
    def validate(self, ddp, model: ItemSeqModel, device, max_batches: int) -> dict:
        """valid_loss (target CE), valid_recall@10 and valid_ndcg@10 over all valid users, summed over DP."""
        from sidgr.data.readers import Candidates
        from sidgr.evaluate import score_candidates
        from sidgr.training.dist import all_reduce_dp

        if self.valid is None:
            return {}
        ddp.eval()
        total = torch.zeros(4, dtype=torch.float64)
        for i, start in enumerate(range(0, self.valid.num_users, VALID_USERS_PER_BATCH)):
            if max_batches and i >= max_batches:
                break
            chunk = self.valid.take(np.arange(start, min(start + VALID_USERS_PER_BATCH, self.valid.num_users)))
            logits = item_logits_for(ddp, model, chunk.items, self.keep, device)
            items, scores = rank_items(logits, chunk.items, VALID_K)
            m = score_candidates(Candidates(chunk.user_ids, items, scores), chunk, model.num_items, (VALID_K,),
                                 exclude_history=True).per_user
            total += torch.tensor([float(target_cross_entropy(logits, chunk.single_targets())), chunk.num_users,
                                   m[f"recall@{VALID_K}"].sum(), m[f"ndcg@{VALID_K}"].sum()], dtype=torch.float64)
        ddp.train()
        total = all_reduce_dp(total.to(device)).cpu()
        n = float(total[1].clamp_min(1))
        return {"valid_loss": float(total[0]) / n, f"valid_recall@{VALID_K}": float(total[2]) / n,
                f"valid_ndcg@{VALID_K}": float(total[3]) / n}
