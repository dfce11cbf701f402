"""`sidgr export --checkpoint RUN_DIR[/checkpoints/iter_XXXXXXX ...] --out ENGINE_DIR`."""
from __future__ import annotations

import argparse

from sidgr.logs import get_logger


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="a training checkpoint (RUN_DIR/checkpoints/iter_XXXXXXX), or a run directory: the best "
                        "checkpoint its best.json names (TrainerConfig.select_best), else the latest complete one; "
                        "several checkpoints of one run: an engine with their averaged weights")
    p.add_argument("--out", required=True, help="engine directory to write (model.safetensors, engine.json, sids)")
    p.add_argument("--mapping", default=None,
                   help="serve this SID mapping instead of the trained one: a catalog grown by `sidgr tokenize "
                        "--extend` (new items reachable without retraining)")


def run(args) -> int:
    from .export import export_average, export_checkpoint

    if len(args.checkpoint) > 1:
        out = export_average(args.checkpoint, args.out, args.mapping)
    else:
        out = export_checkpoint(args.checkpoint[0], args.out, args.mapping)
    get_logger("sidgr.export").info(f"wrote engine {out}")
    return 0
