"""Cold-start benchmark: new items are recommended without retraining (SID-GR through `tokenize --extend`).

    python scripts/bench_cold_start.py --data artifacts/ml100k --out runs/cold_start
    python scripts/bench_cold_start.py --dataset beauty --data artifacts/beauty --out runs/cold_start_beauty

`--cold-fraction` of the catalog leaves the training data (`sidgr.experiments.cold_start`): the newest items (by
first interaction), or a seeded random sample where timestamps are not times (Beauty's are list positions). SID-GR
trains on the warm catalog's text SIDs, its history items as the sum of their code embeddings ('rqsum') and with
the dense item-level score, so every item's score comes from its codes; the cold items then get SIDs from the saved
tokenizer (`sidgr tokenize --extend`) and the same weights serve the grown catalog (`sidgr export --mapping`).
SID-input (rqsum input, output tied to the input vectors: no per-item parameter) scores the grown catalog the
same way (`sidgr score-items --mapping`). SASRec-CE trains with the whole catalog's id table (cold rows never see
a gradient) and popularity counts the training data: neither has a way to reach a new item. SID-GR retrieves
twice on the grown catalog: new items scored by the model like any item, and with `--new-items backoff` (each new
item also ranked as the average item of its beam prefix). Every model retrieves 50 items for every test user
(history excluded); Recall@10/50 on the users whose test target is a cold item, on the others, and on all, with
95% CIs and paired differences, and the share of retrieved slots that go to cold items. SID-GR without the
extension (the warm catalog only) is the control for the warm users. Writes OUT/cold_start.md and .json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from sidgr.experiments.cold_start import write_cold_start_data
from sidgr.experiments.datasets import DATASETS
from sidgr.experiments.pipeline import Plan, Runner, sidgr, train_overrides
from sidgr.report import load_report, paired_difference

K = 50
SUBSETS = ("cold", "warm", "all")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="ml100k", help="picks the configs and tokenizer")
    p.add_argument("--data", required=True, help="a prepared dataset (sidgr prepare / scripts/demo.py --data)")
    p.add_argument("--out", required=True)
    p.add_argument("--cold-fraction", type=float, default=0.075)
    p.add_argument("--cold-by", choices=["newest", "random"], default=None,
                   help="which items go cold (default: newest where timestamps are times, else random)")
    p.add_argument("--seed", type=int, default=0, help="the random cold sample's and the warm test sample's seed")
    p.add_argument("--warm-test-users", type=int, default=0,
                   help="test users whose target is warm to score (a seeded sample; 0 = all); every cold-target "
                        "user is always scored")
    p.add_argument("--steps", type=int, default=None, help="training steps of every model (default: each config's)")
    p.add_argument("--beam-width", type=int, default=256)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--bootstrap", type=int, default=1000)
    return p.parse_args(argv)


def users_of(path: Path, cands: Path, out: Path) -> Path:
    """The candidate rows of the users in `path` (evaluate scores exactly the target file's users)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from sidgr.data.sequences import write_table_atomic

    users = pq.read_table(path, columns=["user_id"])["user_id"]
    table = pq.read_table(cands)
    write_table_atomic(out, table.filter(pc.is_in(table["user_id"], value_set=pa.array(users))))
    return out


def evaluate_subsets(run: Runner, name: str, cands: Path, data: Path, out: Path, bootstrap: int) -> None:
    for subset in SUBSETS:
        targets = data / ("test.parquet" if subset == "all" else f"test_{subset}.parquet")
        rows = cands if subset == "all" else users_of(targets, cands,
                                                      cands.with_name(f"{cands.stem}_{subset}.parquet"))
        run(f"eval_{name}_{subset}", sidgr("evaluate", "--candidates", rows, "--targets", targets, "--items",
                                           data / "items.parquet", "--out", out / name / subset,
                                           "--bootstrap", bootstrap, "--ks", "10,50"))


def cold_share(cands: Path, num_warm: int) -> dict:
    lists = pq.read_table(cands, columns=["item_ids"])["item_ids"].to_pylist()
    return {f"cold_share@{k}": float(np.mean([np.mean(np.asarray(x[:k]) >= num_warm) for x in lists if x]))
            for k in (10, 50)}


def main(argv=None) -> int:
    args = parse_args(argv)
    out, src = Path(args.out), Path(args.data)
    data = out / "data"
    t0 = time.perf_counter()
    spec = DATASETS[args.dataset]
    cold_by = args.cold_by or ("newest" if spec.timed else "random")
    split = write_cold_start_data(src, data, args.cold_fraction, cold_by, args.seed, args.warm_test_users)
    plan = Plan(out=out, data=data, quick=False, nproc=args.nproc, steps=args.steps,
                eval_interval=max(args.steps // 4, 1) if args.steps else None, beam_width=args.beam_width,
                dataset=spec)
    run = Runner(plan, 2 + 6 + 2 + 2 + 2 + 6 * len(SUBSETS))
    warm_sids, grown_sids = data / "sids_warm", data / "sids_grown"
    run("tokenize_warm", sidgr("tokenize", "--items", data / "items_warm.parquet", *spec.text_sids[spec.primary],
                               "--out", warm_sids, "--no-progress"))
    run("tokenize_extend", sidgr("tokenize", "--extend", warm_sids, "--items", data / "items_cold.parquet",
                                 "--out", grown_sids, "--no-progress"))
    # SID-GR on the warm catalog, checkpoint selected on valid (warm targets only), served on both catalogs
    gr = out / "sidgr"
    # history items as the sum of their code embeddings ('rqsum'): a grown catalog cannot be served by item-id or
    # prefix tables sized for the warm items, but every new item's ITEM vector (and so its dense score) comes
    # from its codes
    run("train_sidgr", sidgr("train", "--nproc", args.nproc, "--config", spec.config(),
                             *train_overrides(plan, gr, warm_sids / "sids.json", plan.valid_path()),
                             "TrainerConfig.select_best=True", f"TrainerConfig.select_beam_width={args.beam_width}",
                             'ModelConfig.history="rqsum"', "ModelConfig.dense_weight=1.0"))
    cands = {}
    for name, mapping in (("sidgr_extended", grown_sids / "sids.json"), ("sidgr_warm_only", None)):
        engine = out / name / "engine"
        run(f"export_{name}", sidgr("export", "--checkpoint", gr, "--out", engine,
                                    *(["--mapping", mapping] if mapping else [])))
        cands[name] = out / name / "test_candidates.parquet"
        queries = data / ("test.parquet" if mapping else "test_warm_catalog.parquet")  # its catalog lacks them
        run(f"retrieve_{name}", sidgr("retrieve", "--engine", engine, "--sequences", queries,
                                      "--out", cands[name], "--k", K, "--beam-width", args.beam_width))
        if mapping:  # the same engine, new items also ranked as the average item of their beam prefix
            cands["sidgr_extended_backoff"] = out / name / "test_candidates_backoff.parquet"
            run("retrieve_sidgr_extended_backoff", sidgr(
                "retrieve", "--engine", engine, "--sequences", queries, "--out", cands["sidgr_extended_backoff"],
                "--k", K, "--beam-width", args.beam_width, "--new-items", "backoff"))
    # SASRec-CE: the grown catalog's id table (same item ids); cold rows are never trained
    sas = out / "sasrec_ce"
    run("train_sasrec_ce", sidgr("train", "--nproc", "1", "--config", spec.config("sasrec"),
                                 *train_overrides(plan, sas, grown_sids / "sids.json"),
                                 "TrainerConfig.select_best=True"))
    cands["sasrec_ce"] = sas / "test_candidates.parquet"
    run("score_sasrec_ce", sidgr("score-items", "--checkpoint", sas, "--sequences", data / "test.parquet",
                                 "--out", cands["sasrec_ce"], "--k", K))
    # SID-input with no per-item parameter: code-sum input, output tied to it; scores the grown catalog
    sid_input = out / "sid_input"
    run("train_sid_input", sidgr("train", "--nproc", "1", "--config", spec.config("sidinput"),
                                 *train_overrides(plan, sid_input, warm_sids / "sids.json"),
                                 "TrainerConfig.select_best=True", 'ModelConfig.item_input="rqsum"',
                                 'ModelConfig.item_head="tied"'))
    cands["sid_input"] = sid_input / "test_candidates.parquet"
    run("score_sid_input", sidgr("score-items", "--checkpoint", sid_input, "--sequences", data / "test.parquet",
                                 "--mapping", grown_sids / "sids.json", "--out", cands["sid_input"], "--k", K))
    cands["popularity"] = out / "popularity" / "test_candidates.parquet"
    run("popularity", sidgr("baseline", "popularity", "--train", data / "train.parquet", "--sequences",
                            data / "test.parquet", "--items", data / "items.parquet", "--out", cands["popularity"],
                            "--k", K))
    evals = out / "eval"
    for name, path in cands.items():
        evaluate_subsets(run, name, path, data, evals, args.bootstrap)
    run.bar.close()
    result = summarize(out, evals, cands, split.num_warm, args, time.perf_counter() - t0)
    print((out / "cold_start.md").read_text())
    return 0 if result else 1


def summarize(out: Path, evals: Path, cands: dict, num_warm: int, args, wall: float) -> dict:
    split = json.loads((out / "data" / "split.json").read_text())
    extend = json.loads((out / "data" / "sids_grown" / "extend.json").read_text())
    rows = {}
    for name in cands:
        rows[name] = {s: load_report(evals / name / s)["metrics"] for s in SUBSETS}
        rows[name].update(cold_share(cands[name], num_warm))
    paired = {}
    for subset in SUBSETS:
        for metric in ("recall@10", "recall@50"):
            for base in ("sasrec_ce", "sid_input", "popularity", "sidgr_warm_only"):
                if subset == "cold" and base == "sidgr_warm_only":
                    continue
                d = paired_difference(evals / "sidgr_extended_backoff" / subset, evals / base / subset, metric,
                                      args.bootstrap)
                paired[f"{subset}/{metric}/sidgr_extended_backoff-{base}"] = d
    result = {"split": split, "extend": extend, "rows": rows, "paired": paired, "wall_s": round(wall, 1),
              "command": " ".join(["python", "scripts/bench_cold_start.py", *sys.argv[1:]])}
    (out / "cold_start.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "cold_start.md").write_text(markdown(result))
    return result


def cell(stat: dict) -> str:
    return f"{stat['mean']:.4f} [{stat['ci_low']:.4f}, {stat['ci_high']:.4f}]" if "ci_low" in stat else \
        f"{stat['mean']:.4f}"


def markdown(r: dict) -> str:
    s = r["split"]
    which = "newest" if s.get("cold_by", "newest") == "newest" else f"randomly chosen (seed {s['seed']})"
    lines = [f"# Cold start: {s['num_cold']} {which} items of {s['num_items']} held out of training "
             f"({s['test_users_with_cold_target']} of {s['test_users']} test users have a cold target"
             + (f"; the others are a seeded sample of {s['warm_test_users']}" if s.get("warm_test_users") else "")
             + ")", "",
             "| model | cold users R@10 | cold users R@50 | warm users R@10 | warm users R@50 | all R@10 | "
             "all R@50 | cold share of top-10 | of top-50 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in r["rows"].items():
        cells = [cell(row[sub][m]) for sub in SUBSETS for m in ("recall@10", "recall@50")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['cold_share@10']:.4f} | "
                     f"{row['cold_share@50']:.4f} |")
    lines += ["", "Paired differences (SID-GR extended with back-off scoring of new items minus baseline, 95% "
                  "bootstrap CI over the same users):", "",
              "| subset / metric / pair | mean | 95% CI |", "|---|---|---|"]
    for key, d in r["paired"].items():
        lines.append(f"| {key} | {d['mean']:+.4f} | [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] |")
    e = r["extend"]
    lines += ["", f"Extension: {e['new_items']} items added to {e['old_items']}; "
                  f"{e['new_sharing_a_semantic_sid']:.1%} share a semantic SID with a warm item. "
                  f"Wall {r['wall_s'] / 60:.1f} min. `{r['command']}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
