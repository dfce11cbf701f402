"""SID-GR as a trainer task: token layout of SID batches, per-level code losses, validation loss."""
from __future__ import annotations

import torch

from sidgr.arch import ModelArch
from sidgr.token_layout import IGNORE, TokenBatch, packed, training_layout
from sidgr.training.loss import token_losses


def layout_for(batch, loss_mode: str, arch: ModelArch, device, catalog=None, targets: int = 0) -> TokenBatch:
    """A loader `Batch` -> the decoder's TokenBatch on `device` (`catalog`, an ItemCatalog, gives the item ids
    that ITEM tokens with id or prefix tables need; `targets`: see `training_layout`)."""
    pids = catalog.sids_to_pids(batch.sids, batch.lengths) if arch.needs_pids else None
    tb = training_layout(batch.sids, batch.lengths, loss_mode, arch.level_offsets, arch.history, pids, targets)
    if tb.tokens.shape[1] == 0:  # a DP rank whose rows are all padding still joins the collectives
        B = tb.tokens.shape[0]
        z = torch.zeros(B, 1, dtype=torch.int64)
        tb = TokenBatch(z, z.bool(), z.bool(), z, z - 1, z + IGNORE, z + IGNORE,
                        torch.zeros(B, 1, 1, 1, dtype=torch.bool), z.bool(),
                        torch.zeros(B, 1, arch.num_levels, dtype=torch.int64), z, z.bool(), z + IGNORE)
    return tb.to(device)


@torch.no_grad()
def validation_loss(ddp, model, loader, arch: ModelArch, device, max_batches: int, catalog=None) -> dict:
    """Validation token-mean cross-entropy of the target item ('last' mode: history + BOS + target codes).
    Retrieval metrics of SID-GR checkpoints come from the engine (export -> retrieve -> evaluate)."""
    from sidgr.training.dist import all_reduce_dp

    ddp.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        tb = layout_for(batch, "last", arch, device, catalog)
        tl = token_losses(model, ddp(*tb.model_inputs()), tb)
        losses = tl.losses[tl.levels >= 0]  # the code tokens' CE (not the dense item-level term)
        total += torch.stack([losses.double().sum(), torch.tensor(float(losses.numel()), device=device,
                                                                  dtype=torch.float64)])
    ddp.train()
    all_reduce_dp(total)
    return {"valid_loss": float(total[0] / total[1].clamp_min(1))}


class SIDGRTask:
    """The SID-GR family (see `training/task.py` for the protocol)."""

    def __init__(self, mapping):
        self.mapping = mapping
        self.catalog = None  # ItemCatalog, when ITEM tokens need item ids
        self.arch_: ModelArch | None = None
        self.valid_loader = None

    def arch(self, arch: ModelArch) -> ModelArch:
        self.arch_ = arch
        if arch.needs_pids:
            from sidgr.training.item_model import ItemCatalog
            self.catalog = ItemCatalog.from_mapping(self.mapping)
        return arch

    def build(self, model_cfg, arch: ModelArch, tp: int, device):
        from sidgr.training.model import build_model
        nodes = self.catalog.prefix_nodes if "prefixn" in arch.item_parts else None
        codes = self.catalog.codes if arch.dense_weight > 0 else None
        return build_model(model_cfg, arch, tp, device, nodes, codes)

    def batch(self, batch, loss_mode: str, device, targets: int = 0) -> TokenBatch:
        """A training batch, its rows packed (`token_layout.packed`: the same losses, less padding computed)."""
        return packed(layout_for(batch, loss_mode, self.arch_, "cpu", self.catalog, targets)).to(device)

    token_losses = staticmethod(token_losses)

    def setup_validation(self, data_cfg, mapping, dist_info) -> None:
        from sidgr.training.loader import SequenceLoader

        if data_cfg.valid_path:
            self.valid_loader = SequenceLoader(data_cfg.valid_path, mapping, data_cfg, dist_info.dp_rank,
                                               dist_info.dp_size, training=False, append_target=True)

    def score_checkpoint(self, ckpt, run_dir, data_cfg, trainer_cfg) -> dict:
        """Rank 0: the checkpoint's valid Recall@10 / NDCG@10 through the engine (training/engine_scoring.py)."""
        from pathlib import Path

        from sidgr.training.engine_scoring import score_checkpoint
        return score_checkpoint(Path(ckpt), data_cfg.valid_path, self.mapping.num_items,
                                Path(run_dir) / "selection", trainer_cfg.select_beam_width)

    def validate(self, ddp, model, device, max_batches: int) -> dict:
        if self.valid_loader is None:
            return {}
        return validation_loss(ddp, model, self.valid_loader, self.arch_, device, max_batches, self.catalog)
