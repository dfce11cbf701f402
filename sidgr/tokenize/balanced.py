"""Balanced RQ-KMeans (OneRec): at every level each code gets exactly floor(N/K) or ceil(N/K) items.

Balanced assignment is our own (k-means-constrained solves a min-cost flow with N*K arcs, far too big for
1M x 256, and pulls ortools): items propose to their nearest open centroids in rounds; each code accepts its
closest proposers up to its remaining capacity. Phase 1 fills every code to floor(N/K); phase 2 gives the
N mod K left-over items one extra slot each in distinct codes. Centroids are then recomputed as the means of
their members and the assignment repeated a few times (balanced Lloyd iterations), starting from plain k-means.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import gin
import numpy as np
from sidgr.logs import progress_bar

from sidgr.tokenize.kmeans import as_f32, centroid_means, fit_kmeans, nearest
from sidgr.tokenize.quantized import Quantized
from sidgr.tokenize.rqkmeans import level_seed


@gin.configurable
@dataclass
class BalancedConfig:
    codebook_sizes: list[int] = field(default_factory=lambda: [32, 32, 32])
    seed: int = 0
    niter: int = 20  # plain k-means iterations for the initial centroids
    balanced_iters: int = 3  # balanced assign -> recompute centroids rounds per level
    candidates: int = 16  # nearest open centroids each item may propose to before candidates are recomputed
    max_points_per_centroid: int = 256


def _accept_proposals(items, codes, dist, remaining, assigned):
    """Each code accepts its closest proposers up to remaining[code]. Mutates remaining / assigned."""
    order = np.lexsort((items, dist, codes))  # by code, then distance, ties by item id (deterministic)
    codes_sorted = codes[order]
    starts = np.searchsorted(codes_sorted, codes_sorted, side="left")
    rank = np.arange(len(order)) - starts
    accept = rank < remaining[codes_sorted]
    winners, won = items[order][accept], codes_sorted[accept]
    assigned[winners] = won
    remaining -= np.bincount(won, minlength=len(remaining))


def _fill(x, centroids, items, capacity, candidates):
    """Assign `items` to codes with at most capacity[c] items each; items left over when every code is
    full keep -1."""
    assigned = np.full(x.shape[0], -1, dtype=np.int64)
    remaining = capacity.astype(np.int64).copy()
    pending = items
    while len(pending):
        open_codes = np.flatnonzero(remaining > 0)
        if not len(open_codes):
            break
        m = min(candidates, len(open_codes))
        dist, idx = nearest(x[pending], centroids[open_codes], m)
        cand = open_codes[idx]
        for r in range(m):
            todo = assigned[pending] < 0
            todo &= remaining[cand[:, r]] > 0
            if not todo.any():
                continue
            _accept_proposals(pending[todo], cand[todo, r], dist[todo, r], remaining, assigned)
        pending = pending[assigned[pending] < 0]
    return assigned


def balanced_assign(x: np.ndarray, centroids: np.ndarray, candidates: int = 16) -> np.ndarray:
    """Codes [N] such that every code has floor(N/K) or ceil(N/K) items, preferring near centroids."""
    n, k = x.shape[0], centroids.shape[0]
    base, extra = divmod(n, k)
    codes = np.full(n, -1, dtype=np.int64)
    everyone = np.arange(n)
    if base:
        first = _fill(x, centroids, everyone, np.full(k, base), candidates)
        codes[first >= 0] = first[first >= 0]
    if extra:
        left = everyone[codes < 0]
        second = _fill(x, centroids, left, np.ones(k, dtype=np.int64), candidates)
        codes[left] = second[left]
    assert (codes >= 0).all()
    return codes


def balanced_level(x: np.ndarray, k: int, seed: int, cfg: BalancedConfig) -> tuple[np.ndarray, np.ndarray]:
    centroids = fit_kmeans(x, k, seed, cfg.niter, cfg.max_points_per_centroid)
    codes = balanced_assign(x, centroids, cfg.candidates)
    for _ in range(cfg.balanced_iters):
        centroids = centroid_means(x, codes, k, centroids)
        codes = balanced_assign(x, centroids, cfg.candidates)
    return codes, centroid_means(x, codes, k, centroids)


def balanced_rq_kmeans(x: np.ndarray, cfg: BalancedConfig, progress: bool = True) -> Quantized:
    residual = as_f32(x).copy()
    codes, books = [], []
    for level, k in enumerate(progress_bar(cfg.codebook_sizes, desc="balanced rq-kmeans levels", disable=not progress)):
        level_codes, centroids = balanced_level(residual, k, level_seed(cfg.seed, level), cfg)
        residual -= centroids[level_codes]
        codes.append(level_codes)
        books.append(centroids)
    return Quantized(np.stack(codes), books, None, dict(dataclasses.asdict(cfg), method="balanced"))
