"""The language model's pipeline on MovieLens-100K, measured beside popularity in the demo's harness:
prepare -> tokenize (balanced text SIDs) -> `sidgr lm train` (selects on valid) -> `sidgr lm recommend` on test ->
`sidgr evaluate` -> `sidgr lm eval` (SID<->title, instructions) -> comparison table with paired CIs.

    python scripts/lm_demo.py --out runs/lm_demo --data artifacts/ml100k
    python scripts/lm_demo.py --quick ...           # a smoke run in a few minutes (CI)
    ... --compare sid-gr=runs/demo/sidgr_balanced/test   # more rows for the table (other runs' test evaluations)
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from sidgr.experiments.datasets import DATASETS
from sidgr.experiments.demo import tokenize
from sidgr.experiments.pipeline import Plan, Runner, evaluate, popularity, sidgr

QUICK = ["LMConfig.stage1_steps=2", "LMConfig.stage2_steps=4", "LMConfig.checkpoint_every=4",
         "LMConfig.rows_per_step=2", "LMConfig.warmup_steps=1", "LMConfig.max_users=32", "LMConfig.log_interval=1",
         "LMConfig.wandb='disabled'"]
QUICK_USERS, QUICK_ITEMS, QUICK_INSTRUCTED = 32, 32, 16


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/lm_demo", help="where the run, logs, the table and plots go")
    p.add_argument("--data", default="artifacts/ml100k", help="where the prepared files and SIDs go")
    p.add_argument("--config", default="configs/lm_ml100k.gin")
    p.add_argument("--quick", action="store_true", help="smoke run: a few steps, a slice of the users")
    p.add_argument("--compare", action="append", default=[], help="NAME=EVAL_DIR: another model's test evaluation")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = Plan(out=Path(args.out), data=Path(args.data), quick=args.quick, nproc=1, steps=None,
                eval_interval=None, beam_width=0, bootstrap=200 if args.quick else 1000,
                dataset=DATASETS["ml100k"])
    plan.out.mkdir(parents=True, exist_ok=True)
    run = Runner(plan, 9)
    started = time.perf_counter()
    run("prepare", sidgr("prepare", "ml100k", "--out", plan.data))
    sids = tokenize(run, plan, "balanced", plan.dataset.text_sids["balanced"])
    lm = plan.out / "lm"
    run("lm_train", sidgr("lm", "train", "--config", args.config, f"LMConfig.data_dir='{plan.data}'",
                          f"LMConfig.sids='{sids}'", f"LMConfig.run_dir='{lm}'", *(QUICK if args.quick else [])))
    cands = lm / "test_candidates.parquet"
    users = ["--max-users", QUICK_USERS] if args.quick else []
    run("lm_recommend", sidgr("lm", "recommend", "--run", lm, "--sequences", plan.data / "test.parquet",
                              "--out", cands, "--k", plan.k, *users))
    evaluate(run, plan, "eval_test_lm", cands, "test", lm / "test", plan.bootstrap)
    pop = popularity(run, plan)
    quick_eval = ["--max-items", QUICK_ITEMS, "--max-users", QUICK_INSTRUCTED] if args.quick else []
    run("lm_eval", sidgr("lm", "eval", "--run", lm, "--out", lm, *quick_eval))
    rows = [f"popularity={pop / 'test'}", f"lm={lm / 'test'}", *args.compare]
    run("table", sidgr("report", "table", *sum((["--run", r] for r in rows), []), "--paired-baseline", "popularity",
                       "--out", plan.out))
    run("plot_curves", sidgr("report", "curves", "--run", f"lm={lm / 'metrics.jsonl'}", "--out", plan.out))
    run.bar.close()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    summary = {"quick": plan.quick, "wall_seconds": time.perf_counter() - started, "stage_seconds": run.timings,
               "peak_rss_mib_any_stage": peak, "best": json.loads((lm / "best.json").read_text()),
               "lm_eval": json.loads((lm / "lm_eval.json").read_text()), "commands": run.commands}
    (plan.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print((plan.out / "comparison.md").read_text())
    ev = summary["lm_eval"]
    print(f"SID->title exact match: trained {ev['sid_to_title']['trained']['exact_match']:.3f}, held-out "
          f"{ev['sid_to_title']['heldout']['exact_match']:.3f}; title->SID top-1: trained "
          f"{ev['title_to_sid']['trained']['top1_accuracy']:.3f}, held-out "
          f"{ev['title_to_sid']['heldout']['top1_accuracy']:.3f}")
    print(f"wall {summary['wall_seconds'] / 60:.1f} min, peak RSS {peak:.0f} MiB")
    return 0
