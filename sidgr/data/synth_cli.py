"""`sidgr synth`: a synthetic clustered catalog (embeddings.npy + items) and cluster-following sequences."""
from __future__ import annotations

import argparse

from sidgr.data.synth import SynthConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SynthConfig(items=1, users=1)
    parser.add_argument("--items", type=int, required=True, help="number of items N (>= 1M works)")
    parser.add_argument("--users", type=int, required=True, help="number of users U")
    parser.add_argument("--dim", type=int, default=d.dim, help="embedding dimension D")
    parser.add_argument("--clusters", type=int, default=d.clusters, help="number of Gaussian clusters K")
    parser.add_argument("--out", required=True, help="output directory (files are replaced atomically)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--min-len", type=int, default=d.min_len, help="shortest user sequence")
    parser.add_argument("--max-len", type=int, default=d.max_len, help="longest user sequence")
    parser.add_argument("--switch-prob", type=float, default=d.switch_prob,
                        help="probability that the next item starts a new cluster segment")
    parser.add_argument("--explore-prob", type=float, default=d.explore_prob,
                        help="probability that a new segment picks any cluster instead of a favourite")
    parser.add_argument("--popularity-skew", type=float, default=d.popularity_skew,
                        help="exponent of the within-cluster popularity skew (1 = uniform)")
    parser.add_argument("--spread", type=float, default=d.spread, help="std of items around their cluster center")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from sidgr.data.synth import synthesize

    cfg = SynthConfig(items=args.items, users=args.users, dim=args.dim, clusters=args.clusters, seed=args.seed,
                      min_len=args.min_len, max_len=args.max_len, switch_prob=args.switch_prob,
                      explore_prob=args.explore_prob, popularity_skew=args.popularity_skew, spread=args.spread)
    stats = synthesize(cfg, args.out, progress=not args.no_progress)
    print(f"synthetic: {stats['users']:,} users, {stats['items']:,} items ({cfg.clusters} clusters, "
          f"{cfg.dim}-d), {stats['interactions']:,} interactions")
    print(f"splits: train {stats['train_rows']:,} rows / {stats['train_interactions']:,} interactions, "
          f"valid {stats['valid_rows']:,} rows, test {stats['test_rows']:,} rows")
    print(f"wrote {args.out}/embeddings.npy, {{items,users,sequences,train,valid,test}}.parquet, stats.json")
    return 0
