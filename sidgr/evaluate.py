"""Join ranked candidates with held-out targets on user_id, compute item-level metrics, write JSON + markdown.

Protocol: full-catalog ranking (every item 0..N-1 may be ranked; nothing is sampled). The target users define the
evaluated population: a target user without a candidates row gets all-zero metrics and is counted; a candidates row
for a user absent from the targets is an input error. With `exclude_history`, the evaluator verifies that no
candidate is in its user's history (the targets parquet's `item_ids`) and refuses the run otherwise.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sidgr import metrics as M
from sidgr.data.readers import Candidates, read_candidates, read_num_items, read_targets
from sidgr.data.sequences import SequenceBatch
from sidgr.errors import input_error
from sidgr.io import atomic_path, write_json

JSON_NAME, MARKDOWN_NAME, PER_USER_NAME = "metrics.json", "metrics.md", "per_user.parquet"

CONVENTIONS = {
    "ranking": "full catalog: every item id 0..N-1 can be ranked, no sampled negatives; metrics on item ids",
    "rank": "an entry's rank is its 1-based position in the user's list, as given (scores are not re-sorted)",
    "duplicates": "an item repeated in one list counts once, at its first occurrence; copies keep their slots",
    "invalid": "ids outside 0..N-1 count toward invalid_rate, never as hits, and keep their slots",
    "short_lists": "a list shorter than K is not padded",
    "missing_users": "target users without a candidates row get all-zero metrics and stay in the averages",
    "recall": "hits in top K / number of distinct targets of the user",
    "ndcg": "binary-gain DCG@K / ideal DCG@K",
    "mrr": "1 / rank of the first hit anywhere in the list, 0 without a hit",
    "coverage": "distinct valid items over all users' top-K lists / N (catalog-level, no CI)",
}


def align_to_targets(candidates: Candidates, target_users: np.ndarray, source) -> tuple[M.Ragged, int]:
    """Candidate lists in target-user order (empty for users without a row), and how many users lacked a row."""
    order = np.argsort(candidates.user_ids, kind="stable")
    sorted_ids = candidates.user_ids[order]
    unknown = ~np.isin(sorted_ids, target_users)
    if unknown.any():
        raise input_error(source, "user_id", int(sorted_ids[unknown][0]),
                          f"not in the targets ({int(unknown.sum())} candidate user(s) have no target)")
    rows = np.full(len(target_users), -1, dtype=np.int64)
    if len(sorted_ids):
        slot = np.minimum(np.searchsorted(sorted_ids, target_users), len(sorted_ids) - 1)
        found = sorted_ids[slot] == target_users
        rows[found] = order[slot[found]]
    return candidates.items.take(rows), int((rows < 0).sum())


def history_overlap(candidates: M.Ragged, history: M.Ragged, num_items: int) -> tuple[int, int]:
    """Number of valid candidate entries found in the same user's history, and the first offending entry index."""
    rows, items = candidates.row_ids(), candidates.values
    valid = (items >= 0) & (items < num_items)
    hist_items = history.values
    keep = (hist_items >= 0) & (hist_items < num_items)
    hist_keys = np.unique(history.row_ids()[keep] * np.int64(num_items) + hist_items[keep])
    inside = valid & M.sorted_member(rows * np.int64(num_items) + np.where(valid, items, 0), hist_keys)
    first = int(np.flatnonzero(inside)[0]) if inside.any() else -1
    return int(inside.sum()), first


@dataclass(frozen=True)
class Scored:
    """Per-user metrics of candidate lists aligned to the target users, and what was checked on the way."""

    per_user: dict[str, np.ndarray]  # metric -> [U]
    marked: M.Marked
    lists: M.Ragged  # candidates in target-user order
    num_missing: int  # target users without a candidates row
    num_in_history: int | None  # candidates found in their user's history (None: no history column)


def score_candidates(candidates: Candidates, targets: SequenceBatch, num_items: int, ks=M.DEFAULT_KS,
                     exclude_history: bool = False, source="candidates", history_known: bool = True,
                     targets_source="targets") -> Scored:
    """The one scoring path: align lists to the target users, verify history exclusion, compute metrics.
    Used by `sidgr evaluate` and by validation during training, so the two can never disagree."""
    if exclude_history and not history_known:
        raise input_error(targets_source, "item_ids", None, "verifying history exclusion needs the targets' "
                          "item_ids column (or evaluate with --include-history)")
    lists, num_missing = align_to_targets(candidates, targets.user_ids, source)
    in_history, first = history_overlap(lists, targets.items, num_items) if history_known else (None, -1)
    if exclude_history and in_history:
        user = int(targets.user_ids[lists.row_ids()[first]])
        raise input_error(source, "item_ids", int(lists.values[first]),
                          f"is in the history of user {user}, but history items must be excluded "
                          f"(--include-history allows them; {in_history} such candidates)")
    marked = M.mark_candidates(lists, targets.targets, num_items)
    return Scored(M.per_user_metrics(marked, ks), marked, lists, num_missing, in_history)


def history_check(exclude_history: bool, num_in_history: int | None) -> str:
    if exclude_history:
        return "verified: no candidate is in its user's history"
    if num_in_history is None:
        return "not checked: the targets have no history column"
    return f"not required; {num_in_history} candidates were in their user's history"


def evaluate(candidates_path, targets_path, items, exclude_history: bool = False, ks=M.DEFAULT_KS,
             bootstrap: int = 1000, seed: int = 0) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    """Returns (report dict, per-user metric arrays, evaluated user ids)."""
    ks = tuple(sorted(set(int(k) for k in ks)))
    if not ks or ks[0] <= 0:
        raise input_error("--ks", "ks", ks, "cutoffs must be positive integers")
    num_items = read_num_items(items)
    cands = read_candidates(candidates_path)
    targets, history_known = read_targets(targets_path, num_items)
    if targets.num_users == 0:
        raise input_error(targets_path, "user_id", 0, "no target users to evaluate")
    scored = score_candidates(cands, targets, num_items, ks, exclude_history, candidates_path, history_known,
                              targets_path)
    lists, marked = scored.lists, scored.marked
    report = {
        "protocol": {
            "ranking": "full-catalog",
            "history_excluded": bool(exclude_history),
            "history_check": history_check(exclude_history, scored.num_in_history),
            "conventions": CONVENTIONS,
        },
        "inputs": {"candidates": str(candidates_path), "targets": str(targets_path), "num_items": num_items},
        "ks": list(ks),
        "users": {
            "evaluated": int(targets.num_users),
            "without_candidates": scored.num_missing,
            "with_empty_list": int((np.diff(lists.offsets) == 0).sum()),
            "targets_per_user_max": int(marked.num_targets.max()),
            "targets_total": int(marked.num_targets.sum()),
        },
        "candidates": {**M.list_quality(marked), "num_in_history": scored.num_in_history,
                       "list_length_max": int(np.diff(lists.offsets).max())},
        "bootstrap": {"samples": int(bootstrap), "seed": int(seed), "level": 0.95, "method": "percentile",
                      "unit": "users, resampled with replacement"},
        "metrics": M.bootstrap_ci(scored.per_user, bootstrap, seed),
        "coverage": M.coverage_at(marked, num_items, ks),
    }
    return report, scored.per_user, targets.user_ids


def _fmt(stat: dict) -> str:
    if "ci_low" in stat:
        return f"{stat['mean']:.4f} [{stat['ci_low']:.4f}, {stat['ci_high']:.4f}]"
    return f"{stat['mean']:.4f}"


def markdown_report(report: dict) -> str:
    ks, m, p = report["ks"], report["metrics"], report["protocol"]
    users, cands = report["users"], report["candidates"]
    lines = [
        "# Evaluation",
        "",
        f"- protocol: {p['ranking']} ranking over N = {report['inputs']['num_items']} items; "
        f"history items excluded: **{'yes' if p['history_excluded'] else 'no'}** ({p['history_check']})",
        f"- users evaluated: {users['evaluated']} ({users['without_candidates']} without a candidates row, "
        f"scored as zero); targets: {users['targets_total']} (at most {users['targets_per_user_max']} per user)",
        f"- candidates: {cands['num_candidates']}; invalid: {cands['num_invalid']} "
        f"(rate {cands['invalid_rate']:.4g}); repeated within a list: {cands['num_duplicates']} (counted once)",
        f"- 95% CIs: percentile bootstrap over users, {report['bootstrap']['samples']} samples, "
        f"seed {report['bootstrap']['seed']}",
        "",
        "| metric | " + " | ".join(f"@{k}" for k in ks) + " |",
        "|---|" + "---|" * len(ks),
    ]
    for name, label in (("recall", "Recall"), ("ndcg", "NDCG"), ("hit_rate", "HitRate")):
        lines.append(f"| {label} | " + " | ".join(_fmt(m[f"{name}@{k}"]) for k in ks) + " |")
    lines.append("| Coverage | " + " | ".join(f"{report['coverage'][f'coverage@{k}']:.4f}" for k in ks) + " |")
    lines += ["", f"MRR: {_fmt(m['mrr'])}", ""]
    return "\n".join(lines)


def write_outputs(out_dir, report: dict, per_user: dict[str, np.ndarray], user_ids: np.ndarray) -> dict[str, Path]:
    """metrics.json, metrics.md and per_user.parquet in `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    paths = {"json": out_dir / JSON_NAME, "markdown": out_dir / MARKDOWN_NAME, "per_user": out_dir / PER_USER_NAME}
    table = pa.table({"user_id": pa.array(user_ids, pa.int64()), **{k: pa.array(v) for k, v in per_user.items()}})
    with atomic_path(paths["per_user"]) as tmp:
        pq.write_table(table, tmp)
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(markdown_report(report))
    write_json(paths["json"], report)
    return paths
