"""`sidgr evaluate`: ranked candidates parquet + held-out targets -> metrics.json, metrics.md, per_user.parquet."""
from __future__ import annotations

import argparse

from sidgr.errors import input_error
from sidgr.logs import get_logger


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise input_error("--ks", "ks", text, "expected comma-separated positive integers") from None
    if not ks or min(ks) <= 0:
        raise input_error("--ks", "ks", text, "expected comma-separated positive integers")
    return ks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidates", required=True, help="parquet: user_id, item_ids (best first)[, scores]")
    parser.add_argument("--targets", required=True,
                        help="parquet: user_id, target (int or list), item_ids (history, checked against)")
    parser.add_argument("--items", required=True, help="catalog size N, or items.parquet (item_id 0..N-1)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--include-history", action="store_true",
                        help="candidates may hold items of the user's history (default: verified that none do, "
                             "error if violated)")
    parser.add_argument("--ks", default="1,5,10,20,50", help="comma-separated cutoffs")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def run(args: argparse.Namespace) -> int:
    from sidgr.evaluate import evaluate, markdown_report, write_outputs

    if args.bootstrap < 0:
        raise input_error("--bootstrap", "bootstrap", args.bootstrap, "must be >= 0")
    report, per_user, users = evaluate(args.candidates, args.targets, args.items, not args.include_history,
                                       parse_ks(args.ks), args.bootstrap, args.seed)
    paths = write_outputs(args.out, report, per_user, users)
    print(markdown_report(report))
    get_logger("sidgr.evaluate").info(f"wrote {paths['json']}, {paths['markdown']}, {paths['per_user']}")
    return 0
