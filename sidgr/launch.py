"""torchrun launch for the commands that run as several processes (`sidgr train`, `sidgr retrieve`): the node flags,
their checks, and where torchrun's rendezvous is.

One machine: `--standalone`. Several: the same command on each machine with `--nnodes M --node-rank R
--rdzv-endpoint HOST:PORT [--rdzv-id ID]` (torchrun's c10d rendezvous, hosted by the endpoint's machine)."""
from __future__ import annotations

import argparse
import re
import sys

from sidgr.errors import input_error


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nnodes", type=int, default=1, help="machines in the job (each runs this command)")
    parser.add_argument("--node-rank", type=int, default=0, help="this machine's index, 0..nnodes-1")
    parser.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the c10d rendezvous (with --nnodes > 1)")
    parser.add_argument("--rdzv-id", default="sidgr", help="job id shared by the nodes of one run")


def check_nodes(args: argparse.Namespace, command: str) -> None:
    """The node flags (and --nproc) in one line each, before any process starts."""
    if args.nproc < 1:
        raise input_error(command, "--nproc", args.nproc, "must be >= 1")
    if args.nnodes < 1:
        raise input_error(command, "--nnodes", args.nnodes, "must be >= 1")
    if not 0 <= args.node_rank < args.nnodes:
        raise input_error(command, "--node-rank", args.node_rank, f"must be in 0..{args.nnodes - 1}")
    if args.nnodes > 1 and not re.fullmatch(r"[\w.\-\[\]:]+:\d+", args.rdzv_endpoint or ""):
        raise input_error(command, "--rdzv-endpoint", args.rdzv_endpoint,
                          "HOST:PORT of the rendezvous is needed with --nnodes > 1")


def torchrun_prefix(args: argparse.Namespace, max_restarts: int = 0) -> list[str]:
    """`python -m torch.distributed.run` with this machine's share of the job (`args.nproc` processes)."""
    where = ["--standalone"] if args.nnodes == 1 else [
        f"--nnodes={args.nnodes}", f"--node_rank={args.node_rank}", "--rdzv_backend=c10d",
        f"--rdzv_endpoint={args.rdzv_endpoint}", f"--rdzv_id={args.rdzv_id}"]
    return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={args.nproc}",
            f"--max-restarts={max_restarts}"]


LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--rdzv-endpoint", "--rdzv-id")


def worker_argv(argv: list[str]) -> list[str]:
    """`sidgr <argv>` without the launch flags, for the workers (torchrun's own parser would take `--nproc` for an
    abbreviation of its --nproc-per-node)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in LAUNCH_FLAGS:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in LAUNCH_FLAGS)):
            out.append(a)
    return out
