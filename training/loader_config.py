"""Gin-bound configuration of the streaming SID loader (`training/loader.py`)."""
from __future__ import annotations

from dataclasses import dataclass

import gin

WINDOWS = ("recent", "strided", "random")


@gin.configurable
@dataclass
class DataConfig:
    train_path: str = ""  # sequences parquet (train.parquet)
    valid_path: str = ""  # valid.parquet (has `target`: appended to the history as the item to predict)
    mapping_path: str = ""  # SID mapping (SIDMapping.load)
    max_items: int = 50  # keep each user's most recent max_items items (history + target)
    # Training rows per user and epoch (validation always uses "recent"):
    #   "recent":  one row, the most recent max_items items (items before it are never a target);
    #   "strided": the history tiled into windows of max_items ending at the last item, stepping back by
    #              max_items - 1, so every item after the first is a target exactly once per epoch;
    #   "random":  one row per user, a window of up to max_items items ending at a random item (>= the 2nd),
    #              drawn from (seed, epoch, row).
    windows: str = "recent"
    # "strided" only: the last targets_per_window items of a row are its training targets and windows step back by
    # that many items, so every target still comes once per epoch but reads up to max_items - 1 items before it
    # (0: max_items - 1, every item after the first). With ITEM-token history a SID-GR row then costs
    # max_items + targets_per_window * num_levels tokens instead of max_items * (num_levels + 1).
    targets_per_window: int = 0
    min_items: int = 2  # users with fewer items are skipped and counted
    global_batch_size: int = 128  # users per optimizer step across all DP ranks
    shuffle: bool = True
    seed: int = 1234
    num_workers: int = 0  # 0 = batches built in the training process; n > 0 = n DataLoader worker processes
    record_batch_rows: int = 4096  # pyarrow record batch size when streaming
    shuffle_window_rows: int = 65536  # users shuffled together (bounded memory); see the loader's docstring

    def check(self, dp_size: int) -> None:
        """Reject settings the loader cannot honour (ValueError: these are configuration, not data, errors)."""
        positive = ("max_items", "min_items", "global_batch_size", "record_batch_rows", "shuffle_window_rows")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"DataConfig.{name}={getattr(self, name)} must be >= 1")
        if self.windows not in WINDOWS:
            raise ValueError(f"DataConfig.windows={self.windows!r}: expected one of {', '.join(WINDOWS)}")
        if self.windows == "strided" and self.max_items < 2:
            raise ValueError("DataConfig.windows='strided' needs max_items >= 2")
        if self.targets_per_window < 0 or (self.targets_per_window and (
                self.windows != "strided" or self.targets_per_window > self.max_items - 1)):
            raise ValueError(f"DataConfig.targets_per_window={self.targets_per_window} needs windows='strided' and "
                             f"1 <= targets_per_window <= max_items - 1 = {self.max_items - 1} (0: every item)")
        if self.num_workers < 0:
            raise ValueError(f"DataConfig.num_workers={self.num_workers} must be >= 0")
        if self.seed < 0:
            raise ValueError(f"DataConfig.seed={self.seed} must be >= 0")
        if dp_size < 1 or self.global_batch_size % dp_size:
            raise ValueError(f"DataConfig.global_batch_size={self.global_batch_size} is not divisible by the "
                             f"data-parallel size {dp_size}")

    @property
    def window_step(self) -> int:
        """How far "strided" windows step back: the items that are targets in each window."""
        return self.targets_per_window or self.max_items - 1
