"""RQ-KMeans: k-means on the embeddings, then on the residuals, level by level."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import gin
import numpy as np
from sidgr.logs import progress_bar

from sidgr.tokenize.kmeans import as_f32, fit_kmeans, nearest
from sidgr.tokenize.quantized import Quantized


@gin.configurable
@dataclass
class RQKMeansConfig:
    codebook_sizes: list[int] = field(default_factory=lambda: [32, 32, 32])
    seed: int = 0
    niter: int = 20
    # faiss trains each level on at most K * this many sampled points, then assigns every point exactly
    max_points_per_centroid: int = 256


def level_seed(seed: int, level: int) -> int:
    return seed * 1000 + level


def rq_kmeans(x: np.ndarray, cfg: RQKMeansConfig, progress: bool = True) -> Quantized:
    residual = as_f32(x).copy()
    codes, books = [], []
    for level, k in enumerate(progress_bar(cfg.codebook_sizes, desc="rq-kmeans levels", disable=not progress)):
        centroids = fit_kmeans(residual, k, level_seed(cfg.seed, level), cfg.niter, cfg.max_points_per_centroid)
        _, idx = nearest(residual, centroids)
        level_codes = idx[:, 0]
        residual -= centroids[level_codes]
        codes.append(level_codes)
        books.append(centroids)
    return Quantized(np.stack(codes).astype(np.int64), books, None,
                     dict(dataclasses.asdict(cfg), method="rqkmeans"))
