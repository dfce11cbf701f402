"""Non-learned baselines that write the retrieval candidates format (`user_id`, `item_ids` best first, `scores`).

Popularity: items ranked by their interaction count in the training split, ties broken by the smaller item id;
every user gets the same list, minus the user's own history items (unless --include-history).

    sidgr baseline popularity --train train.parquet --sequences test.parquet --items items.parquet \
        --out candidates.parquet [--k 50] [--include-history]
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from sidgr.data.ragged import Ragged
from sidgr.data.readers import Candidates, check_unique_users, read_num_items, read_sequences, write_candidates
from sidgr.errors import input_error
from sidgr.ranking import top_k_unseen
from sidgr.logs import get_logger, progress_bar


def popularity_order(counts: np.ndarray) -> np.ndarray:
    """Item ids by descending count; a stable sort keeps equal counts in ascending item id order."""
    return np.argsort(-counts, kind="stable")


def popularity_candidates(counts: np.ndarray, history: Ragged, k: int, exclude_history: bool,
                          chunk_users: int = 4096, max_cells: int = 1 << 22) -> tuple[Ragged, Ragged]:
    """(item lists, score lists) for every user in `history` (rows), best first.

    Only a prefix of k + (longest history) items of the global order can be needed, so each chunk of users
    ranks a [users, k + longest history] slice (under `max_cells`), not the whole catalog.
    """
    num_items = len(counts)
    order = popularity_order(counts)
    k = min(k, num_items)
    num_users = history.num_rows
    if not exclude_history:
        items = np.tile(order[:k], num_users)
        offsets = np.arange(num_users + 1, dtype=np.int64) * k
        return Ragged(items, offsets), Ragged(counts[items].astype(np.float32), offsets)
    longest = int(history.lengths.max()) if num_users else 0
    prefix = torch.from_numpy(order[:min(num_items, k + longest)])
    chunk_users = max(1, min(chunk_users, max_cells // len(prefix)))
    prefix_scores = torch.from_numpy(counts[prefix.numpy()].astype(np.float32))
    items, scores = [], []
    for start in progress_bar(range(0, num_users, chunk_users), desc="popularity", unit="chunk",
                      disable=num_users <= chunk_users):
        chunk = history.take(np.arange(start, min(num_users, start + chunk_users)))
        lists, values = top_k_unseen(prefix_scores.expand(chunk.num_rows, -1), k, chunk, prefix)
        items.append(lists)
        scores.append(values)
    return Ragged.concat(items), Ragged.concat(scores)


def run_popularity(train_path, queries_path, items, out_path, top_k: int = 50, exclude_history: bool = True) -> dict:
    if top_k <= 0:
        raise input_error("--k", "k", top_k, "must be positive")
    num_items = read_num_items(items)
    counts = np.bincount(read_sequences(train_path, False, False, num_items=num_items).item_ids, minlength=num_items)
    queries = read_sequences(queries_path, False, False, num_items=num_items)
    check_unique_users(queries.user_ids, queries_path)
    lists, scores = popularity_candidates(counts, queries.items, top_k, exclude_history)
    write_candidates(out_path, Candidates(queries.user_ids, lists, scores))
    return {"users": queries.num_users, "num_items": num_items, "top_k": top_k, "exclude_history": exclude_history}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="baseline", required=True)
    pop = sub.add_parser("popularity", help="rank items by training-split interaction count",
                         formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    pop.add_argument("--train", required=True, help="train.parquet (item_ids are counted)")
    pop.add_argument("--sequences", required=True, help="parquet with user_id, item_ids (history), e.g. test.parquet")
    pop.add_argument("--items", required=True, help="catalog size N, or items.parquet")
    pop.add_argument("--out", required=True, help="candidates parquet to write")
    pop.add_argument("--k", type=int, default=50, help="candidates per user")
    pop.add_argument("--include-history", action="store_true",
                     help="let items of the user's history be recommended (default: excluded)")


def run(args: argparse.Namespace) -> int:
    info = run_popularity(args.train, args.sequences, args.items, args.out, args.k, not args.include_history)
    get_logger("sidgr.baseline").info(f"wrote {args.out}: {info}")
    return 0
