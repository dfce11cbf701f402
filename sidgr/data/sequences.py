"""`SequenceBatch` (users' sequences, CSR), the leave-one-out split, and the dataset writer.

Sequences are handled column-wise as a `SequenceBatch` (a `Ragged` of item ids per user) so
splitting and writing stay vectorized for millions of users. The split contract (README, "Contracts between the parts"):
  train  item_ids = all but the last two
  valid  item_ids = all but the last two (history), target = second last
  test   item_ids = all but the last (history),     target = last
Users with fewer than `MIN_SPLIT_LENGTH` items cannot provide a non-empty history for valid, so they are kept
in sequences.parquet but left out of the three split files (the count is reported).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sidgr.data.ragged import Ragged, offsets_from_lengths
from sidgr.data.schemas import SEQUENCES_SCHEMA, SPLIT_NAMES, SPLIT_SCHEMAS
from sidgr.io import atomic_path

MIN_SPLIT_LENGTH = 3


@dataclass
class SequenceBatch:
    """Users' sequences: user row u's items are `items.row(u)` (CSR), optionally with timestamps and targets."""

    user_ids: np.ndarray  # [U] int64
    items: Ragged  # item ids per user, time order
    timestamps: np.ndarray | None = None  # [T] int64, aligned with items.values
    targets: Ragged | None = None  # held-out item(s) per user (valid/test only)

    @property
    def offsets(self) -> np.ndarray:
        return self.items.offsets

    @property
    def item_ids(self) -> np.ndarray:
        return self.items.values

    @property
    def lengths(self) -> np.ndarray:
        return self.items.lengths

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    def sequence(self, row: int) -> np.ndarray:
        return self.items.row(row)

    def take(self, rows: np.ndarray) -> "SequenceBatch":
        """The users at `rows` (timestamps dropped)."""
        targets = self.targets.take(rows) if self.targets is not None else None
        return SequenceBatch(self.user_ids[rows], self.items.take(rows), None, targets)

    def single_targets(self, source="targets") -> np.ndarray:
        """[U] the one target of each user (leave-one-out files)."""
        if self.targets is None or not bool((self.targets.lengths == 1).all()):
            raise ValueError(f"{source}: expected exactly one target per user")
        return self.targets.values

    def to_table(self, schema: pa.Schema = SEQUENCES_SCHEMA) -> pa.Table:
        # list<int64> has int32 offsets: write huge tables in several batches (SplitWriter streams them)
        ts = self.timestamps if self.timestamps is not None else np.zeros_like(self.item_ids)
        columns = {"user_id": pa.array(self.user_ids, pa.int64()), "item_ids": self.items.to_arrow(pa.int64()),
                   "timestamps": Ragged(ts, self.offsets).to_arrow(pa.int64())}
        if "target" in schema.names:
            columns["target"] = pa.array(self.single_targets(), pa.int64())
        return pa.table([columns[n] for n in schema.names], schema=schema)

    @staticmethod
    def concat(batches: list["SequenceBatch"]) -> "SequenceBatch":
        if not batches:
            return SequenceBatch(np.zeros(0, np.int64), Ragged.concat([]))
        cat = lambda f: None if getattr(batches[0], f) is None else np.concatenate([getattr(b, f) for b in batches])
        targets = None if batches[0].targets is None else Ragged.concat([b.targets for b in batches])
        return SequenceBatch(cat("user_ids"), Ragged.concat([b.items for b in batches]), cat("timestamps"), targets)


@dataclass
class PreparedDataset:
    """A dataset read from its source, before writing: items, users, and one sequence row per user."""

    items: pa.Table  # ITEMS_SCHEMA
    users: pa.Table  # USERS_SCHEMA
    sequences: SequenceBatch  # one row per user, user_id == row
    items_without_text: int = 0


def split_leave_one_out(batch: SequenceBatch) -> dict[str, SequenceBatch]:
    """Vectorized leave-one-out split of a batch; users shorter than MIN_SPLIT_LENGTH are dropped."""
    batch = _keep_users(batch, batch.lengths >= MIN_SPLIT_LENGTH)
    lengths = batch.lengths
    pos_from_end = np.repeat(batch.offsets[1:], lengths) - np.arange(batch.item_ids.shape[0])  # 1 = last item
    last = batch.offsets[1:] - 1
    history2 = _select(batch, pos_from_end > 2, lengths - 2)
    history1 = _select(batch, pos_from_end > 1, lengths - 1)
    valid = dataclasses.replace(history2, targets=Ragged.singletons(batch.item_ids[last - 1]))
    test = dataclasses.replace(history1, targets=Ragged.singletons(batch.item_ids[last]))
    return {"train": history2, "valid": valid, "test": test}


def _select(batch: SequenceBatch, keep_pos: np.ndarray, new_lengths: np.ndarray) -> SequenceBatch:
    ts = batch.timestamps[keep_pos] if batch.timestamps is not None else None
    return SequenceBatch(batch.user_ids, Ragged(batch.item_ids[keep_pos], offsets_from_lengths(new_lengths)), ts)


def _keep_users(batch: SequenceBatch, keep: np.ndarray) -> SequenceBatch:
    if bool(keep.all()):
        return batch
    kept = _select(batch, np.repeat(keep, batch.lengths), batch.lengths[keep])
    return dataclasses.replace(kept, user_ids=batch.user_ids[keep])


def split_stats(sizes: dict[str, int], batch: SequenceBatch, splits: dict[str, SequenceBatch]) -> None:
    """Accumulate counts of one batch into `sizes` (users, interactions, split rows and lengths)."""
    for key, value in (("users", batch.num_users), ("interactions", int(batch.item_ids.shape[0])),
                       ("users_too_short_for_split", batch.num_users - splits["test"].num_users),
                       ("train_rows", splits["train"].num_users),
                       ("train_interactions", int(splits["train"].item_ids.shape[0])),
                       ("valid_rows", splits["valid"].num_users), ("test_rows", splits["test"].num_users)):
        sizes[key] = sizes.get(key, 0) + value


@contextlib.contextmanager
def atomic_outputs(out_dir: str | os.PathLike, names: Iterable[str]) -> Iterator[dict[str, Path]]:
    """Temporary paths for several files of `out_dir`; all renamed into place on success, all deleted on error."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(atomic_path(Path(out_dir) / name)) for name in names}


class SplitWriter:
    """Streams SequenceBatches into sequences/train/valid/test parquet files under an open `atomic_outputs`."""

    FILES = ("sequences.parquet",) + tuple(f"{n}.parquet" for n in SPLIT_NAMES)

    def __init__(self, paths: dict[str, Path]):
        self._writers = {"sequences": pq.ParquetWriter(paths["sequences.parquet"], SEQUENCES_SCHEMA)}
        for name in SPLIT_NAMES:
            self._writers[name] = pq.ParquetWriter(paths[f"{name}.parquet"], SPLIT_SCHEMAS[name])
        self.sizes: dict[str, int] = {}

    def __enter__(self) -> "SplitWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def write(self, batch: SequenceBatch) -> None:
        splits = split_leave_one_out(batch)
        self._writers["sequences"].write_table(batch.to_table(SEQUENCES_SCHEMA))
        for name in SPLIT_NAMES:
            self._writers[name].write_table(splits[name].to_table(SPLIT_SCHEMAS[name]))
        split_stats(self.sizes, batch, splits)

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()


def write_dataset(out_dir: str | os.PathLike, items: pa.Table, users: pa.Table,
                  batches: Iterable[SequenceBatch], stats: dict | None = None,
                  extra: dict[str, Callable[[Path], None]] | None = None) -> dict:
    """Write items/users/sequences/train/valid/test parquet + stats.json (+ `extra` files written by callbacks)
    into `out_dir`, all or nothing. Returns the stats (counts of users, items, interactions and splits)."""
    extra = extra or {}
    names = ["items.parquet", "users.parquet", *SplitWriter.FILES, "stats.json", *extra]
    with atomic_outputs(out_dir, names) as paths:
        for name, write in extra.items():
            write(paths[name])
        pq.write_table(items, paths["items.parquet"])
        pq.write_table(users, paths["users.parquet"])
        with SplitWriter(paths) as writer:
            for batch in batches:
                writer.write(batch)
        stats = dict(stats or {}, items=items.num_rows, **writer.sizes)
        paths["stats.json"].write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats


def write_table_atomic(path: str | os.PathLike, table: pa.Table) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
