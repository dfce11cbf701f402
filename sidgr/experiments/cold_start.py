"""The cold-start split: the newest items leave the training data and come back as a catalog extension.

Items whose first interaction (over all users) is latest form the cold set (`cold_fraction` of the catalog; or a
seeded random sample where timestamps are not times). Item ids
are renumbered so warm items are 0..W-1 and cold items W..N-1 (each group in its old id order), because a SID
mapping grows by appending. Training and validation data lose every interaction with a cold item (a validation row
whose target is cold is dropped); test rows keep their full histories and targets, so the users whose test target
is cold are exactly the ones a recommender must reach with an item it never saw in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sidgr.data.sequences import write_table_atomic


@dataclass
class ColdSplit:
    num_items: int
    num_warm: int
    new_id: np.ndarray  # [N] old item id -> new item id
    first_time: np.ndarray  # [N] first interaction timestamp per old item id

    @property
    def num_cold(self) -> int:
        return self.num_items - self.num_warm


def choose_cold(sequences: pa.Table, num_items: int, cold_fraction: float, by: str = "newest",
                seed: int = 0) -> ColdSplit:
    """by='newest': the items first interacted with last; 'random': a seeded sample of items (data whose
    timestamps are not times, e.g. Beauty's list positions)."""
    if by not in ("newest", "random"):
        raise ValueError(f"by={by!r}: expected 'newest' or 'random'")
    items = pc.list_flatten(sequences["item_ids"]).to_numpy()
    times = pc.list_flatten(sequences["timestamps"]).to_numpy()
    first = np.full(num_items, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, items, times)
    num_cold = max(1, int(round(cold_fraction * num_items)))
    if by == "newest":
        chosen = np.lexsort((np.arange(num_items), first))[-num_cold:]  # by first time, ties by id
    else:
        chosen = np.random.default_rng(seed).choice(num_items, num_cold, replace=False)
    cold = np.zeros(num_items, bool)
    cold[chosen] = True
    new_id = np.empty(num_items, np.int64)
    new_id[np.flatnonzero(~cold)] = np.arange(num_items - num_cold)
    new_id[np.flatnonzero(cold)] = np.arange(num_items - num_cold, num_items)
    return ColdSplit(num_items, num_items - num_cold, new_id, first)


def renumber(table: pa.Table, split: ColdSplit, drop_cold: bool, keep_cold_targets: bool = False) -> pa.Table:
    """Item ids renumbered; with drop_cold, cold items leave the histories, rows left without history go and
    (unless keep_cold_targets) so do rows with a cold target."""
    histories, times = table["item_ids"].to_pylist(), table["timestamps"].to_pylist()
    cols = {"user_id": table["user_id"].to_pylist(), "item_ids": [], "timestamps": []}
    has_target = "target" in table.column_names
    targets = table["target"].to_pylist() if has_target else None
    keep_rows = []
    for row, (items, ts) in enumerate(zip(histories, times)):
        new = split.new_id[np.asarray(items, np.int64)]
        keep = new < split.num_warm if drop_cold else np.ones(len(new), bool)
        if has_target and drop_cold and not keep_cold_targets and split.new_id[targets[row]] >= split.num_warm:
            continue
        if drop_cold and not keep.any():
            continue  # no history left to learn from or query with
        keep_rows.append(row)
        cols["item_ids"].append(new[keep].tolist())
        cols["timestamps"].append(np.asarray(ts, np.int64)[keep].tolist())
    out = {"user_id": pa.array([cols["user_id"][r] for r in keep_rows], pa.int64()),
           "item_ids": pa.array(cols["item_ids"], pa.list_(pa.int64())),
           "timestamps": pa.array(cols["timestamps"], pa.list_(pa.int64()))}
    if has_target:
        out["target"] = pa.array([int(split.new_id[targets[r]]) for r in keep_rows], pa.int64())
    return pa.table(out)


def sample_warm_targets(test: pa.Table, num_warm: int, users: int, seed: int) -> pa.Table:
    """Every row whose target is cold and a seeded sample of `users` of the others (0: all), in file order."""
    keep = test["target"].to_numpy() >= num_warm
    warm = np.flatnonzero(~keep)
    if not users or len(warm) <= users:
        return test
    keep[np.random.default_rng(seed).choice(warm, users, replace=False)] = True
    return test.filter(pa.array(keep))


def write_cold_start_data(data: Path, out: Path, cold_fraction: float, by: str = "newest", seed: int = 0,
                          warm_test_users: int = 0) -> ColdSplit:
    """DATA (a prepared dataset) -> OUT: items (all, renumbered), items_warm / items_cold, train / valid without
    cold items, test (full histories; every cold-target user and `warm_test_users` of the others, 0 = all),
    test_cold / test_warm (rows whose target is / is not cold), test_warm_catalog (test with cold items out of the
    histories), split.json."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    sequences = pq.read_table(data / "sequences.parquet")
    items = pq.read_table(data / "items.parquet")
    split = choose_cold(sequences, items.num_rows, cold_fraction, by, seed)
    new_ids = split.new_id[items["item_id"].to_numpy()]
    items = items.set_column(items.schema.get_field_index("item_id"), "item_id", pa.array(new_ids, pa.int64()))
    items = items.take(np.argsort(new_ids))
    write_table_atomic(out / "items.parquet", items)
    write_table_atomic(out / "items_warm.parquet", items.slice(0, split.num_warm))
    write_table_atomic(out / "items_cold.parquet", items.slice(split.num_warm))
    for name in ("train", "valid"):
        write_table_atomic(out / f"{name}.parquet", renumber(pq.read_table(data / f"{name}.parquet"), split, True))
    test_rows = pq.read_table(data / "test.parquet")
    test = sample_warm_targets(renumber(test_rows, split, False), split.num_warm, warm_test_users, seed)
    write_table_atomic(out / "test.parquet", test)
    # what a catalog without the new items can take: the same users and targets, cold items out of the histories
    warm_catalog = renumber(test_rows, split, True, keep_cold_targets=True)
    warm_catalog = warm_catalog.filter(pc.is_in(warm_catalog["user_id"], value_set=test["user_id"]))
    write_table_atomic(out / "test_warm_catalog.parquet", warm_catalog)
    cold_target = pc.greater_equal(test["target"], split.num_warm)
    write_table_atomic(out / "test_cold.parquet", test.filter(cold_target))
    write_table_atomic(out / "test_warm.parquet", test.filter(pc.invert(cold_target)))
    (out / "split.json").write_text(json.dumps({
        "cold_fraction": cold_fraction, "cold_by": by, "seed": seed, "warm_test_users": warm_test_users,
        "num_items": split.num_items, "num_warm": split.num_warm,
        "num_cold": split.num_cold, "test_users": test.num_rows,
        "test_users_with_cold_target": int(pc.sum(cold_target).as_py()),
        "cold_first_interaction_from": int(split.first_time[split.new_id >= split.num_warm].min()),
    }, indent=2) + "\n")
    return split
