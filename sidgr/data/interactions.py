"""Your own data: an interactions file (CSV, TSV, parquet or a RecBole atomic `.inter` file) and optionally an items
file with text -> the same items/users/sequences/train/valid/test parquet as the benchmark preparers.

    sidgr prepare interactions --source events.csv --user-col user --item-col sku --time-col ts \\
        --items catalog.parquet --text-cols title,brand,category --out artifacts/mydata

Format by suffix: `.parquet`; `.csv` (comma); `.tsv`, `.inter`, `.item` (tab; RecBole's `name:type` headers are
read as `name`); `.xz`-compressed text files too. Ids are read as strings, kept as `raw_id`, and numbered
0..N-1 in order of first appearance in the interactions file (users and items alike). A user's history is
ordered by the time column (integers, floats — floored — or ISO-8601 dates/times), ties in file order; with
`--time-col none` the file order is the time order. Item text joins the non-empty `--text-cols` values with ". ";
the `title` column takes the first of them. Items of the items file that nobody interacted with are not in the
catalog (counted in stats.json); interacted items missing from it get an empty text (counted too).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sidgr.data.ml100k import build_sequences, tied_interactions
from sidgr.data.schemas import ITEMS_SCHEMA, USERS_SCHEMA
from sidgr.data.sequences import PreparedDataset, write_dataset
from sidgr.data.source_files import read_bytes
from sidgr.errors import input_error

TAB_SUFFIXES = (".tsv", ".inter", ".item")


@dataclass(frozen=True)
class Columns:
    user: str = "user_id"
    item: str = "item_id"
    time: str | None = "timestamp"  # None: the file order is the time order
    text: tuple[str, ...] = field(default_factory=tuple)  # columns of the items file joined into the item text


def read_table(path: Path) -> pa.Table:
    """A whole interactions or items file as an Arrow table (every failure one line naming the file)."""
    if not path.is_file():
        raise input_error(path, "file", str(path), "does not exist")
    suffixes = [s for s in path.suffixes if s != ".xz"]
    kind = suffixes[-1] if suffixes else ""
    try:
        if kind == ".parquet":
            return pq.read_table(path)
        if kind not in (".csv", *TAB_SUFFIXES):
            raise input_error(path, "format", kind or path.name, "expected .csv, .tsv, .inter, .item or .parquet")
        options = pacsv.ParseOptions(delimiter="\t" if kind in TAB_SUFFIXES else ",")
        table = pacsv.read_csv(pa.BufferReader(read_bytes(path)), parse_options=options)
    except (pa.ArrowInvalid, OSError) as err:
        raise input_error(path, "content", path.name, f"cannot be read as {kind or 'a table'} "
                                                     f"({str(err).splitlines()[0][:120]})") from None
    return table.rename_columns([name.split(":")[0] for name in table.column_names])  # RecBole name:type


def column(table: pa.Table, name: str, path: Path, role: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise input_error(path, role, name, f"no such column (columns: {', '.join(table.column_names)})")
    col = table.column(name)
    if col.null_count:
        row = int(pc.index(pc.is_null(col), True).as_py())
        raise input_error(path, f"row {row + 1} {name}", None, "missing value")
    return col


def as_strings(col: pa.ChunkedArray) -> pa.ChunkedArray:
    return col if pa.types.is_string(col.type) else pc.cast(col, pa.string())


def as_time(col: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    """int64 times: integers as they are, floats floored, dates/times and ISO-8601 strings as epoch seconds;
    a string column of numbers is read as numbers."""
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        for numeric in (pa.int64(), pa.float64()):
            try:
                return as_time(pc.cast(col, numeric), path, name)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
    if pa.types.is_integer(col.type):
        return col.to_numpy().astype(np.int64)
    if pa.types.is_floating(col.type):
        return np.floor(col.to_numpy()).astype(np.int64)
    try:
        return pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64()).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = next((v for v in col.to_pylist() if not _is_time(v)), col[0].as_py())
        raise input_error(path, name, bad, "not a time (expected a number or an ISO-8601 date/time)") from None


def _is_time(value) -> bool:
    for target in (pa.float64(), pa.timestamp("s")):
        try:
            pc.cast(pa.array([value]), target)
            return True
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
    return False


def first_appearance_codes(values: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """(code of every row, the distinct values in order of first appearance)."""
    encoded = pc.dictionary_encode(values.combine_chunks())
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def item_texts(items_path: Path | None, cols: Columns, raw_ids: list[str]) -> tuple[list, list[str], dict]:
    """(title, text) per catalog item from the items file, and counts for stats.json."""
    if items_path is None:
        return [None] * len(raw_ids), [""] * len(raw_ids), {"items_without_text": len(raw_ids)}
    table = read_table(items_path)
    ids = as_strings(column(table, cols.item, items_path, "--item-col")).to_pylist()
    counts = Counter(ids)
    if len(counts) != len(ids):
        raise input_error(items_path, cols.item, next(i for i, c in counts.items() if c > 1), "item listed twice")
    for name in cols.text:
        if name not in table.column_names:
            raise input_error(items_path, "--text-cols", name,
                              f"no such column (columns: {', '.join(table.column_names)})")
    parts = [table.column(name).to_pylist() for name in cols.text]
    text_of = {}
    for row, item in enumerate(ids):
        values = [str(p[row]).strip() for p in parts if p[row] is not None and str(p[row]).strip()]
        text_of[item] = (values[0] if values else None, ". ".join(values))
    titles = [text_of.get(i, (None, ""))[0] for i in raw_ids]
    texts = [text_of.get(i, (None, ""))[1] for i in raw_ids]
    in_catalog = set(raw_ids)
    return titles, texts, {"items_without_text": sum(t == "" for t in texts),
                           "items_file_items_without_interactions": sum(i not in in_catalog for i in ids)}


def load(source: str, cols: Columns, items: str | None = None,
         max_users: int | None = None) -> tuple[PreparedDataset, dict]:
    path = Path(source)
    table = read_table(path)
    if table.num_rows == 0:
        raise input_error(path, "rows", 0, "no interactions")
    users = as_strings(column(table, cols.user, path, "--user-col"))
    item_col = as_strings(column(table, cols.item, path, "--item-col"))
    times = (as_time(column(table, cols.time, path, "--time-col"), path, cols.time) if cols.time
             else np.arange(table.num_rows, dtype=np.int64))
    user_code, user_raw = first_appearance_codes(users)
    if max_users is not None:
        keep = user_code < max_users
        user_code, user_raw, times = user_code[keep], user_raw[:max_users], times[keep]
        item_col = item_col.filter(pa.array(keep))
    item_code, item_raw = first_appearance_codes(item_col)
    sequences = build_sequences(user_code, item_code, times, len(user_raw))
    titles, texts, text_stats = item_texts(Path(items) if items else None, cols, item_raw)
    n = len(item_raw)
    items_table = pa.table({"item_id": np.arange(n, dtype=np.int64), "raw_id": item_raw, "title": titles,
                            "year": pa.nulls(n, pa.int64()), "genres": [[] for _ in range(n)], "text": texts},
                           schema=ITEMS_SCHEMA)
    users_table = pa.table({"user_id": np.arange(len(user_raw), dtype=np.int64), "raw_id": user_raw},
                           schema=USERS_SCHEMA)
    data = PreparedDataset(items_table, users_table, sequences, text_stats["items_without_text"])
    return data, text_stats


def prepare(out_dir: str, source: str, cols: Columns = Columns(), items: str | None = None,
            max_users: int | None = None) -> dict:
    """Read the interactions (and item text) and write the dataset files into `out_dir` (all or nothing)."""
    data, text_stats = load(source, cols, items, max_users)
    stats = {"dataset": "interactions", "source": str(Path(source)), "items_source": items,
             "columns": {"user": cols.user, "item": cols.item, "time": cols.time, "text": list(cols.text)},
             **text_stats}
    if cols.time:
        stats["timestamp_ties"] = tied_interactions(data.sequences)
    if max_users is not None:
        stats["max_users"] = max_users
    return write_dataset(out_dir, data.items, data.users, [data.sequences], stats)
