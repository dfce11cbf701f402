"""Parquet schemas of the data contract, the leave-one-out split, and streaming readers/writers.

Sequences are handled column-wise as a `SequenceBatch` (CSR: per-user offsets into one flat item array) so
splitting and writing stay vectorized for millions of users. The split contract (ARCHITECTURE.md):
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

from sidgr.errors import input_error
from sidgr.io import atomic_path

MIN_SPLIT_LENGTH = 3
SPLIT_NAMES = ("train", "valid", "test")

ITEMS_SCHEMA = pa.schema([
    ("item_id", pa.int64()),
    ("raw_id", pa.string()),
    ("title", pa.string()),
    ("year", pa.int64()),
    ("genres", pa.list_(pa.string())),
    ("text", pa.string()),
])
USERS_SCHEMA = pa.schema([("user_id", pa.int64()), ("raw_id", pa.string())])
SEQUENCES_SCHEMA = pa.schema([
    ("user_id", pa.int64()),
    ("item_ids", pa.list_(pa.int64())),
    ("timestamps", pa.list_(pa.int64())),
])
TARGET_SCHEMA = SEQUENCES_SCHEMA.append(pa.field("target", pa.int64()))
SPLIT_SCHEMAS = {"train": SEQUENCES_SCHEMA, "valid": TARGET_SCHEMA, "test": TARGET_SCHEMA}


@dataclass
class SequenceBatch:
    """Users' sequences in CSR form: user u's items are item_ids[offsets[u]:offsets[u+1]]."""

    user_ids: np.ndarray  # [U] int64
    offsets: np.ndarray  # [U+1] int64, offsets[0] == 0
    item_ids: np.ndarray  # [T] int64
    timestamps: np.ndarray | None = None  # [T] int64
    targets: np.ndarray | None = None  # [U] int64 (valid/test only)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def num_users(self) -> int:
        return int(self.user_ids.shape[0])

    def sequence(self, row: int) -> np.ndarray:
        return self.item_ids[self.offsets[row]:self.offsets[row + 1]]

    def to_table(self, schema: pa.Schema = SEQUENCES_SCHEMA) -> pa.Table:
        # list<int64> has int32 offsets: write huge tables in several batches (SplitWriter streams them)
        assert self.offsets[-1] < 2**31, "a SequenceBatch holds at most 2**31-1 items; write it in parts"
        offsets = pa.array(self.offsets.astype(np.int32))
        ts = self.timestamps if self.timestamps is not None else np.zeros_like(self.item_ids)
        columns = {"user_id": pa.array(self.user_ids, pa.int64()),
                   "item_ids": pa.ListArray.from_arrays(offsets, pa.array(self.item_ids, pa.int64())),
                   "timestamps": pa.ListArray.from_arrays(offsets, pa.array(ts, pa.int64()))}
        if "target" in schema.names:
            columns["target"] = pa.array(self.targets, pa.int64())
        return pa.table([columns[n] for n in schema.names], schema=schema)


def split_leave_one_out(batch: SequenceBatch) -> dict[str, SequenceBatch]:
    """Vectorized leave-one-out split of a batch; users shorter than MIN_SPLIT_LENGTH are dropped."""
    batch = _keep_users(batch, batch.lengths >= MIN_SPLIT_LENGTH)
    lengths = batch.lengths
    pos_from_end = np.repeat(batch.offsets[1:], lengths) - np.arange(batch.item_ids.shape[0])  # 1 = last item
    last = batch.offsets[1:] - 1
    history2 = _select(batch, pos_from_end > 2, lengths - 2)
    history1 = _select(batch, pos_from_end > 1, lengths - 1)
    valid = SequenceBatch(history2.user_ids, history2.offsets, history2.item_ids, history2.timestamps,
                          targets=batch.item_ids[last - 1])
    test = SequenceBatch(history1.user_ids, history1.offsets, history1.item_ids, history1.timestamps,
                         targets=batch.item_ids[last])
    return {"train": history2, "valid": valid, "test": test}


def _select(batch: SequenceBatch, keep_pos: np.ndarray, new_lengths: np.ndarray) -> SequenceBatch:
    offsets = np.zeros(new_lengths.shape[0] + 1, dtype=np.int64)
    np.cumsum(new_lengths, out=offsets[1:])
    ts = batch.timestamps[keep_pos] if batch.timestamps is not None else None
    return SequenceBatch(batch.user_ids, offsets, batch.item_ids[keep_pos], ts)


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


# ---- reading -----------------------------------------------------------------------------------
def iter_sequence_batches(path: str | os.PathLike, batch_size: int = 65536,
                          with_timestamps: bool = False) -> Iterator[SequenceBatch]:
    """Stream a sequences parquet (any of sequences/train/valid/test) one record batch at a time.

    Yields SequenceBatch with user_ids, offsets, item_ids (and timestamps/targets when asked/present);
    memory is bounded by `batch_size` users, whatever the file size."""
    path = Path(path)
    if not path.exists():
        raise input_error(path, "path", str(path), "sequences parquet does not exist")
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    for col in ("user_id", "item_ids"):
        if col not in names:
            raise input_error(path, "column", col, f"missing from sequences parquet (columns: {names})")
    columns = ["user_id", "item_ids"] + (["timestamps"] if with_timestamps and "timestamps" in names else [])
    columns += ["target"] if "target" in names else []
    for rb in pf.iter_batches(batch_size=batch_size, columns=columns):
        offsets, items = _list_to_csr(path, "item_ids", rb.column("item_ids"))
        ts = _list_to_csr(path, "timestamps", rb.column("timestamps"))[1] if "timestamps" in columns else None
        targets = rb.column("target").to_numpy(zero_copy_only=False) if "target" in columns else None
        user_ids = rb.column("user_id").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        yield SequenceBatch(user_ids, offsets, items, ts, targets)


def read_sequences(path: str | os.PathLike, with_timestamps: bool = True) -> SequenceBatch:
    """A whole sequences parquet as one SequenceBatch (small files, tests)."""
    batches = list(iter_sequence_batches(path, batch_size=1 << 20, with_timestamps=with_timestamps))
    if not batches:
        return SequenceBatch(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64))
    lengths = np.concatenate([b.lengths for b in batches])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    cat = lambda f: None if getattr(batches[0], f) is None else np.concatenate([getattr(b, f) for b in batches])
    return SequenceBatch(cat("user_ids"), offsets, cat("item_ids"), cat("timestamps"), cat("targets"))


def _list_to_csr(path: Path, name: str, column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise input_error(path, f"row {row} {name}", None, "null list")
    offsets = np.asarray(column.offsets).astype(np.int64)
    values = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    if values.null_count:
        raise input_error(path, name, None, "list contains null values")
    return offsets - offsets[0], values.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
