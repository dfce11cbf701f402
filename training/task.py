"""The trainer's model-family seam: what the train loop asks of SID-GR and of the item-level models.

A task turns the loader's SID batches into its model's inputs and labels, builds the model, gives per-token
losses, and validates. The loop (`training/train.py`) knows nothing else about the family it trains.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from sidgr.arch import ModelArch
from sidgr.errors import InputError, input_error
from sidgr.sid.mapping import SIDMapping


class Task(Protocol):
    def arch(self, arch: ModelArch) -> ModelArch:
        """The architecture record to build and checkpoint (the family may add what identifies it)."""

    def build(self, model_cfg, arch: ModelArch, tp: int, device: torch.device) -> torch.nn.Module:
        """The Megatron model of this family."""

    def batch(self, batch, loss_mode: str, device: torch.device, targets: int = 0):
        """A loader `Batch` -> this family's batch (with `loss_mask`, `valid` and `model_inputs()`); `targets` > 0:
        only each row's last `targets` items are predicted (DataConfig.targets_per_window)."""

    def token_losses(self, model, hidden: torch.Tensor, batch):
        """Final hidden states -> `TokenLosses` (fp32 per-label cross-entropy, vocab-parallel)."""

    def setup_validation(self, data_cfg, mapping: SIDMapping, dist_info) -> None:
        """Open the validation data for this DP rank (nothing when DataConfig.valid_path is empty)."""

    def validate(self, ddp, model, device: torch.device, max_batches: int) -> dict:
        """Validation metrics, identical on every rank ({} without validation data)."""

    def score_checkpoint(self, ckpt: Path, run_dir: Path, data_cfg, trainer_cfg) -> dict:
        """Rank 0 only: validation metrics of a saved checkpoint that `validate` does not give (may be {})."""


def make_task(model_cfg, mapping: SIDMapping) -> Task:
    if model_cfg.kind == "item":
        from sidgr.training.item_task import ItemTask
        return ItemTask(mapping, model_cfg.item_input, model_cfg.item_head, model_cfg.item_temperature)
    from sidgr.training.sidgr_task import SIDGRTask
    return SIDGRTask(mapping)


def config_codebook_sizes(model_cfg, mapping: SIDMapping) -> tuple[int, ...]:
    """The mapping's codebook sizes, after checking them against ModelConfig.codebook_sizes (when set)."""
    sizes = tuple(int(c) for c in mapping.codebook_sizes)
    want = tuple(int(c) for c in model_cfg.codebook_sizes)
    if want and len(want) != len(sizes):
        raise input_error(mapping.source, "levels", len(sizes),
                          f"the config expects {len(want)} levels (ModelConfig.codebook_sizes={list(want)})")
    if want and want != sizes:
        raise input_error(mapping.source, "codebook_sizes", list(sizes),
                          f"disagree with ModelConfig.codebook_sizes={list(want)}")
    return sizes


def preflight(cfgs: dict) -> tuple[SIDMapping, Task, ModelArch]:
    """Everything that can be checked without Megatron or processes: the mapping, the task, the architecture."""
    from sidgr.training.config import model_arch

    mcfg, dcfg = cfgs["model"], cfgs["data"]
    try:
        dcfg.check(1)
    except ValueError as e:
        raise InputError(f"sidgr train: {e}") from None  # the message names the field and its value
    if dcfg.targets_per_window and mcfg.loss_mode != "all":
        raise input_error("sidgr train", "DataConfig.targets_per_window", dcfg.targets_per_window,
                          f"needs ModelConfig.loss_mode='all' (it is {mcfg.loss_mode!r})")
    for field_name in ("train_path", "mapping_path"):
        path = getattr(dcfg, field_name)
        if not Path(path).exists():
            raise input_error(path, f"DataConfig.{field_name}", path, "file does not exist")
    mapping = SIDMapping.load(dcfg.mapping_path)
    task = make_task(mcfg, mapping)
    arch = task.arch(model_arch(mcfg, config_codebook_sizes(mcfg, mapping), dcfg.max_items, mapping))
    return mapping, task, arch
