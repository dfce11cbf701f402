"""Plain k-means and nearest-centroid assignment on top of faiss (multi-threaded BLAS, sub-sampled training)."""
from __future__ import annotations

import numpy as np

from sidgr.errors import input_error


def as_f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def fit_kmeans(x: np.ndarray, k: int, seed: int, niter: int = 20,
               max_points_per_centroid: int = 256) -> np.ndarray:
    """Centroids [k, D] of `x` [N, D]. Deterministic for a seed (faiss samples and initialises from it)."""
    import faiss

    n, d = x.shape
    if k > n:
        raise input_error("codebook_sizes", "K", k, f"larger than the number of items ({n})")
    km = faiss.Kmeans(d, k, niter=niter, seed=int(seed) % (2**31), verbose=False,
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
    km.train(as_f32(x))
    return np.array(km.centroids, dtype=np.float32).reshape(k, d)


def nearest(x: np.ndarray, centroids: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(squared distances [N, k], indices [N, k]) of the k nearest centroids, exact search."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(as_f32(centroids))
    dist, idx = index.search(as_f32(x), k)
    return dist, idx.astype(np.int64)


def centroid_means(x: np.ndarray, codes: np.ndarray, k: int, fallback: np.ndarray) -> np.ndarray:
    """Mean of the rows assigned to each code; codes with no rows keep their `fallback` centroid."""
    import torch

    sums = torch.zeros(k, x.shape[1]).index_add_(0, torch.from_numpy(codes), torch.from_numpy(as_f32(x))).numpy()
    counts = np.bincount(codes, minlength=k).astype(np.float32)
    out = fallback.copy()
    used = counts > 0
    out[used] = sums[used] / counts[used, None]
    return out


def set_threads(n: int) -> None:
    """Threads for faiss (OpenMP) and torch; 0 keeps the defaults (all cores). On a shared, busy machine one
    thread can be several times faster than spinning OpenMP workers that wait for each other."""
    if n > 0:
        import faiss
        import torch

        faiss.omp_set_num_threads(n)
        torch.set_num_threads(n)
