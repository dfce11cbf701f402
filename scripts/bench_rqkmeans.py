"""Benchmark the SID quantizers at scale and the ml-100k tokenize end to end.

  python scripts/bench_rqkmeans.py                      # 1M x 64-d, 3 x 256, plus ml-100k end to end
  python scripts/bench_rqkmeans.py --n 100000 --skip-ml100k

Synthetic items are clustered (a mixture of Gaussians) so k-means has structure to find. Timings include
assigning every item (faiss trains on a sample of K * max_points_per_centroid points per level).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_embeddings(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    x = centers[rng.integers(0, clusters, n)]
    x += 0.3 * rng.standard_normal((n, dim), dtype=np.float32)
    return x


def timed(label: str, fn):
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    print(f"{label}: {dt:.1f} s", flush=True)
    return out, dt


def bench_quantizers(args) -> None:
    from sidgr.tokenize.balanced import BalancedConfig, balanced_rq_kmeans
    from sidgr.tokenize.dedup import collision_stats
    from sidgr.tokenize.rqkmeans import RQKMeansConfig, rq_kmeans

    sizes = [args.codebook_size] * args.levels
    x, _ = timed(f"generate {args.n:,} x {args.dim} clustered items", lambda: synthetic_embeddings(
        args.n, args.dim, 4096, args.seed))
    for name, fn in [
        ("rq-kmeans", lambda: rq_kmeans(x, RQKMeansConfig(codebook_sizes=sizes, seed=args.seed), progress=False)),
        ("balanced rq-kmeans", lambda: balanced_rq_kmeans(x, BalancedConfig(codebook_sizes=sizes, seed=args.seed),
                                                          progress=False)),
    ]:
        q, _ = timed(f"{name} {args.levels}x{args.codebook_size} over {args.n:,} items", fn)
        stats = collision_stats(q.codes)
        counts = [np.bincount(c, minlength=k) for c, k in zip(q.codes, sizes)]
        print(f"  unique SIDs {stats['unique_sids']:,}, largest bucket {stats['largest_bucket']}, "
              f"items per code min/max per level {[(int(c.min()), int(c.max())) for c in counts]}", flush=True)


def bench_ml100k(args) -> None:
    import pyarrow.parquet as pq

    from sidgr.data.ml100k import load
    from sidgr.tokenize.pipeline import TokenizeConfig, tokenize
    from sidgr.tokenize.embed import EmbedConfig

    with tempfile.TemporaryDirectory() as tmp:
        items = Path(tmp) / "items.parquet"
        pq.write_table(load().items, items)
        for label in ("cold cache", "warm cache"):
            cfg = TokenizeConfig(progress=False, embed=EmbedConfig(cache_dir=str(Path(tmp) / "cache")))
            report, _ = timed(f"ml-100k tokenize end to end ({label}: embed + {cfg.method} "
                              f"{cfg.codebook_sizes} + write)", lambda: tokenize(items, Path(tmp) / "out", cfg))
            print(f"  {report['seconds']}, collision rate before dedup "
                  f"{report['before_dedup']['collision_rate']:.4f}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="faiss/torch threads (0: all cores)")
    p.add_argument("--skip-ml100k", action="store_true")
    p.add_argument("--skip-synthetic", action="store_true")
    args = p.parse_args()
    from sidgr.tokenize.kmeans import set_threads

    set_threads(args.threads)
    print(f"cpu cores visible: {os.cpu_count()}, threads: {args.threads or 'all'}, "
          f"load average: {os.getloadavg()}")
    if not args.skip_synthetic:
        bench_quantizers(args)
    if not args.skip_ml100k:
        bench_ml100k(args)


if __name__ == "__main__":
    main()
