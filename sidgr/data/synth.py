"""Synthetic catalogs for scale tests: clustered item embeddings and users whose sequences follow the clusters.

Items: item i belongs to cluster c_i (a random permutation dealt round-robin, so every cluster holds
floor(N/K) or ceil(N/K) items); its embedding is center[c_i] + spread * N(0, I) in float32.
Users: each user has 1-3 favourite clusters. A sequence is a run of segments: at every step a new segment starts
with probability `switch_prob`; a segment's cluster is one of the user's favourites, or with probability
`explore_prob` any cluster. Within a cluster, popularity is skewed: the item of rank r (a fixed random order)
is drawn with P(rank <= x) = (x / size) ** (1 / popularity_skew).
Everything is vectorized numpy over chunks of items/users (no Python loop per item or per user); a chunk's
random stream is derived from (seed, stream, chunk index), so the output depends only on the arguments
(and the fixed chunk sizes ITEM_CHUNK/USER_CHUNK).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sidgr.logs import progress_bar

from sidgr.data.ragged import Ragged
from sidgr.data.schemas import ITEMS_SCHEMA, USERS_SCHEMA
from sidgr.data.sequences import SequenceBatch, write_dataset
from sidgr.errors import input_error

SYNTH_ITEMS_SCHEMA = ITEMS_SCHEMA.append(pa.field("cluster", pa.int64()))
ITEM_CHUNK = 1 << 18
USER_CHUNK = 1 << 16
BASE_TIMESTAMP = 1_600_000_000
_CENTERS, _EMBED, _USERS = 0, 1, 2  # random streams


@dataclass(frozen=True)
class SynthConfig:
    items: int
    users: int
    dim: int = 64
    clusters: int = 256
    seed: int = 0
    min_len: int = 5
    max_len: int = 50
    switch_prob: float = 0.1
    explore_prob: float = 0.05
    popularity_skew: float = 2.0
    spread: float = 0.25
    max_favourites: int = 3

    def check(self) -> "SynthConfig":
        src = "sidgr synth"
        for name in ("items", "users", "dim", "clusters"):
            if getattr(self, name) < 1:
                raise input_error(src, name, getattr(self, name), "must be >= 1")
        if self.clusters > self.items:
            raise input_error(src, "clusters", self.clusters, f"must be <= items ({self.items})")
        if not 1 <= self.min_len <= self.max_len:
            raise input_error(src, "min_len", self.min_len, f"need 1 <= min_len <= max_len ({self.max_len})")
        for name in ("switch_prob", "explore_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise input_error(src, name, getattr(self, name), "must be a probability in [0, 1]")
        if self.popularity_skew <= 0 or self.spread < 0:
            raise input_error(src, "popularity_skew/spread", (self.popularity_skew, self.spread),
                              "skew must be > 0 and spread >= 0")
        return self


def _rng(cfg: SynthConfig, stream: int, chunk: int = 0) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, stream, chunk])


def item_clusters(cfg: SynthConfig) -> np.ndarray:
    """[N] cluster of each item: balanced sizes, random assignment."""
    return (_rng(cfg, _CENTERS).permutation(cfg.items) % cfg.clusters).astype(np.int64)


def cluster_centers(cfg: SynthConfig) -> np.ndarray:
    rng = _rng(cfg, _CENTERS, 1)
    return rng.standard_normal((cfg.clusters, cfg.dim), dtype=np.float32)


def write_embeddings(cfg: SynthConfig, clusters: np.ndarray, path: Path, progress: bool = True) -> None:
    """[N, D] float32 .npy, written in chunks through a memmap (bounded memory for 1M+ items)."""
    centers = cluster_centers(cfg)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(cfg.items, cfg.dim))
    starts = range(0, cfg.items, ITEM_CHUNK)
    for i, start in enumerate(progress_bar(starts, desc="embeddings", unit="chunk", disable=not progress)):
        c = clusters[start:start + ITEM_CHUNK]
        noise = _rng(cfg, _EMBED, i).standard_normal((c.shape[0], cfg.dim), dtype=np.float32)
        out[start:start + c.shape[0]] = centers[c] + np.float32(cfg.spread) * noise
    out.flush()
    del out


def items_table(cfg: SynthConfig, clusters: np.ndarray) -> pa.Table:
    ids = pa.array(np.arange(cfg.items, dtype=np.int64))
    id_str, cluster_str = pc.cast(ids, pa.string()), pc.cast(pa.array(clusters), pa.string())
    title = pc.binary_join_element_wise("synthetic item ", id_str, "")
    text = pc.binary_join_element_wise(title, " (cluster ", cluster_str, ")", "")
    no_genres = pa.ListArray.from_arrays(pa.array(np.zeros(cfg.items + 1, np.int32)), pa.array([], pa.string()))
    return pa.table({"item_id": ids, "raw_id": id_str, "title": title, "year": pa.nulls(cfg.items, pa.int64()),
                     "genres": no_genres, "text": text, "cluster": pa.array(clusters)}, schema=SYNTH_ITEMS_SCHEMA)


def users_table(cfg: SynthConfig) -> pa.Table:
    ids = pa.array(np.arange(cfg.users, dtype=np.int64))
    return pa.table({"user_id": ids, "raw_id": pc.cast(ids, pa.string())}, schema=USERS_SCHEMA)


class ClusterCatalog:
    """Items grouped by cluster (CSR), each cluster's members in a fixed random popularity order."""

    def __init__(self, cfg: SynthConfig, clusters: np.ndarray):
        order = np.argsort(clusters, kind="stable")
        self.sizes = np.bincount(clusters, minlength=cfg.clusters)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.members = order  # members of cluster c: members[starts[c]:starts[c] + sizes[c]], rank order

    def sample(self, cluster: np.ndarray, u: np.ndarray, skew: float) -> np.ndarray:
        rank = np.minimum((self.sizes[cluster] * u ** skew).astype(np.int64), self.sizes[cluster] - 1)
        return self.members[self.starts[cluster] + rank]


def user_batches(cfg: SynthConfig, catalog: ClusterCatalog, progress: bool = True) -> Iterator[SequenceBatch]:
    starts = range(0, cfg.users, USER_CHUNK)
    for i, start in enumerate(progress_bar(starts, desc="users", unit="chunk", disable=not progress)):
        yield user_chunk(cfg, catalog, start, min(USER_CHUNK, cfg.users - start), _rng(cfg, _USERS, i))


def user_chunk(cfg: SynthConfig, catalog: ClusterCatalog, first_user: int, num: int,
               rng: np.random.Generator) -> SequenceBatch:
    lengths = rng.integers(cfg.min_len, cfg.max_len + 1, num)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    total = int(offsets[-1])
    user_of = np.repeat(np.arange(num), lengths)
    n_fav = rng.integers(1, cfg.max_favourites + 1, num)
    favourites = rng.integers(0, cfg.clusters, (num, cfg.max_favourites))
    # segments: a new one starts at each user's first item and with probability switch_prob afterwards
    new_segment = rng.random(total) < cfg.switch_prob
    new_segment[offsets[:-1]] = True
    seg_user = user_of[new_segment]
    seg_cluster = favourites[seg_user, rng.integers(0, n_fav[seg_user])]
    explore = rng.random(seg_user.shape[0]) < cfg.explore_prob
    seg_cluster[explore] = rng.integers(0, cfg.clusters, int(explore.sum()))
    cluster = seg_cluster[np.cumsum(new_segment) - 1]
    items = catalog.sample(cluster, rng.random(total), cfg.popularity_skew)
    gaps = rng.integers(1, 86_400, total)
    elapsed = np.cumsum(gaps)
    elapsed -= np.repeat(elapsed[offsets[:-1]], lengths)  # each user starts at 0
    start_ts = BASE_TIMESTAMP + rng.integers(0, 10_000_000, num)
    timestamps = start_ts[user_of] + elapsed
    user_ids = np.arange(first_user, first_user + num, dtype=np.int64)
    return SequenceBatch(user_ids, Ragged(items, offsets), timestamps.astype(np.int64))


def synthesize(cfg: SynthConfig, out_dir: str, progress: bool = True) -> dict:
    """Write embeddings.npy, items.parquet (+cluster), users.parquet and the sequence files into out_dir."""
    cfg.check()
    clusters = item_clusters(cfg)
    catalog = ClusterCatalog(cfg, clusters)
    stats = {"dataset": "synthetic", "config": cfg.__dict__.copy(), "dim": cfg.dim, "clusters": cfg.clusters}
    extra = {"embeddings.npy": lambda path: write_embeddings(cfg, clusters, path, progress)}
    return write_dataset(out_dir, items_table(cfg, clusters), users_table(cfg),
                         user_batches(cfg, catalog, progress), stats, extra)
