"""`sidgr prepare {ml100k,beauty,ml1m,interactions} --out DIR [--source DIR|FILE] [--max-users N]`: items + users +
leave-one-out sequences parquet, and stats.json, written all or nothing.

`interactions` is your own data: --source is an interactions file, --items an optional items file with text
(see `sidgr/data/interactions.py` for the formats).

ml100k reads the recbole wheel's RecBole files unless --source is given; beauty (Amazon Beauty 2014 5-core,
the TIGER/LETTER split) and ml1m (MovieLens-1M) have no default source, so --source is required for them.
--max-users N keeps the first N users in the dataset's documented user order (a small slice for CI).
"""
from __future__ import annotations

import argparse
import importlib

from sidgr.errors import input_error

DATASETS = ("ml100k", "beauty", "ml1m", "interactions")
SOURCES = {
    "ml100k": "ml-100k.inter and ml-100k.item (default: the recbole wheel's dataset_example/ml-100k)",
    "beauty": "Beauty.inter.json, datamaps.json and beauty_item_attributes.json, each may be .xz",
    "ml1m": "ratings.dat, movies.dat and users.dat, each may be .xz",
    "interactions": "the interactions FILE itself (.csv, .tsv, .inter, .parquet)",
}
DEFAULT_SOURCE = ("ml100k",)  # the others need --source


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS, help="dataset to prepare")
    parser.add_argument("--out", required=True, help="output directory (files are replaced atomically)")
    parser.add_argument("--source", default=None,
                        help="directory holding the source files; " + "; ".join(
                            f"{d}{'' if d in DEFAULT_SOURCE else ' (required)'}: {h}" for d, h in SOURCES.items()))
    parser.add_argument("--max-users", type=_positive_int, default=None, metavar="N",
                        help="keep only the first N users (in the source's user order) and their interactions")
    own = parser.add_argument_group("interactions (your own data)")
    own.add_argument("--user-col", default="user_id", help="user id column of the interactions file")
    own.add_argument("--item-col", default="item_id", help="item id column (of the interactions and items files)")
    own.add_argument("--time-col", default="timestamp", help="time column; 'none': the file order is the time order")
    own.add_argument("--items", default=None, help="items file with text (.csv, .tsv, .item, .parquet)")
    own.add_argument("--text-cols", default="", help="comma-separated columns of --items joined into the item text")


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def run(args: argparse.Namespace) -> int:
    if args.source is None and args.dataset not in DEFAULT_SOURCE:
        raise input_error("--source", "source", None,
                          f"required for {args.dataset}: the directory holding {SOURCES[args.dataset]}")
    module = importlib.import_module(f"sidgr.data.{args.dataset}")
    if args.dataset == "interactions":
        cols = module.Columns(args.user_col, args.item_col, None if args.time_col.lower() == "none" else args.time_col,
                              tuple(c for c in args.text_cols.split(",") if c))
        stats = module.prepare(args.out, args.source, cols, args.items, max_users=args.max_users)
    else:
        stats = module.prepare(args.out, args.source, max_users=args.max_users)
    print(f"{args.dataset}: {stats['users']:,} users, {stats['items']:,} items, "
          f"{stats['interactions']:,} interactions{_notes(stats)}")
    print(f"splits: train {stats['train_rows']:,} rows / {stats['train_interactions']:,} interactions, "
          f"valid {stats['valid_rows']:,} rows, test {stats['test_rows']:,} rows "
          f"({stats['users_too_short_for_split']} users too short for the split)")
    print(f"wrote {args.out}/{{items,users,sequences,train,valid,test}}.parquet and stats.json")
    return 0


def _notes(stats: dict) -> str:
    notes = []
    if "timestamp_ties" in stats:
        notes.append(f"{stats['timestamp_ties']:,} tie on timestamp")
    if "timestamps" in stats:
        notes.append(f"timestamps: {stats['timestamps']}")
    if stats.get("items_without_text"):
        notes.append(f"{stats['items_without_text']:,} items without text")
    if "max_users" in stats:
        notes.append(f"first {stats['max_users']:,} users only")
    return f" ({'; '.join(notes)})" if notes else ""
