"""Non-learned baselines that write the retrieval candidates format (`user_id`, `item_ids` best first, `scores`).

Popularity: items ranked by their interaction count in the training split, ties broken by the smaller item id;
every user gets the same list, minus the user's own history items when asked.

    python -m sidgr.baselines popularity --train train.parquet --queries test.parquet --items items.parquet \
        --out candidates.parquet [--top-k 50] [--exclude-history]
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sidgr.errors import InputError, input_error
from sidgr.evaluate import list_column, read_columns, user_id_column, resolve_num_items
from sidgr.io import atomic_path
from sidgr.metrics import Ragged, sorted_member


def item_counts(train: Ragged, num_items: int, source="train") -> np.ndarray:
    items = train.values
    if len(items) and (items.min() < 0 or items.max() >= num_items):
        bad = items[(items < 0) | (items >= num_items)][0]
        raise input_error(source, "item_ids", int(bad), f"outside the catalog 0..{num_items - 1}")
    return np.bincount(items, minlength=num_items)


def popularity_order(counts: np.ndarray) -> np.ndarray:
    """Item ids by descending count; a stable sort keeps equal counts in ascending item id order."""
    return np.argsort(-counts, kind="stable")


def _top_k_excluding(order: np.ndarray, history: Ragged, num_items: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the first k items of `order` outside the user's history -> (items [U, k], kept [U, k] bool).

    Only a prefix of k + (longest history) items of the global order can be needed, so the work is a
    [users, k + max history] membership mask rather than a per-user loop.
    """
    lengths = np.diff(history.offsets)
    width = int(min(num_items, k + (lengths.max() if len(lengths) else 0)))
    prefix = order[:width]
    rows = history.row_ids()
    in_range = (history.values >= 0) & (history.values < num_items)
    keys = np.unique(rows[in_range] * np.int64(num_items) + history.values[in_range])
    users = np.arange(history.num_rows, dtype=np.int64)
    blocked = sorted_member(users[:, None] * np.int64(num_items) + prefix[None, :], keys)  # [U, width]
    pick = np.argsort(blocked, axis=1, kind="stable")[:, :k]  # unblocked first, in popularity order
    items = prefix[pick]
    kept = ~np.take_along_axis(blocked, pick, axis=1)
    return items, kept


def popularity_candidates(counts: np.ndarray, history: Ragged, k: int, exclude_history: bool,
                          chunk_users: int = 4096, max_cells: int = 1 << 22) -> tuple[Ragged, Ragged]:
    """(item lists, score lists as float) for every user in `history` (rows), best first.

    With history exclusion users are processed in chunks of at most `chunk_users`, fewer when histories are long,
    so a chunk's [users, k + max history] mask stays under `max_cells`.
    """
    num_items = len(counts)
    order = popularity_order(counts)
    k = min(k, num_items)
    num_users = history.num_rows
    if not exclude_history:
        items = np.tile(order[:k], num_users)
        offsets = np.arange(num_users + 1, dtype=np.int64) * k
        return Ragged(items, offsets), Ragged(counts[items].astype(np.float64), offsets)
    longest = int(np.diff(history.offsets).max()) if num_users else 0
    chunk_users = max(1, min(chunk_users, max_cells // (k + longest)))
    parts, lens = [], []
    for start in tqdm(range(0, num_users, chunk_users), desc="popularity", unit="chunk",
                      disable=num_users <= chunk_users):
        stop = min(num_users, start + chunk_users)
        chunk = history.take(np.arange(start, stop))
        items, kept = _top_k_excluding(order, chunk, num_items, k)
        parts.append(items[kept])
        lens.append(kept.sum(axis=1))
    items = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lens) if lens else np.zeros(0, dtype=np.int64), out=offsets[1:])
    return Ragged(items, offsets), Ragged(counts[items].astype(np.float64), offsets)


def _list_array(r: Ragged, value_type) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(r.offsets, pa.int32() if r.offsets[-1] < 2**31 else pa.int64()),
                                    pa.array(r.values, value_type))


def write_candidates(path, user_ids: np.ndarray, items: Ragged, scores: Ragged) -> None:
    table = pa.table({
        "user_id": pa.array(user_ids, pa.int64()),
        "item_ids": _list_array(items, pa.int64()),
        "scores": _list_array(scores, pa.float32()),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def run_popularity(train_path, queries_path, items, out_path, top_k: int = 50, exclude_history: bool = False) -> dict:
    if top_k <= 0:
        raise input_error("--top-k", "top_k", top_k, "must be positive")
    num_items = resolve_num_items(items)
    train = read_columns(train_path, ["item_ids"])
    counts = item_counts(list_column(train, "item_ids", train_path), num_items, train_path)
    queries = read_columns(queries_path, ["user_id", "item_ids"])
    users = user_id_column(queries, queries_path)
    lists, scores = popularity_candidates(counts, list_column(queries, "item_ids", queries_path), top_k,
                                          exclude_history)
    write_candidates(out_path, users, lists, scores)
    return {"users": len(users), "num_items": num_items, "top_k": top_k, "exclude_history": exclude_history}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidgr.baselines", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="baseline", required=True)
    pop = sub.add_parser("popularity", help="rank items by training-split interaction count")
    pop.add_argument("--train", required=True, help="train.parquet (item_ids are counted)")
    pop.add_argument("--queries", required=True, help="parquet with user_id, item_ids (history), e.g. test.parquet")
    pop.add_argument("--items", required=True, help="catalog size N, or items.parquet")
    pop.add_argument("--out", required=True, help="candidates parquet to write")
    pop.add_argument("--top-k", type=int, default=50)
    pop.add_argument("--exclude-history", action="store_true", help="drop each user's history items")
    args = parser.parse_args(argv)
    try:
        info = run_popularity(args.train, args.queries, args.items, args.out, args.top_k, args.exclude_history)
    except InputError as err:
        print(f"sidgr.baselines: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {info}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
