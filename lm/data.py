"""The LM's inputs, read once: the catalog (names, genres, SIDs), train sequences and the held-out targets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sidgr.data.readers import open_parquet, read_sequences
from sidgr.data.sequences import SequenceBatch
from sidgr.errors import input_error
from sidgr.sid.mapping import SIDMapping

from .tasks import Catalog, item_names


@dataclass
class LMData:
    catalog: Catalog
    mapping: SIDMapping
    train: list[np.ndarray]  # train.parquet item lists (chronological), one per user
    data_dir: Path

    def split(self, name: str, max_users: int = 0) -> SequenceBatch:
        """valid or test: history + target per user (the first `max_users` when > 0)."""
        return first_users(read_sequences(self.data_dir / f"{name}.parquet", with_timestamps=False,
                                          num_items=self.catalog.num_items), max_users)


def first_users(batch: SequenceBatch, n: int) -> SequenceBatch:
    """The first n user rows (all when n is 0 or not smaller)."""
    if not n or n >= len(batch.user_ids):
        return batch
    keep = np.arange(n)
    targets = batch.targets.take(keep) if batch.targets is not None else None
    return SequenceBatch(batch.user_ids[keep], batch.items.take(keep), None, targets)


def load_lm_data(data_dir, sids) -> LMData:
    data_dir = Path(data_dir)
    items_path = data_dir / "items.parquet"
    table = open_parquet(items_path, ["item_id", "text"]).read()
    ids = table.column("item_id").to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise input_error(items_path, "item_id", f"{len(ids)} rows", "item ids must be exactly 0..N-1 in order")
    mapping = SIDMapping.load(sids)
    if mapping.num_items != len(ids):
        raise input_error(sids, "num_items", mapping.num_items, f"the catalog {items_path} has {len(ids)} items")
    genres = (table.column("genres").to_pylist() if "genres" in table.column_names else [[] for _ in ids])
    catalog = Catalog(item_names(table), [list(g or []) for g in genres], mapping.codes.t().contiguous())
    train = read_sequences(data_dir / "train.parquet", with_timestamps=False, with_target=False,
                           num_items=len(ids))
    return LMData(catalog, mapping, [train.items.row(u) for u in range(train.items.num_rows)], data_dir)
