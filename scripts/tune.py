"""Tune SID-GR on a dataset's VALIDATION target only (the test target is never read here).

Each trial is the dataset's config (configs/DATASET.gin) plus gin bindings, trained with the demo's settings; every
kept checkpoint is exported, retrieves the valid users and is scored (Recall@10), and so is the mean of the kept
checkpoints' weights (column "average"), as the demo selects. Writes OUT/tuning.md and OUT/tuning.json.

    python scripts/tune.py --data artifacts/ml100k --tokenizer balanced --out runs/tune \\
        --trial 'base=' --trial 'drop0.2=ModelConfig.dropout=0.2' \\
        --trial 'small=ModelConfig.hidden_size=64,ModelConfig.ffn_hidden_size=256'

Needs the demo's prepared data and SIDs (`python scripts/demo.py` or `--quick` makes them under --data).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

from sidgr.experiments.datasets import DATASETS
from sidgr.experiments.pipeline import (AVERAGE, Plan, Runner, checkpoints, engine_average_on_valid,
                                       item_average_on_valid, item_valid_scores, select_with_average,
                                       train_and_score_on_valid)


def parse_trial(text: str) -> tuple[str, list[str]]:
    name, _, bindings = text.partition("=")
    if not name:
        raise SystemExit(f"tune: --trial {text!r}: expected NAME=BINDING,BINDING (bindings may be empty)")
    return name, [b for b in bindings.split(",") if b]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="ml100k",
                   help="whose configs and validation sample (big datasets score a seeded sample of valid users)")
    p.add_argument("--data", default="artifacts/ml100k", help="prepared files and sids_<tokenizer>/ dirs")
    p.add_argument("--tokenizer", default="balanced", help="which sids_<tokenizer>/sids.json to train on")
    p.add_argument("--out", default="runs/tune")
    p.add_argument("--trial", action="append", required=True, help="NAME=gin.binding=value,gin.binding=value")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--eval-interval", type=int, default=100)
    p.add_argument("--beam-width", type=int, default=256)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--config", default=None,
                   help="gin file (default configs/DATASET.gin; configs/DATASET_sasrec.gin with --item)")
    p.add_argument("--item", action="store_true",
                   help="item-level model (SASRec-CE, SID-input): its trainer's valid Recall@10 per checkpoint")
    args = p.parse_args(argv)
    mapping = Path(args.data) / f"sids_{args.tokenizer}" / "sids.json"
    if not mapping.exists():
        raise SystemExit(f"tune: {mapping}: no SID mapping (run the demo first, or pass --data/--tokenizer)")
    spec = DATASETS[args.dataset]
    trials = [parse_trial(t) for t in args.trial]
    plan = Plan(out=Path(args.out), data=Path(args.data), quick=False, nproc=args.nproc, steps=args.steps,
                eval_interval=args.eval_interval, beam_width=args.beam_width, dataset=spec)
    plan.out.mkdir(parents=True, exist_ok=True)
    # per trial: training (SID-GR checkpoints are scored by the trainer), then the average's scoring (SID-GR: export,
    # retrieve, evaluate; item models: score-items, evaluate)
    run = Runner(plan, len(trials) * (3 if args.item else 4))
    results = {}
    for name, bindings in trials:
        t0 = time.perf_counter()
        run_dir = plan.out / name
        if args.item:
            scores = item_valid_scores(run, plan, name, args.config or spec.config("sasrec"), mapping,
                                       bindings)
            average = partial(item_average_on_valid, run, plan, run_dir)
        else:
            scores = train_and_score_on_valid(run, plan, name, mapping, bindings,
                                              args.config or spec.config())
            average = partial(engine_average_on_valid, run, plan, run_dir)
        best = select_with_average(scores, checkpoints(run_dir), average)
        results[name] = {"bindings": bindings, "valid_recall@10": scores, "best": best, "best_value": scores[best],
                         "wall_s": round(time.perf_counter() - t0, 1)}
    run.bar.close()
    (plan.out / "tuning.json").write_text(json.dumps(results, indent=2) + "\n")
    ckpts = sorted({c for r in results.values() for c in r["valid_recall@10"]}, key=lambda c: (c == AVERAGE, c))
    lines = [f"# SID-GR tuning on the valid target ({args.tokenizer} SIDs, {args.steps} steps)", "",
             "| trial | bindings | " + " | ".join(ckpts) + " | best | wall |", "|---|---|" + "---|" * (len(ckpts) + 2)]
    for name, r in results.items():
        cells = " | ".join(f"{r['valid_recall@10'][c]:.4f}" if c in r["valid_recall@10"] else "—" for c in ckpts)
        lines.append(f"| {name} | {' '.join(r['bindings']) or '(config as is)'} | {cells} | {r['best_value']:.4f} "
                     f"| {r['wall_s'] / 60:.1f} min |")
    (plan.out / "tuning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
