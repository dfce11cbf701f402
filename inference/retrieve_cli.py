"""`sidgr retrieve`: sequences parquet -> top-K candidates parquet (user_id, item_ids, scores), best first.

Resumable after a kill (see `inference/batch_retrieval.py`); the user's history is excluded unless
--include-history. `--nproc N` shards the users over N processes (`inference/shards.py`); the output is the same.
Several machines: the same command on each with `--nnodes M --node-rank R --rdzv-endpoint HOST:PORT` (`sidgr.launch`).
"""
from __future__ import annotations

import argparse
import os
import sys

from sidgr.errors import input_error
from sidgr.launch import add_node_arguments, check_nodes, torchrun_prefix, worker_argv
from sidgr.logs import get_logger


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", required=True, help="engine directory written by `sidgr export`")
    p.add_argument("--sequences", required=True, help="parquet with user_id and item_ids (history)")
    p.add_argument("--out", required=True, help="output candidates parquet")
    p.add_argument("--k", type=int, default=100, help="candidates per user")
    p.add_argument("--beam-width", type=int, default=256, help="beam width at every step")
    p.add_argument("--beam-widths", default=None, help="comma-separated width per level (overrides --beam-width)")
    p.add_argument("--include-history", action="store_true",
                   help="let items of the user's history be returned (default: never)")
    p.add_argument("--exact", action="store_true", help="score every catalog item exactly instead of beam search")
    p.add_argument("--new-items", choices=["model", "backoff"], default="model",
                   help="items added after training (sidgr tokenize --extend): scored by the model like any other, "
                        "or also ranked as an average item of their beam prefix (cold start; beam only)")
    p.add_argument("--dense-weight", type=float, default=None,
                   help="a model trained with ModelConfig.dense_weight: rank by SID log-likelihood + this * its "
                        "item-level log-probability (default: the trained weight; 0: SID alone)")
    p.add_argument("--dense-candidates", type=int, default=None,
                   help="with the dense score: also rank its top M items (teacher-forced SID log-likelihood + "
                        "dense) beside the beam's, so the ranking is not limited to what the beam found "
                        "(default: the final beam width; 0: the beam's items only)")
    p.add_argument("--batch-size", type=int, default=64, help="users per batch")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes on this machine, users sharded by batch (runs itself under torchrun)")
    add_node_arguments(p)  # several machines: --out on storage they all see


def parse_widths(args) -> int | list[int]:
    if not args.beam_widths:
        return args.beam_width
    try:
        return [int(w) for w in args.beam_widths.split(",")]
    except ValueError:
        raise input_error("--beam-widths", "beam widths", args.beam_widths, "expected integers like 64,256,1024") \
            from None


def run(args) -> int:
    import torch

    from .batch_retrieval import RetrievalParams, retrieve_file
    from .beam import beam_widths
    from .engine import Engine
    from sidgr.process import under_torchrun

    from .shards import join_world, leave_world

    check_nodes(args, "sidgr retrieve")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise input_error("--batch-size", "batch_size", args.batch_size, "must be >= 1")
    if args.k < 1:
        raise input_error("--k", "k", args.k, "must be >= 1")
    engine = Engine.load(args.engine)
    widths = beam_widths(parse_widths(args), engine.arch.num_levels, "--beam-width(s)")
    if not args.exact and args.k > widths[-1]:
        raise input_error("--k", "k", args.k, f"larger than the final beam width {widths[-1]}")
    if args.exact and args.new_items == "backoff":
        raise input_error("--new-items", "new_items", args.new_items, "backoff scoring needs beam search, not --exact")
    weight = engine.dense_weight(args.dense_weight)  # a bad weight: one line now, before any decoding
    engine.dense_candidates(args.dense_candidates, widths[-1], bool(weight), "--dense-candidates")
    params = RetrievalParams(args.k, widths, not args.include_history, args.exact, args.batch_size, args.new_items,
                             args.dense_weight, args.dense_candidates)
    if (args.nproc > 1 or args.nnodes > 1) and not under_torchrun():  # checked here: one line, not a banner
        cmd = [*torchrun_prefix(args), "-m", "sidgr.cli", *worker_argv(args.command_argv)]
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(cmd[0], cmd)
    shard = join_world()
    try:
        users = retrieve_file(engine, args.engine, args.sequences, args.out, params, shard)
    finally:
        leave_world()
    get_logger("sidgr.retrieve").info(f"wrote {args.out} ({users} users, k={args.k})")
    return 0
