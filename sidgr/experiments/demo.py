"""The MovieLens-100K demo, end to end: prepare -> tokenize -> train -> select on valid -> export -> retrieve
-> evaluate, for SID-GR with three tokenizers and the baselines, ending with the comparison table.

    python scripts/demo.py            # the full run (README's main command, after scripts/install.sh)
    python scripts/demo.py --quick    # a smoke run of the same pipeline in a few minutes (CI runs it)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sidgr.experiments.pipeline import (Plan, Runner, beam_vs_exact, item_baseline, popularity, sid_gr,
                                        sidgr)


def make_plan(args) -> Plan:
    where = dict(out=Path(args.out), data=Path(args.data), nproc=args.nproc)
    if args.quick:
        return Plan(**where, quick=True, steps=20, eval_interval=20, beam_width=64, bootstrap=200, beam_sweep=(64,))
    return Plan(**where, quick=False, steps=args.steps, eval_interval=args.steps // 4, beam_width=args.beam_width)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, small beams, fewer resamples")
    p.add_argument("--out", default="runs/demo", help="where runs, logs, the table and plots go")
    p.add_argument("--nproc", type=int, default=2, help="torchrun processes per training run (data parallel)")
    p.add_argument("--steps", type=int, default=400, help="training steps per model (full run)")
    p.add_argument("--beam-width", type=int, default=256, help="beam width for SID-GR retrieval")
    p.add_argument("--data", default="artifacts/ml100k", help="where the prepared ml-100k files and SIDs go")
    args = p.parse_args(argv)
    plan = make_plan(args)
    plan.out.mkdir(parents=True, exist_ok=True)
    ckpts = max(plan.steps // plan.eval_interval, 1)
    sweep = sum(w >= plan.k for w in plan.beam_sweep)
    stages = (1 + len(plan.tokenizers) + 2 + 2 * 3 + len(plan.tokenizers) * (1 + 3 * ckpts + 2)
              + 2 + 2 * sweep + 1 + 2)
    run = Runner(plan, stages)
    t_start = time.perf_counter()

    run("prepare", sidgr("prepare", "ml100k", "--out", plan.data))
    mappings = {}
    for method, flags in plan.tokenizers.items():
        out = plan.data / f"sids_{method}"
        run(f"tokenize_{method}", sidgr("tokenize", "--items", plan.data / "items.parquet", *flags, "--seed", 0,
                                        "--out", out))
        mappings[method] = out / "sids.json"

    rows, selection = {}, {}
    rows["popularity"] = popularity(run, plan)
    for name, config in (("sasrec_ce", "configs/ml100k_sasrec.gin"), ("sid_input", "configs/ml100k_sidinput.gin")):
        rows[name], selection[name] = item_baseline(run, plan, name, config, mappings["balanced"])
    for method, mapping in mappings.items():
        rows[f"sid-gr ({method})"], selection[f"sidgr_{method}"] = sid_gr(run, plan, method, mapping)

    beam = beam_vs_exact(run, plan, Path(selection["sidgr_balanced"]["engine"]), "balanced")
    table_runs = sum((["--run", f"{n}={d / 'test'}"] for n, d in rows.items()), [])
    run("table", sidgr("report", "table", *table_runs, "--paired-baseline", "sasrec_ce", "--out", plan.out))
    logs = {n: d / "curves.jsonl" if (d / "curves.jsonl").exists() else d / "metrics.jsonl" for n, d in rows.items()}
    curves = {n: log for n, log in logs.items() if log.exists()}
    run("plot_curves", sidgr("report", "curves", *sum((["--run", f"{n}={f}"] for n, f in curves.items()), []),
                             "--out", plan.out))
    run.bar.close()

    summary = {"quick": plan.quick, "wall_seconds": time.perf_counter() - t_start, "selection": selection,
               "beam_vs_exact": beam, "stage_seconds": run.timings, "commands": run.commands}
    (plan.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print((plan.out / "comparison.md").read_text() if (plan.out / "comparison.md").exists() else "")
    print(f"beam top-10 == exact top-10 (test users, tokenizer {beam['tokenizer']}): "
          + ", ".join(f"W={w}: {v:.3f}" for w, v in beam["top10_equal_to_exact"].items()))
    print(f"demo finished in {summary['wall_seconds'] / 60:.1f} min; outputs in {plan.out}")
    return 0
