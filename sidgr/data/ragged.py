"""`Ragged`: the one CSR type for per-user lists (histories, targets, candidates, scores).

Row u's entries are `values[offsets[u]:offsets[u + 1]]`; a million users with lists of different lengths never
need a padded matrix. Conversions to and from Arrow list columns live here too, with the null checks done once.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sidgr.errors import input_error


@dataclass(frozen=True)
class Ragged:
    """Per-row lists in CSR form: row u's entries are `values[offsets[u]:offsets[u + 1]]`."""

    values: np.ndarray  # [E]
    offsets: np.ndarray  # [U + 1] int64, offsets[0] == 0, non-decreasing

    @staticmethod
    def from_lists(lists, dtype=np.int64) -> "Ragged":
        lengths = np.fromiter((len(x) for x in lists), dtype=np.int64, count=len(lists))
        values = np.fromiter((v for x in lists for v in x), dtype=dtype, count=int(lengths.sum()))
        return Ragged(values, offsets_from_lengths(lengths))

    @staticmethod
    def singletons(values: np.ndarray) -> "Ragged":
        """One entry per row."""
        return Ragged(np.asarray(values), np.arange(len(values) + 1, dtype=np.int64))

    @staticmethod
    def from_arrow(column: pa.Array | pa.ChunkedArray, source, name: str, dtype=np.int64) -> "Ragged":
        """A list column -> Ragged; a null list or a null entry is an input error naming `source` and `name`."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
            raise input_error(source, name, str(column.type), "expected a list column")
        want = pa.types.is_integer if np.issubdtype(dtype, np.integer) else pa.types.is_floating
        if not want(column.type.value_type) and not pa.types.is_null(column.type.value_type):
            raise input_error(source, name, str(column.type),
                              f"expected a list of {'integer ids' if want is pa.types.is_integer else 'floats'}")
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise input_error(source, f"row {row} {name}", None, "null list")
        offsets = np.asarray(column.offsets).astype(np.int64)
        values = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        if values.null_count:
            i = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
            row = int(np.searchsorted(offsets - offsets[0], i, side="right") - 1)
            raise input_error(source, f"row {row} {name}", None, "null entry inside a list")
        # a writable copy: Arrow's zero-copy views are read-only, and torch.from_numpy warns on those
        return Ragged(values.to_numpy(zero_copy_only=False).astype(dtype, copy=True), offsets - offsets[0])

    def to_arrow(self, value_type: pa.DataType = pa.int64()) -> pa.ListArray:
        assert self.offsets[-1] < 2**31, "list<...> has int32 offsets: write huge tables in parts"
        return pa.ListArray.from_arrays(pa.array(self.offsets.astype(np.int32)), pa.array(self.values, value_type))

    @property
    def num_rows(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, u: int) -> np.ndarray:
        return self.values[self.offsets[u]:self.offsets[u + 1]]

    def row_ids(self) -> np.ndarray:
        return np.repeat(np.arange(self.num_rows, dtype=np.int64), self.lengths)

    def positions(self) -> np.ndarray:
        """0-based position of every entry inside its own row."""
        return np.arange(len(self.values), dtype=np.int64) - np.repeat(self.offsets[:-1], self.lengths)

    def take(self, rows: np.ndarray) -> "Ragged":
        """Rows in the order given; a row index of -1 yields an empty row."""
        rows = np.asarray(rows, dtype=np.int64)
        present = rows >= 0
        safe = np.where(present, rows, 0)
        lengths = np.where(present, self.offsets[safe + 1] - self.offsets[safe], 0) if len(self.offsets) > 1 \
            else np.zeros(len(rows), dtype=np.int64)
        offsets = offsets_from_lengths(lengths)
        starts = np.repeat(self.offsets[safe], lengths)
        within = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
        return Ragged(self.values[starts + within], offsets)

    def select(self, keep: np.ndarray) -> "Ragged":
        """Keep the entries where `keep` [E] is True (rows stay, possibly shorter)."""
        return Ragged(self.values[keep], offsets_from_lengths(np.bincount(self.row_ids()[keep],
                                                                            minlength=self.num_rows)))

    def recent(self, keep: int, pad: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """The last `keep` entries of every row, left-aligned and right-padded: ([U, keep], lengths [U])."""
        lens = np.minimum(self.lengths, keep)
        col = np.arange(keep)
        take = col[None, :] < lens[:, None]
        idx = (self.offsets[1:] - lens)[:, None] + col[None, :]
        out = np.full((self.num_rows, keep), pad, dtype=self.values.dtype)
        out[take] = self.values[idx[take]]
        return out, lens.astype(np.int64)

    @staticmethod
    def concat(parts: list["Ragged"]) -> "Ragged":
        if not parts:
            return Ragged(np.zeros(0, np.int64), np.zeros(1, np.int64))
        lengths = np.concatenate([p.lengths for p in parts])
        return Ragged(np.concatenate([p.values for p in parts]), offsets_from_lengths(lengths))


def offsets_from_lengths(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets
