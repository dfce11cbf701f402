"""`sidgr export-embeddings --checkpoint RUN[/checkpoints/iter_N] --items items.parquet --out E.npy`."""
from __future__ import annotations

import argparse

from sidgr.errors import input_error
from sidgr.logs import get_logger


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="an item-level model's (SASRec-CE) checkpoint, or its run dir (the best, else the latest)")
    p.add_argument("--items", required=True, help="items.parquet (N items; their text for --fuse-text)")
    p.add_argument("--out", required=True, help="output .npy [N, D] float32")
    p.add_argument("--table", choices=["items", "head", "both"], default="items",
                   help="input id embeddings, output head weights, or both")
    p.add_argument("--fuse-text", type=float, default=None, metavar="W",
                   help="concat W * L2norm(text embedding) and (1 - W) * L2norm(collaborative)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from sidgr.io import atomic_path
    from sidgr.run_layout import resolve_checkpoint
    from sidgr.tokenize.pipeline import TokenizeConfig, item_embeddings, read_item_texts

    from .item_embeddings import collab_embeddings, fuse

    if args.fuse_text is not None and not 0.0 <= args.fuse_text <= 1.0:
        raise input_error("--fuse-text", "W", args.fuse_text, "must be in [0, 1]")
    checkpoint, _ = resolve_checkpoint(args.checkpoint)
    x = collab_embeddings(Path(checkpoint), len(read_item_texts(args.items)), args.table)
    if args.fuse_text is not None:
        text, _, _ = item_embeddings(args.items, None, TokenizeConfig())
        x = fuse(text, x, args.fuse_text)
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, x.astype(np.float32))
    get_logger("sidgr.export-embeddings").info(f"wrote {args.out} [{x.shape[0]}, {x.shape[1]}] "
                                               f"(table={args.table}, fuse_text={args.fuse_text})")
    return 0
