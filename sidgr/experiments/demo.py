"""The demo, end to end on one dataset: prepare -> tokenize -> train -> select on valid -> export -> retrieve ->
evaluate, for popularity, SASRec-CE, SID-input and SID-GR on each set of SIDs, ending with the comparison table and
each model's test metrics by the target's training popularity (`segments_target-popularity.md`, `.png`).

    python scripts/demo.py                          # MovieLens-100K, the full run (the README's main command)
    python scripts/demo.py --quick                  # a smoke run of the same pipeline in a few minutes (CI)
    python scripts/demo.py --dataset beauty --source DIR --out runs/beauty --data artifacts/beauty
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from sidgr.experiments.datasets import DATASETS
from sidgr.experiments.pipeline import (Plan, Runner, beam_vs_exact, item_baseline, popularity, sid_gr,
                                        sidgr)


QUICK_SAMPLE = 250  # --quick scores SID-GR checkpoints and the beam-vs-exact sweep on this many seeded users


def make_plan(args) -> Plan:
    where = dict(out=Path(args.out), data=Path(args.data), nproc=args.nproc, dataset=DATASETS[args.dataset])
    if args.quick:
        spec = where["dataset"]
        where["dataset"] = replace(spec, valid_users=min(spec.valid_users or QUICK_SAMPLE, QUICK_SAMPLE),
                                   sweep_users=min(spec.sweep_users or QUICK_SAMPLE, QUICK_SAMPLE))
        return Plan(**where, quick=True, steps=20, eval_interval=10, beam_width=64, bootstrap=200,
                    beam_sweep=(256,))  # a 20-step model is flat: W=64 finds the exact top-10 for only ~84% of users
    steps = args.steps if args.steps is not None else (400 if args.dataset == "ml100k" else None)
    return Plan(**where, quick=False, steps=steps, eval_interval=steps // 4 if steps else None,
                beam_width=args.beam_width)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="ml100k")
    p.add_argument("--source", default=None, help="the dataset's source files (`sidgr prepare --source`)")
    p.add_argument("--quick", action="store_true", help="smoke run: few steps, small beams, fewer resamples")
    p.add_argument("--out", default="runs/demo", help="where runs, logs, the table and plots go")
    p.add_argument("--nproc", type=int, default=2, help="torchrun processes per training run (data parallel)")
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per model (default: 400 on ml100k, the configs' own elsewhere)")
    p.add_argument("--beam-width", type=int, default=None,
                   help="beam width for SID-GR retrieval (default: the dataset's, chosen on validation: 256, ML-1M 64)")
    p.add_argument("--data", default="artifacts/ml100k", help="where the prepared files and SIDs go")
    p.add_argument("--max-users", type=int, default=None, help="prepare only the first N users (a small slice)")
    p.add_argument("--sids", default=None,
                   help="comma-separated SID-GR rows to train (default: every SIDs on ml100k, collab on Beauty and "
                        "ML-1M to fit their CPU budgets), e.g. text,collab,fused")
    p.add_argument("--sid-input", action=argparse.BooleanOptionalAction, default=None,
                   help="train the SID-input item baseline (default: yes, except on ML-1M, to fit its CPU budget)")
    args = p.parse_args(argv)
    spec = DATASETS[args.dataset]
    if spec.source_required and not args.source:
        p.error(f"--dataset {args.dataset} needs --source DIR (see the README's benchmark data section)")
    known = [*spec.text_sids, *spec.collab_sids]
    args.sids = args.sids.split(",") if args.sids else list(spec.demo_sids or known)
    args.beam_width = spec.beam_width if args.beam_width is None else args.beam_width
    args.sid_input = spec.demo_sid_input if args.sid_input is None else args.sid_input
    if not args.sids or set(args.sids) - set(known):
        p.error(f"--sids {','.join(args.sids)}: expected some of {','.join(known)}")
    return args


def prepare_and_tokenize(run: Runner, plan: Plan, args) -> dict[str, Path]:
    """Prepared files + the text SIDs; returns SIDs name -> mapping."""
    extra = (["--source", args.source] if args.source else []) + \
            (["--max-users", args.max_users] if args.max_users else [])
    run("prepare", sidgr("prepare", plan.dataset.name, "--out", plan.data, *extra))
    mappings = {}
    for name, flags in plan.dataset.text_sids.items():
        mappings[name] = tokenize(run, plan, name, flags)
    return mappings


def tokenize(run: Runner, plan: Plan, name: str, flags: list, embeddings: Path | None = None) -> Path:
    out = plan.data / f"sids_{name}"
    emb = ["--embeddings", embeddings] if embeddings else []
    run(f"tokenize_{name}", sidgr("tokenize", "--items", plan.data / "items.parquet", *emb, *flags, "--seed", 0,
                                  "--out", out))
    return out / "sids.json"


def collaborative_sids(run: Runner, plan: Plan, sasrec_checkpoint: Path, names: list[str]) -> dict[str, Path]:
    """Item embeddings of the SASRec-CE checkpoint selected on valid (trained on train only), tokenized: the
    collaborative SIDs of `names` (those a SID-GR row trains on)."""
    mappings = {}
    for name, flags in plan.dataset.collab_sids.items():
        if name not in names:
            continue
        emb = plan.data / f"embeddings_{name}.npy"
        run(f"embeddings_{name}", sidgr("export-embeddings", "--checkpoint", sasrec_checkpoint,
                                        "--items", plan.data / "items.parquet", "--out", emb, *flags))
        mappings[name] = tokenize(run, plan, name, ["--method", "balanced", "--codebook-sizes", "64,64,64"], emb)
    return mappings


def item_models(sid_input: bool) -> list[tuple[str, str]]:
    """The item-level baselines the demo trains: (run name, config family)."""
    return [("sasrec_ce", "sasrec")] + ([("sid_input", "sidinput")] if sid_input else [])


def stage_count(plan: Plan, trained: list[str], sid_input: bool) -> int:
    spec = plan.dataset
    collab = set(spec.collab_sids) & set(trained)
    sids = 1 + len(spec.text_sids) + 2 * len(collab)  # prepare, tokenize; export + tokenize
    reads = len(plan.test_splits())
    items = len(item_models(sid_input))
    models = 1 + items + len(trained)  # popularity, the item models, SID-GR
    tests = (items + len(trained)) + models * 2 * reads  # trainings; candidates + evaluation per read
    # the averaged checkpoints on valid: each SID-GR row's export, retrieve, evaluate; each item model's score, evaluate
    tests += 3 * len(trained) + 2 * items
    sweep = 2 + 2 * sum(w >= plan.k for w in plan.beam_sweep) + 1
    return sids + tests + sweep + reads + 2  # a table per read, the segments, the curves


def published_table(spec, ours: Path) -> str:
    """The published rows of the dataset's benchmark, with their protocol, pointing at our table under it."""
    metrics = list(dict.fromkeys(m for _, values in spec.published for m in values))
    lines = [f"Published ({spec.published_protocol}); ours under this protocol: {ours / 'comparison.md'}", "",
             "| published | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
    lines += ["| " + name + " | " + " | ".join(f"{values[m]:.4f}" if m in values else "—" for m in metrics) + " |"
              for name, values in spec.published]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    plan = make_plan(args)
    plan.out.mkdir(parents=True, exist_ok=True)
    run = Runner(plan, stage_count(plan, args.sids, args.sid_input))
    t_start = time.perf_counter()
    mappings = prepare_and_tokenize(run, plan, args)
    spec = plan.dataset

    rows, selection = {}, {}
    rows["popularity"] = popularity(run, plan)
    primary = mappings[spec.primary]
    for name, family in item_models(args.sid_input):
        rows[name], selection[name] = item_baseline(run, plan, name, spec.config(family), primary)
    # collaborative SIDs from the item table of SASRec-CE's best single checkpoint on valid
    mappings.update(collaborative_sids(run, plan, rows["sasrec_ce"] / "checkpoints" /
                                       selection["sasrec_ce"]["best_single"], args.sids))
    for method in args.sids:
        rows[f"sid-gr ({method})"], selection[f"sidgr_{method}"] = sid_gr(run, plan, method, mappings[method])

    swept = spec.primary if spec.primary in args.sids else args.sids[0]
    beam = beam_vs_exact(run, plan, Path(selection[f"sidgr_{swept}"]["engine"]), swept)
    tables = {}
    for split in plan.test_splits():
        tables[split] = plan.out if split == "test" else plan.out / split
        table_runs = sum((["--run", f"{n}={d / split}"] for n, d in rows.items()), [])
        run("table" if split == "test" else f"table_{split}",
            sidgr("report", "table", *table_runs, "--paired-baseline", "sasrec_ce", "--out", tables[split]))
    # where each model wins: test users by their target's popularity in the training data
    run("segments", sidgr("report", "segments", *sum((["--run", f"{n}={d / 'test'}"] for n, d in rows.items()), []),
                          "--paired-baseline", "sasrec_ce", "--targets", plan.data / "test.parquet",
                          "--train", plan.data / "train.parquet", "--out", plan.out))
    if spec.published:
        (plan.out / "published.md").write_text(published_table(spec, tables[spec.published_split]))
    logs = {n: d / "metrics.jsonl" for n, d in rows.items()}
    curves = {n: log for n, log in logs.items() if log.exists()}
    run("plot_curves", sidgr("report", "curves", *sum((["--run", f"{n}={f}"] for n, f in curves.items()), []),
                             "--out", plan.out))
    run.bar.close()

    summary = {"dataset": spec.name, "note": spec.note, "quick": plan.quick, "sid_gr_rows": args.sids,
               "sid_input": args.sid_input,
               "wall_seconds": time.perf_counter() - t_start, "selection": selection, "beam_vs_exact": beam,
               "stage_seconds": run.timings, "commands": run.commands}
    (plan.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for split, where in tables.items():
        if split != "test":
            print(f"the same models, test histories cut to the published protocol's window ({split}):")
        print((where / "comparison.md").read_text() if (where / "comparison.md").exists() else "")
    if spec.published:
        print((plan.out / "published.md").read_text())
    if spec.note:
        print(f"note ({spec.name}): {spec.note}")
    print(f"beam top-10 == exact top-10 (test users, SIDs {beam['tokenizer']}): "
          + ", ".join(f"W={w}: {v:.3f} ({beam['ms_per_user'][w]:.1f} ms/user)"
                      for w, v in beam["top10_equal_to_exact"].items()))
    print(f"demo finished in {summary['wall_seconds'] / 60:.1f} min; outputs in {plan.out}")
    return 0
