"""Item-level ranking metrics, vectorized over users, with bootstrap confidence intervals.

Inputs are ragged lists in CSR form (`values` flat, `offsets[u]:offsets[u+1]` is user u's slice), so a million
users with long candidate lists never need a padded matrix. Conventions (stated in every report):

- Metrics are on item ids. An id outside `0..N-1` is invalid: it counts toward the invalid rate and never as a hit.
- A user's list is taken as given: the entry at list position j has rank j+1. An item repeated in one list scores
  only at its first occurrence; later copies (and invalid ids) still occupy their slots. A list shorter than K is not
  padded.
- Targets are a set per user (duplicates removed); Recall@K = hits in top K / |targets|, HitRate@K = any hit in top K,
  NDCG@K = DCG@K / ideal DCG@K with binary gains, MRR = 1 / rank of the first hit anywhere in the list (0 if none).
- Coverage@K = distinct valid items over all users' top-K lists / N (a catalog-level number, no per-user value).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sidgr.data.ragged import Ragged

DEFAULT_KS = (1, 5, 10, 20, 50)


@dataclass(frozen=True)
class Marked:
    """Candidate entries annotated once, shared by every metric."""

    rows: np.ndarray  # [E] user index of each entry
    pos: np.ndarray  # [E] 0-based rank position
    items: np.ndarray  # [E] item id as given
    valid: np.ndarray  # [E] id in 0..N-1
    duplicate: np.ndarray  # [E] valid id already seen earlier in the same list
    hit: np.ndarray  # [E] valid, first occurrence, and in the user's target set
    num_targets: np.ndarray  # [U] distinct valid targets per user


def _pair_keys(rows: np.ndarray, items: np.ndarray, num_items: int) -> np.ndarray:
    return rows * np.int64(num_items) + items


def first_occurrence(rows: np.ndarray, items: np.ndarray, num_items: int, mask: np.ndarray) -> np.ndarray:
    """True where (row, item) appears for the first time among the entries selected by `mask`."""
    idx = np.flatnonzero(mask)
    _, first = np.unique(_pair_keys(rows[idx], items[idx], num_items), return_index=True)
    out = np.zeros(len(items), dtype=bool)
    out[idx[first]] = True
    return out


def unique_targets(targets: Ragged, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (row, item) keys of the targets, and the number of distinct targets per row."""
    rows = targets.row_ids()
    if len(targets.values) and (targets.values.min() < 0 or targets.values.max() >= num_items):
        bad = targets.values[(targets.values < 0) | (targets.values >= num_items)][0]
        raise ValueError(f"target item id {int(bad)} is outside 0..{num_items - 1}")
    keys = np.unique(_pair_keys(rows, targets.values, num_items))
    counts = np.bincount(keys // np.int64(num_items), minlength=targets.num_rows)
    return keys, counts


def sorted_member(queries: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """np.isin for a sorted key array, by binary search (no sort of the much larger query array)."""
    if len(sorted_keys) == 0:
        return np.zeros(np.shape(queries), dtype=bool)
    slot = np.minimum(np.searchsorted(sorted_keys, queries), len(sorted_keys) - 1)
    return sorted_keys[slot] == queries


def mark_candidates(candidates: Ragged, targets: Ragged, num_items: int) -> Marked:
    """Annotate every candidate entry with validity, duplication and hit flags (rows of both inputs align)."""
    if candidates.num_rows != targets.num_rows:
        raise ValueError(f"{candidates.num_rows} candidate rows but {targets.num_rows} target rows")
    rows, pos, items = candidates.row_ids(), candidates.positions(), candidates.values
    valid = (items >= 0) & (items < num_items)
    first = first_occurrence(rows, items, num_items, valid)
    target_keys, num_targets = unique_targets(targets, num_items)
    in_targets = sorted_member(_pair_keys(rows, np.where(valid, items, 0), num_items), target_keys)
    return Marked(rows, pos, items, valid, valid & ~first, first & in_targets & valid, num_targets)


def _ideal_dcg(num_targets: np.ndarray, k: int) -> np.ndarray:
    discounts = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    return discounts[np.minimum(num_targets, k)]


def per_user_metrics(marked: Marked, ks=DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-user Recall@K, NDCG@K, HitRate@K for every K, and MRR; each an array of shape [U]."""
    num_users = len(marked.num_targets)
    denom = np.maximum(marked.num_targets, 1).astype(np.float64)
    hit_rows, hit_pos = marked.rows[marked.hit], marked.pos[marked.hit]
    gains = 1.0 / np.log2(hit_pos + 2.0)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        top = hit_pos < k
        hits = np.bincount(hit_rows[top], minlength=num_users).astype(np.float64)
        dcg = np.bincount(hit_rows[top], weights=gains[top], minlength=num_users)
        ideal = _ideal_dcg(marked.num_targets, k)
        out[f"recall@{k}"] = hits / denom
        out[f"ndcg@{k}"] = np.divide(dcg, ideal, out=np.zeros(num_users), where=ideal > 0)
        out[f"hit_rate@{k}"] = (hits > 0).astype(np.float64)
    mrr = np.zeros(num_users)
    first_rows, first_idx = np.unique(hit_rows, return_index=True)  # hits are in (row, pos) order
    mrr[first_rows] = 1.0 / (hit_pos[first_idx] + 1.0)
    out["mrr"] = mrr
    return out


def coverage_at(marked: Marked, num_items: int, ks=DEFAULT_KS) -> dict[str, float]:
    out = {}
    for k in ks:
        seen = np.zeros(num_items, dtype=bool)
        seen[marked.items[marked.valid & (marked.pos < k)]] = True
        out[f"coverage@{k}"] = float(seen.sum()) / num_items
    return out


def list_quality(marked: Marked) -> dict[str, float | int]:
    """Counts of invalid and repeated entries over all lists (the whole list, not only the top K)."""
    total = len(marked.items)
    invalid = int((~marked.valid).sum())
    return {
        "num_candidates": total,
        "num_invalid": invalid,
        "invalid_rate": invalid / total if total else 0.0,
        "num_duplicates": int(marked.duplicate.sum()),
        "duplicate_rate": float(marked.duplicate.sum()) / total if total else 0.0,
    }


def bootstrap_means(values: np.ndarray, num_samples: int, seed: int, max_cells: int = 1 << 24) -> np.ndarray:
    """Means of `values` [U, M] over `num_samples` resamples of the users with replacement -> [num_samples, M].

    Each resample is one row of a [B, U] index matrix drawn from one generator; rows are drawn in chunks only to
    bound memory, so the result depends on (seed, B, U) alone.
    """
    num_users = values.shape[0]
    if num_users == 0:
        raise ValueError("cannot bootstrap over zero users")
    rng = np.random.default_rng(seed)
    chunk = max(1, min(num_samples, max_cells // num_users))
    means = np.empty((num_samples, values.shape[1]))
    for start in range(0, num_samples, chunk):
        b = min(chunk, num_samples - start)
        idx = rng.integers(0, num_users, size=(b, num_users))
        flat = (idx + np.arange(b, dtype=np.int64)[:, None] * num_users).ravel()
        weights = np.bincount(flat, minlength=b * num_users).reshape(b, num_users).astype(np.float64)
        means[start:start + b] = weights @ values / num_users
    return means


def bootstrap_ci(per_user: dict[str, np.ndarray], num_samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> dict[str, dict[str, float]]:
    """Mean and percentile confidence interval of every per-user metric, users resampled jointly."""
    names = list(per_user)
    values = np.stack([per_user[n] for n in names], axis=1)
    means = values.mean(axis=0)
    out = {n: {"mean": float(means[i])} for i, n in enumerate(names)}
    if num_samples <= 0:
        return out
    samples = bootstrap_means(values, num_samples, seed)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail], axis=0)
    for i, n in enumerate(names):
        out[n].update(ci_low=float(lo[i]), ci_high=float(hi[i]))
    return out
