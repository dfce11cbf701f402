"""The cold-start split (sidgr/experiments/cold_start.py): the newest items leave training, ids stay appendable."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sidgr.experiments.cold_start import write_cold_start_data


def write_dataset(d):
    rng = np.random.default_rng(0)
    n_items, users = 20, 30
    seqs, times = [], []
    for u in range(users):
        items = rng.choice(n_items, size=int(rng.integers(4, 9)), replace=False).tolist()
        ts = sorted(rng.integers(0, 1000, len(items)).tolist())
        seqs.append(items)
        times.append(ts)
    d.mkdir()
    pq.write_table(pa.table({"item_id": pa.array(range(n_items), pa.int64()),
                             "text": [f"item {i}" for i in range(n_items)]}), d / "items.parquet")

    def table(cut, target):
        cols = {"user_id": pa.array(range(users), pa.int64()),
                "item_ids": pa.array([s[:len(s) - cut] for s in seqs], pa.list_(pa.int64())),
                "timestamps": pa.array([t[:len(t) - cut] for t in times], pa.list_(pa.int64()))}
        if target:
            cols["target"] = pa.array([s[len(s) - cut] for s in seqs], pa.int64())
        return pa.table(cols)

    pq.write_table(table(0, False), d / "sequences.parquet")
    pq.write_table(table(2, False), d / "train.parquet")
    pq.write_table(table(2, True), d / "valid.parquet")
    pq.write_table(table(1, True), d / "test.parquet")
    return seqs, times


def test_the_newest_items_leave_training_and_come_last_in_the_catalog(tmp_path):
    seqs, times = write_dataset(tmp_path / "data")
    split = write_cold_start_data(tmp_path / "data", tmp_path / "out", 0.25)
    out = tmp_path / "out"
    first = {}
    for s, t in zip(seqs, times):
        for i, ts in zip(s, t):
            first[i] = min(first.get(i, ts), ts)
    cold_old = {i for i in range(20) if split.new_id[i] >= split.num_warm}
    assert len(cold_old) == 5
    assert min(first[i] for i in cold_old) >= max(first[i] for i in set(first) - cold_old)  # newest first seen
    items = pq.read_table(out / "items.parquet")
    assert items["item_id"].to_pylist() == list(range(20))
    assert [items["text"][int(split.new_id[i])].as_py() for i in range(20)] == [f"item {i}" for i in range(20)]
    for name in ("train", "valid"):
        t = pq.read_table(out / f"{name}.parquet")
        assert all(i < split.num_warm for row in t["item_ids"].to_pylist() for i in row)
        if "target" in t.column_names:
            assert all(x < split.num_warm for x in t["target"].to_pylist())
    test = pq.read_table(out / "test.parquet")
    assert test.num_rows == 30  # every test user, full histories
    assert [len(r) for r in test["item_ids"].to_pylist()] == [len(s) - 1 for s in seqs]
    cold = pq.read_table(out / "test_cold.parquet")
    assert all(x >= split.num_warm for x in cold["target"].to_pylist())
    assert cold.num_rows + pq.read_table(out / "test_warm.parquet").num_rows == 30
    warm_catalog = pq.read_table(out / "test_warm_catalog.parquet")
    assert warm_catalog["target"].to_pylist() == test["target"].to_pylist()
    assert all(i < split.num_warm for row in warm_catalog["item_ids"].to_pylist() for i in row)
    assert json.loads((out / "split.json").read_text())["test_users_with_cold_target"] == cold.num_rows


def test_a_random_cold_sample_is_seeded_and_leaves_training_the_same_way(tmp_path):
    """Where timestamps are not times (Beauty's list positions), a seeded sample of items goes cold."""
    write_dataset(tmp_path / "data")
    a = write_cold_start_data(tmp_path / "data", tmp_path / "a", 0.25, "random", seed=7)
    b = write_cold_start_data(tmp_path / "data", tmp_path / "b", 0.25, "random", seed=7)
    c = write_cold_start_data(tmp_path / "data", tmp_path / "c", 0.25, "random", seed=8)
    assert a.num_cold == 5 and np.array_equal(a.new_id, b.new_id) and not np.array_equal(a.new_id, c.new_id)
    assert sorted(a.new_id.tolist()) == list(range(20))
    for name in ("train", "valid", "test_warm_catalog"):
        rows = pq.read_table(tmp_path / "a" / f"{name}.parquet")["item_ids"].to_pylist()
        assert all(row and all(i < a.num_warm for i in row) for row in rows)  # no empty history left behind
    assert json.loads((tmp_path / "a" / "split.json").read_text())["cold_by"] == "random"


def test_rows_left_without_history_leave_train_and_valid():
    """A user whose whole history is cold items has nothing to learn from or condition on once they are dropped."""
    from sidgr.experiments.cold_start import choose_cold, renumber

    seqs = pa.table({"user_id": pa.array([0, 1], pa.int64()),
                     "item_ids": pa.array([[0, 1, 2], [3, 0]], pa.list_(pa.int64())),
                     "timestamps": pa.array([[1, 2, 3], [100, 101]], pa.list_(pa.int64()))})
    split = choose_cold(seqs, 4, 0.25)  # item 3 is first seen last
    assert split.new_id[3] == 3 and split.num_warm == 3
    valid = seqs.append_column("target", pa.array([2, 0], pa.int64()))
    valid = valid.set_column(1, "item_ids", pa.array([[0, 1], [3]], pa.list_(pa.int64())))
    valid = valid.set_column(2, "timestamps", pa.array([[1, 2], [100]], pa.list_(pa.int64())))
    assert renumber(valid, split, drop_cold=True)["user_id"].to_pylist() == [0]
    assert renumber(valid, split, drop_cold=False)["user_id"].to_pylist() == [0, 1]


def test_a_warm_test_sample_keeps_every_cold_target_user(tmp_path):
    write_dataset(tmp_path / "data")
    full = write_cold_start_data(tmp_path / "data", tmp_path / "full", 0.25)
    write_cold_start_data(tmp_path / "data", tmp_path / "part", 0.25, warm_test_users=5, seed=1)
    cold = pq.read_table(tmp_path / "full" / "test_cold.parquet")
    part = pq.read_table(tmp_path / "part" / "test.parquet")
    assert pq.read_table(tmp_path / "part" / "test_cold.parquet").equals(cold)
    assert part.num_rows == cold.num_rows + 5 and pq.read_table(tmp_path / "part" / "test_warm.parquet").num_rows == 5
    users = part["user_id"].to_pylist()
    assert users == sorted(users)  # file order kept
    assert pq.read_table(tmp_path / "part" / "test_warm_catalog.parquet")["user_id"].to_pylist() == \
        [u for u in users if u in set(pq.read_table(tmp_path / "full" / "test_warm_catalog.parquet")["user_id"].to_pylist())]
    assert full.num_warm == 15
