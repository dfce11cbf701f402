"""Choose the dense score's ranking weight on the VALIDATION target (`ModelConfig.retrieval_dense_weight`).

For an engine trained with `ModelConfig.dense_weight` > 0: one beam pass per users' batch (plus the dense score's top
M items, `sidgr retrieve --dense-candidates`), ranked at every weight (`Engine.retrieve_at_weights`: the same
candidates and scores `sidgr retrieve --dense-weight w` gives), history excluded; prints and writes Recall@10 and
NDCG@10 per (M, weight).

    python scripts/tune_dense_weight.py --engine runs/beauty/sidgr_collab/selection/engines/iter_0003000 \\
        --sequences artifacts/beauty/valid_sample3000_seed0.parquet --beam-width 256 \\
        --dense-candidates 0,256 --weights 1,2,4,8,16 --out runs/beauty/dense_weight.json

Never point it at test.parquet: the weight is a model choice.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sidgr.data.ragged import Ragged
from sidgr.data.readers import iter_sequence_batches, open_parquet
from sidgr.inference.engine import Engine
from sidgr.io import check_output
from sidgr.logs import progress_bar
from sidgr.metrics import mark_candidates, per_user_metrics


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--engine", required=True, help="engine directory (`sidgr export`) of a dense-score model")
    p.add_argument("--sequences", required=True, help="VALIDATION parquet: user_id, item_ids, target")
    p.add_argument("--beam-width", type=int, default=256)
    p.add_argument("--dense-candidates", default="", help="comma-separated M values (default: the beam width)")
    p.add_argument("--weights", default="1,2,4,8,16", help="comma-separated dense weights > 0")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help="JSON to write")
    return p.parse_args(argv)


def sweep(engine: Engine, sequences: Path, width: int, ms: list[int], weights: list[float], k: int,
          batch_size: int) -> list[dict]:
    """Recall@k / NDCG@k of every (M, weight) over the users of `sequences`, history excluded."""
    hits = {(m, w): [] for m in ms for w in weights}
    targets = []
    total = open_parquet(sequences, ["user_id", "item_ids", "target"]).metadata.num_rows
    batches = iter_sequence_batches(sequences, batch_size, num_items=engine.mapping.num_items, require_history=True,
                                    require_target=True)
    for batch in progress_bar(batches, total=-(-total // batch_size), desc="sweep", unit="batch"):
        histories = [torch.from_numpy(batch.items.row(u)) for u in range(batch.num_users)]
        targets.append(batch.targets)
        for m in ms:
            for w, ranked in zip(weights, engine.retrieve_at_weights(histories, k, width, weights, True, m)):
                hits[(m, w)].append(ranked.to_ragged()[0])
    target_all = Ragged.concat(targets)
    rows = []
    for (m, w), parts in hits.items():
        metrics = per_user_metrics(mark_candidates(Ragged.concat(parts), target_all, engine.mapping.num_items), ks=(k,))
        rows.append({"dense_candidates": m, "dense_weight": w, f"recall@{k}": float(metrics[f"recall@{k}"].mean()),
                     f"ndcg@{k}": float(metrics[f"ndcg@{k}"].mean()), "users": int(target_all.num_rows)})
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    engine = Engine.load(args.engine)
    check_output(Path(args.out), is_dir=False)
    ms = [int(m) for m in args.dense_candidates.split(",") if m] or [args.beam_width]
    weights = [float(w) for w in args.weights.split(",")]
    rows = sweep(engine, Path(args.sequences), args.beam_width, ms, weights, args.k, args.batch_size)
    best = max(rows, key=lambda r: r[f"recall@{args.k}"])
    print(f"| dense candidates M | weight | Recall@{args.k} | NDCG@{args.k} |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['dense_candidates']} | {r['dense_weight']:g} | {r[f'recall@{args.k}']:.4f} | "
              f"{r[f'ndcg@{args.k}']:.4f} |")
    print(f"best: M={best['dense_candidates']} weight={best['dense_weight']:g}")
    Path(args.out).write_text(json.dumps({"engine": str(args.engine), "sequences": str(args.sequences),
                                          "beam_width": args.beam_width, "rows": rows, "best": best}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
