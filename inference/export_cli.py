"""`sidgr export --checkpoint RUN_DIR/checkpoints/iter_XXXXXXX --out ENGINE_DIR`."""
from __future__ import annotations

import argparse

from sidgr.logs import get_logger


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a training checkpoint directory (iter_XXXXXXX)")
    p.add_argument("--out", required=True, help="engine directory to write (model.safetensors, engine.json, sids)")


def run(args) -> int:
    from .export import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    get_logger("sidgr.export").info(f"wrote engine {out}")
    return 0
