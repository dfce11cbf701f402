"""The experiment pipeline's stages: prepare -> tokenize -> train -> select on valid -> export -> retrieve ->
evaluate, each an ordinary `sidgr` command run as a subprocess and logged, so any number can be reproduced by hand.

Model selection uses the validation target only; the test target is evaluated once per model, with the selected
checkpoint. Used by the demo (`sidgr.experiments.demo`) and by validation-only tuning (`scripts/tune.py`).
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from sidgr.logs import progress_bar
from sidgr.process import die_with_parent

from sidgr.experiments.datasets import DATASETS, DatasetSpec

PY = sys.executable


@dataclass
class Plan:
    out: Path
    data: Path  # prepared dataset files and SID mappings
    quick: bool
    nproc: int
    steps: int | None  # None: each config's own TrainerConfig.train_steps and eval_interval
    eval_interval: int | None
    beam_width: int
    k: int = 50
    bootstrap: int = 1000
    beam_sweep: tuple = (16, 64, 256, 1024)
    dataset: DatasetSpec = field(default_factory=lambda: DATASETS["ml100k"])

    def select_beam_width(self) -> int:
        """The beam SID-GR checkpoints (and their average) are scored with on the validation users."""
        return min(self.beam_width, self.dataset.select_beam_width or self.beam_width)

    def valid_path(self) -> Path:
        """The validation users SID-GR checkpoints are scored on (a seeded sample on big datasets)."""
        return split_sample(self.data, "valid", self.dataset.valid_users)

    def sweep_path(self) -> Path:
        """The test users of the beam-vs-exact sweep (a seeded sample on big datasets)."""
        return split_sample(self.data, "test", self.dataset.sweep_users)

    def test_splits(self) -> list[str]:
        """Each model's test reads: the whole histories ("test"), and the published protocol's cut histories where
        it reads fewer (ML-1M: "test_last200")."""
        return list(dict.fromkeys(["test", self.dataset.published_split]))

    def test_sequences(self, split: str) -> Path:
        if split == "test":
            return self.data / "test.parquet"
        return last_items(self.data, "test", self.dataset.published_history)


class Runner:
    """Runs one command per stage, logs it, and stops the demo with the log's tail when a stage fails."""

    def __init__(self, plan: Plan, total: int):
        self.logs = plan.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.bar = progress_bar(total=total, desc="demo", unit="stage", dynamic_ncols=True)
        self.timings: dict[str, float] = {}
        self.commands: list[str] = []

    def __call__(self, name: str, cmd: list[str], env: dict | None = None) -> str:
        self.bar.set_postfix_str(name)
        log = self.logs / f"{name}.log"
        line = " ".join(shlex.quote(c) for c in cmd)
        self.commands.append(line)
        t0 = time.perf_counter()
        with open(log, "w") as fh:
            fh.write(f"$ {line}\n")
            fh.flush()
            # a stage dies with the demo: a killed demo (a test's timeout, ^C on a hung stage) leaves nothing running
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                  preexec_fn=die_with_parent)
        self.timings[name] = time.perf_counter() - t0
        if proc.returncode:
            tail = "\n".join(log.read_text().splitlines()[-25:])
            self.bar.close()
            raise SystemExit(f"demo: stage {name!r} failed (exit {proc.returncode}); log {log}:\n{tail}")
        self.bar.update(1)
        return log.read_text()


def sidgr(*args) -> list[str]:
    return [PY, "-m", "sidgr.cli", *map(str, args)]


# ---- stages --------------------------------------------------------------------------------------------------
def train_overrides(plan: Plan, run_dir: Path, mapping: Path, valid: Path | None = None) -> list[str]:
    """Paths, and a checkpoint at every validation (all kept) so selection can pick any of them."""
    valid = valid or plan.data / "valid.parquet"
    out = [f"TrainerConfig.run_dir='{run_dir}'", "TrainerConfig.progress=False", "TrainerConfig.keep_last=1000",
           f"DataConfig.train_path='{plan.data / 'train.parquet'}'",
           f"DataConfig.valid_path='{valid}'", f"DataConfig.mapping_path='{mapping}'"]
    if plan.steps is not None:
        out += [f"TrainerConfig.train_steps={plan.steps}", f"TrainerConfig.eval_interval={plan.eval_interval}",
                f"TrainerConfig.save_interval={plan.eval_interval}",
                f"TrainerConfig.log_interval={max(plan.steps // 40, 1)}"]
    return out


def split_sample(data: Path, split: str, users: int, seed: int = 0) -> Path:
    """SPLIT.parquet, or a seeded sample of `users` of its rows (written once, beside it)."""
    import numpy as np
    import pyarrow.parquet as pq

    from sidgr.data.sequences import write_table_atomic

    full = data / f"{split}.parquet"
    if not users or pq.read_metadata(full).num_rows <= users:
        return full
    out = data / f"{split}_sample{users}_seed{seed}.parquet"
    if not out.exists():
        table = pq.read_table(full)
        rows = np.sort(np.random.default_rng(seed).choice(table.num_rows, users, replace=False))
        write_table_atomic(out, table.take(rows))
    return out


def last_items(data: Path, split: str, n: int) -> Path:
    """SPLIT.parquet with every history cut to its last `n` items (targets unchanged), written once beside it: a
    protocol that reads, and removes from the ranking, only the model's `n`-item input window."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sidgr.data.sequences import write_table_atomic

    out = data / f"{split}_last{n}.parquet"
    if not out.exists():
        table = pq.read_table(data / f"{split}.parquet")
        for column in ("item_ids", "timestamps"):
            cut = [x[-n:] for x in table[column].to_pylist()]
            table = table.set_column(table.schema.get_field_index(column), column,
                                     pa.array(cut, type=table.schema.field(column).type))
        write_table_atomic(out, table)
    return out


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("iter_[0-9]*"))


def evaluate(run: Runner, plan: Plan, name: str, cands: Path, split: str | Path, out: Path, bootstrap: int,
             ks: tuple = ()) -> Path:
    """`sidgr evaluate` of `cands` against a split's targets (or a targets file); `ks`: the cutoffs, if not the
    default ones."""
    targets = split if isinstance(split, Path) else plan.data / f"{split}.parquet"
    extra = ["--ks", ",".join(map(str, ks))] if ks else []
    run(name, sidgr("evaluate", "--candidates", cands, "--targets", targets, "--items", plan.data / "items.parquet",
                    "--out", out, "--bootstrap", bootstrap, "--seed", 0, *extra))
    return out


def train_and_score_on_valid(run: Runner, plan: Plan, name: str, mapping: Path, bindings=(),
                             config: str | None = None) -> dict:
    """Train SID-GR (`config`, default the dataset's, + bindings) into OUT/name with the trainer's checkpoint
    selection (`TrainerConfig.select_best`: every evaluation saves a checkpoint and scores it through the engine,
    beam `plan.select_beam_width()`, on the validation users); the valid Recall@10 the trainer logged per
    checkpoint."""
    run_dir = plan.out / name
    run(f"train_{name}", sidgr("train", "--nproc", plan.nproc, "--config", config or plan.dataset.config(),
                               *train_overrides(plan, run_dir, mapping, plan.valid_path()),
                               "TrainerConfig.select_best=True",
                               f"TrainerConfig.select_beam_width={plan.select_beam_width()}", *bindings))
    return logged_valid_recall(run_dir)


def logged_valid_recall(run_dir: Path) -> dict:
    """{checkpoint name: valid Recall@10} from the trainer's metrics.jsonl, for the checkpoints still kept."""
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    kept = {c.name for c in checkpoints(run_dir)}
    return {f"iter_{r['step']:07d}": r["valid_recall@10"] for r in records
            if "valid_recall@10" in r and f"iter_{r['step']:07d}" in kept}


def sid_gr(run: Runner, plan: Plan, method: str, mapping: Path) -> tuple[Path, dict]:
    """Train SID-GR on one tokenizer's SIDs, pick the checkpoint with the best valid Recall@10, test it once."""
    run_dir = plan.out / f"sidgr_{method}"
    scores = train_and_score_on_valid(run, plan, f"sidgr_{method}", mapping)
    averaged = checkpoints(run_dir)
    best = select_with_average(scores, averaged, partial(engine_average_on_valid, run, plan, run_dir))
    engine = run_dir / "selection" / "engines" / best
    read_test(run, plan, f"sidgr_{method}", "retrieve", lambda seqs, out: sidgr(
        "retrieve", "--engine", engine, "--sequences", seqs, "--out", out, "--k", plan.k,
        "--beam-width", plan.beam_width))
    return run_dir, {"valid_recall@10_by_checkpoint": scores, "selected": best, "engine": str(engine),
                     "average_of": [c.name for c in averaged] if AVERAGE in scores else []}


AVERAGE = "average"  # the selection candidate whose weights are the mean of every kept checkpoint's


def select_with_average(scores: dict, ckpts: list[Path], score_average) -> str:
    """The best of `scores` (valid Recall@10 by checkpoint) and, with more than one checkpoint kept, of their
    averaged weights (`score_average(ckpts)`, added to `scores`). Ties: the earliest checkpoint, as the trainer's
    best.json, and a single checkpoint over the average."""
    if len(ckpts) > 1:
        scores[AVERAGE] = score_average(ckpts)
    return max(scores, key=scores.get)


def engine_average_on_valid(run: Runner, plan: Plan, run_dir: Path, ckpts: list[Path]) -> float:
    """SID-GR: one engine averaging `ckpts`, scored by the trainer's own commands for a checkpoint (the same
    validation users, beam and cutoff)."""
    from sidgr.training.engine_scoring import valid_scoring_commands

    selection = run_dir / "selection"
    report = selection / AVERAGE
    export, retrieve, evaluate_valid = valid_scoring_commands(
        ckpts, selection / "engines" / AVERAGE, selection / f"{AVERAGE}.parquet", report, plan.valid_path(),
        plan.data / "items.parquet", plan.select_beam_width())
    for stage, command in (("export", export), ("valid", retrieve), ("eval_valid", evaluate_valid)):
        run(f"{stage}_{AVERAGE}_{run_dir.name}", sidgr(*command))
    return json.loads((report / "metrics.json").read_text())["metrics"]["recall@10"]["mean"]


def item_average_on_valid(run: Runner, plan: Plan, run_dir: Path, ckpts: list[Path]) -> float:
    """An item model with `ckpts`' averaged weights on every valid user, as its trainer scores each checkpoint
    (`sidgr score-items` + `sidgr evaluate` equal the trainer's number: tested)."""
    valid, report = plan.data / "valid.parquet", run_dir / f"valid_{AVERAGE}"
    cands = run_dir / f"valid_{AVERAGE}.parquet"
    run(f"valid_{AVERAGE}_{run_dir.name}", sidgr("score-items", "--checkpoint", *ckpts, "--sequences", valid,
                                                 "--out", cands, "--k", 10))
    evaluate(run, plan, f"eval_valid_{AVERAGE}_{run_dir.name}", cands, valid, report, 0, (10,))
    return json.loads((report / "metrics.json").read_text())["metrics"]["recall@10"]["mean"]


def item_valid_scores(run: Runner, plan: Plan, name: str, config: str, mapping: Path, bindings=()) -> dict:
    """Train an item-level baseline (`config` + bindings) into OUT/name; the valid Recall@10 its trainer logged
    for every kept checkpoint (validation target only)."""
    run_dir = plan.out / name
    run(f"train_{name}", sidgr("train", "--nproc", plan.nproc, "--config", config,
                               *train_overrides(plan, run_dir, mapping), *bindings))
    return logged_valid_recall(run_dir)


def item_baseline(run: Runner, plan: Plan, name: str, config: str, mapping: Path) -> tuple[Path, dict]:
    """Train an item-level baseline; its trainer logs valid Recall@10 each interval, which picks the checkpoint."""
    run_dir = plan.out / name
    scores = item_valid_scores(run, plan, name, config, mapping)
    single = max(scores, key=scores.get)  # ties: the earliest checkpoint, as the trainer's best.json
    averaged = checkpoints(run_dir)
    best = select_with_average(scores, averaged, partial(item_average_on_valid, run, plan, run_dir))
    chosen = averaged if best == AVERAGE else [run_dir / "checkpoints" / best]
    read_test(run, plan, name, "score", lambda seqs, out: sidgr(
        "score-items", "--checkpoint", *chosen, "--sequences", seqs, "--out", out, "--k", plan.k))
    return run_dir, {"valid_recall@10_by_checkpoint": scores, "selected": best, "best_single": single,
                     "average_of": [c.name for c in averaged] if AVERAGE in scores else []}


def popularity(run: Runner, plan: Plan) -> Path:
    return read_test(run, plan, "popularity", "baseline", lambda seqs, out: sidgr(
        "baseline", "popularity", "--train", plan.data / "train.parquet", "--sequences", seqs,
        "--items", plan.data / "items.parquet", "--out", out, "--k", plan.k))


def read_test(run: Runner, plan: Plan, name: str, verb: str, candidates) -> Path:
    """A selected model's test reads, once per protocol (`Plan.test_splits`): `candidates(sequences, out)` is the
    command writing OUT/name/SPLIT_candidates.parquet, evaluated into OUT/name/SPLIT."""
    run_dir = plan.out / name
    for split in plan.test_splits():
        sequences = plan.test_sequences(split)
        cands = run_dir / f"{split}_candidates.parquet"
        run(f"{verb}_{split}_{name}", candidates(sequences, cands))
        evaluate(run, plan, f"eval_{split}_{name}", cands, sequences, run_dir / split, plan.bootstrap)
    return run_dir


SWEEP_KS = (10, 50, 100, 500, 1000)  # the candidate-generation regime: recall of long lists


def beam_vs_exact(run: Runner, plan: Plan, engine: Path, method: str) -> dict:
    """Recall@10…1000 and latency vs beam width on test (each width returns as many items as its beam holds),
    the exact ranking, and how often beam top-10 == exact top-10."""
    import pyarrow.parquet as pq

    sweep = plan.out / "beam_sweep"
    users = plan.sweep_path()
    widths = [w for w in plan.beam_sweep if w >= plan.k]
    exact = sweep / "exact.parquet"
    run("retrieve_test_exact", sidgr("retrieve", "--engine", engine, "--sequences", users,
                                     "--out", exact, "--k", max(widths, default=plan.k), "--exact"))
    evaluate(run, plan, "eval_test_exact", exact, users, sweep / "eval_exact", plan.bootstrap, SWEEP_KS)
    exact_table = pq.read_table(exact).to_pydict()
    top_exact = {u: items[:10] for u, items in zip(exact_table["user_id"], exact_table["item_ids"])}
    agreement, latency = {}, {}
    for width in widths:
        cands = sweep / f"beam_{width}.parquet"
        run(f"retrieve_test_w{width}", sidgr("retrieve", "--engine", engine, "--sequences", users,
                                             "--out", cands, "--k", width, "--beam-width", width))
        evaluate(run, plan, f"eval_test_w{width}", cands, users, sweep / f"eval_w{width}", plan.bootstrap, SWEEP_KS)
        table = pq.read_table(cands).to_pydict()
        same = [top_exact[u] == items[:10] for u, items in zip(table["user_id"], table["item_ids"])]
        agreement[width] = sum(same) / len(same)
        latency[width] = 1000 * run.timings[f"retrieve_test_w{width}"] / len(same)
    run("plot_beam", sidgr("report", "beam", "--exact", sweep / "eval_exact",
                           *sum((["--beam", f"{w}={sweep / f'eval_w{w}'}"] for w in agreement), []),
                           *sum((["--latency", f"{w}={ms:.3f}"] for w, ms in latency.items()), []),
                           "--out", plan.out))
    return {"tokenizer": method, "users": str(users), "top10_equal_to_exact": agreement,
            "ms_per_user": latency}
