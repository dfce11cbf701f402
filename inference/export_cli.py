"""`sidgr export --checkpoint RUN_DIR[/checkpoints/iter_XXXXXXX] --out ENGINE_DIR`."""
from __future__ import annotations

import argparse

from sidgr.logs import get_logger


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a training checkpoint (RUN_DIR/checkpoints/iter_XXXXXXX), or a run directory: the best "
                        "checkpoint its best.json names (TrainerConfig.select_best), else the latest complete one")
    p.add_argument("--out", required=True, help="engine directory to write (model.safetensors, engine.json, sids)")
    p.add_argument("--mapping", default=None,
                   help="serve this SID mapping instead of the trained one: a catalog grown by `sidgr tokenize "
                        "--extend` (new items reachable without retraining)")


def run(args) -> int:
    from pathlib import Path

    from sidgr.run_layout import resolve_checkpoint

    from .export import export_checkpoint

    log = get_logger("sidgr.export")
    given = Path(args.checkpoint)
    if given.is_dir():
        picked, found = resolve_checkpoint(given)
        if picked != given:
            which = "the best (best.json)" if picked != found[-1] else "the latest complete"
            log.info(f"{given}: exporting {which} checkpoint {picked.name} (of "
                     f"{', '.join(p.name for p in found)}; pass one of them to pick another)")
    out = export_checkpoint(args.checkpoint, args.out, args.mapping)
    log.info(f"wrote engine {out}")
    return 0
