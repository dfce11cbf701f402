"""Readers and writers of the data contract's files, with the null / type / range checks written once.

Every reader raises a one-line `InputError` naming the file, the field and the value. Sequences (sequences,
train, valid, test parquet) come back as `SequenceBatch`es, streamed one record batch at a time; candidates
(retrieval and scoring output) as `Candidates`; an items parquet gives the catalog size.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sidgr.data.ragged import Ragged
from sidgr.data.schemas import CANDIDATES_SCHEMA
from sidgr.data.sequences import SequenceBatch
from sidgr.errors import input_error
from sidgr.io import atomic_path


def open_parquet(path, required: Sequence[str] = ()) -> pq.ParquetFile:
    """Open a parquet file, or fail in one line: missing, not parquet, or lacking a required column."""
    path = Path(path)
    if not path.is_file():
        raise input_error(path, "path", str(path), "file does not exist" if not path.exists() else "not a file")
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise input_error(path, "path", str(path), f"cannot open as parquet ({exc})") from None
    names = pf.schema_arrow.names
    missing = [c for c in required if c not in names]
    if missing:
        raise input_error(path, "columns", names, f"missing required column(s) {missing}")
    return pf


def user_ids_from_arrow(column, source) -> np.ndarray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_integer(column.type):
        raise input_error(source, "user_id", str(column.type), "expected integer user ids")
    if column.null_count:
        raise input_error(source, "user_id", None, "null user_id")
    return column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def check_unique_users(user_ids: np.ndarray, source) -> None:
    uniq, counts = np.unique(user_ids, return_counts=True)
    if len(uniq) != len(user_ids):
        raise input_error(source, "user_id", int(uniq[counts > 1][0]), "appears in more than one row")


def check_in_catalog(lists: Ragged, num_items: int, source, field: str, user_ids: np.ndarray) -> None:
    """Every entry must be an item id in 0..num_items-1."""
    bad = np.flatnonzero((lists.values < 0) | (lists.values >= num_items))
    if bad.size:
        i = int(bad[0])
        row = int(np.searchsorted(lists.offsets, i, side="right") - 1)
        raise input_error(source, f"user_id={int(user_ids[row])} {field}", int(lists.values[i]),
                          f"outside the catalog 0..{num_items - 1}")


def check_nonempty(lists: Ragged, source, field: str, user_ids: np.ndarray) -> None:
    empty = np.flatnonzero(lists.lengths == 0)
    if empty.size:
        raise input_error(source, f"user_id={int(user_ids[empty[0]])} {field}", [],
                          "empty history: nothing to condition on")


def _targets(column, source) -> Ragged:
    """`target` as one item id per user (leave-one-out) or a list of item ids per user (several targets)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_integer(column.type):
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise input_error(source, f"row {row} target", None, "null target")
        return Ragged.singletons(column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False))
    return Ragged.from_arrow(column, source, "target")


def sequence_batch(table: pa.Table | pa.RecordBatch, source, num_items: int | None = None,
                   require_history: bool = False) -> SequenceBatch:
    """One record batch of a sequences parquet -> a validated SequenceBatch (timestamps/target when present)."""
    names = table.schema.names
    users = user_ids_from_arrow(table.column("user_id"), source)
    items = Ragged.from_arrow(table.column("item_ids"), source, "item_ids")
    times = Ragged.from_arrow(table.column("timestamps"), source, "timestamps").values \
        if "timestamps" in names else None
    targets = _targets(table.column("target"), source) if "target" in names else None
    if num_items is not None:
        check_in_catalog(items, num_items, source, "item_ids", users)
        if targets is not None:
            check_in_catalog(targets, num_items, source, "target", users)
    if require_history:
        check_nonempty(items, source, "item_ids", users)
    return SequenceBatch(users, items, times, targets)


def iter_sequence_batches(path, batch_size: int = 65536, num_items: int | None = None,
                          require_history: bool = False, with_timestamps: bool = False,
                          require_target: bool = False, with_target: bool = False) -> Iterator[SequenceBatch]:
    """Stream a sequences parquet (sequences/train/valid/test) one record batch at a time, validated;
    memory is bounded by `batch_size` users whatever the file size. `target` is read (and checked) only when
    required or asked for (with_target: when present)."""
    required = ["user_id", "item_ids"] + (["target"] if require_target else [])
    pf = open_parquet(path, required)
    names = pf.schema_arrow.names
    optional = (["target"] if with_target and not require_target else []) + (["timestamps"] if with_timestamps else [])
    columns = required + [c for c in optional if c in names]
    for rb in pf.iter_batches(batch_size=batch_size, columns=columns, use_threads=False):
        yield sequence_batch(rb, path, num_items, require_history)


def read_sequences(path, with_timestamps: bool = True, with_target: bool = True, **checks) -> SequenceBatch:
    """A whole sequences parquet as one SequenceBatch (validation sets, small files, tests)."""
    return SequenceBatch.concat(list(iter_sequence_batches(path, 1 << 20, with_timestamps=with_timestamps,
                                                           with_target=with_target, **checks)))


def read_targets(path, num_items: int | None = None) -> tuple[SequenceBatch, bool]:
    """Held-out targets with their users' histories (valid/test parquet); user ids must be unique.
    A file of `user_id, target` alone is accepted: the second value says whether histories were present."""
    has_history = "item_ids" in open_parquet(path, ["user_id", "target"]).schema_arrow.names
    if has_history:
        batch = read_sequences(path, with_timestamps=False, num_items=num_items, require_target=True)
    else:
        table = pq.read_table(path, columns=["user_id", "target"])
        empty = pa.array([[]] * table.num_rows, pa.list_(pa.int64()))
        batch = sequence_batch(table.append_column("item_ids", empty), path, num_items)
    check_unique_users(batch.user_ids, path)
    return batch, has_history


# ---- candidates ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidates:
    """Ranked lists per user, best first (the retrieval / scoring output)."""

    user_ids: np.ndarray  # [U]
    items: Ragged
    scores: Ragged | None = None  # None when read back for evaluation (scores are not needed there)

    def to_table(self) -> pa.Table:
        return pa.table([pa.array(self.user_ids, pa.int64()), self.items.to_arrow(pa.int64()),
                         self.scores.to_arrow(pa.float32())], schema=CANDIDATES_SCHEMA)


def read_candidates(path) -> Candidates:
    pf = open_parquet(path, ["user_id", "item_ids"])
    table = pf.read(columns=["user_id", "item_ids"])
    users = user_ids_from_arrow(table.column("user_id"), path)
    check_unique_users(users, path)
    return Candidates(users, Ragged.from_arrow(table.column("item_ids"), path, "item_ids"))


class CandidatesWriter:
    """Streams Candidates into one parquet file, written atomically (nothing at `path` until `close`)."""

    def __init__(self, path: str | os.PathLike):
        self._atomic = atomic_path(path)
        self._writer = pq.ParquetWriter(self._atomic.__enter__(), CANDIDATES_SCHEMA)

    def write(self, candidates: Candidates) -> None:
        self._writer.write_table(candidates.to_table())

    def __enter__(self) -> "CandidatesWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()
        self._atomic.__exit__(*exc)


def write_candidates(path, candidates: Candidates) -> None:
    with CandidatesWriter(path) as writer:
        writer.write(candidates)


# ---- items -----------------------------------------------------------------------------------------------------
def read_num_items(items: str | int) -> int:
    """`items` is the catalog size N, or an items parquet whose item_id column is exactly 0..N-1."""
    if isinstance(items, int) or str(items).isdigit():
        n = int(items)
        if n <= 0:
            raise input_error("--items", "N", n, "catalog size must be positive")
        return n
    ids = np.sort(open_parquet(items, ["item_id"]).read(columns=["item_id"]).column("item_id").to_numpy())
    if len(ids) == 0 or not np.array_equal(ids, np.arange(len(ids))):
        raise input_error(items, "item_id", f"{len(ids)} rows", "item ids must be exactly 0..N-1")
    return len(ids)
