"""A small synthetic catalog with planted structure for the item-level baselines, and its SID mapping.

Users walk within their favourite item clusters (`sidgr.data.synth`); the SIDs are planted from the clusters:
level 0 = cluster // 4, level 1 = cluster % 4, level 2 = the item's index inside its cluster (unique SIDs).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from sidgr.data.synth import SynthConfig, synthesize
from sidgr.sid.mapping import SIDMapping

SYNTH = SynthConfig(items=240, users=400, dim=8, clusters=12, seed=3, min_len=8, max_len=24, switch_prob=0.1,
                    explore_prob=0.05, popularity_skew=2.0)


def planted_codes(clusters: np.ndarray) -> np.ndarray:
    order = np.lexsort((np.arange(len(clusters)), clusters))
    rank = np.empty(len(clusters), dtype=np.int64)
    starts = np.searchsorted(clusters[order], clusters[order], side="left")
    rank[order] = np.arange(len(clusters)) - starts
    return np.stack([clusters // 4, clusters % 4, rank]).astype(np.int64)


def write_synth(out: str | Path) -> dict:
    out = Path(out)
    synthesize(SYNTH, str(out), progress=False)
    clusters = pq.read_table(out / "items.parquet", columns=["cluster"]).column("cluster").to_numpy()
    codes = planted_codes(clusters)
    sizes = [int(c.max()) + 1 for c in codes]
    sizes[-1] += 4  # free last-level codes, as `sidgr tokenize` keeps for items added later
    SIDMapping(torch.from_numpy(codes), sizes, {"method": "planted"}).save(out / "sids")
    return {"train": str(out / "train.parquet"), "valid": str(out / "valid.parquet"),
            "test": str(out / "test.parquet"), "items": str(out / "items.parquet"), "mapping": str(out / "sids.json")}


if __name__ == "__main__":
    print(write_synth(sys.argv[1]))
