"""`sidgr prepare interactions`: your own CSV / TSV / RecBole / parquet file (+ an items file with text) -> the same
dataset contract as the benchmarks; one-line errors naming the file and field; and the whole flow on it."""
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidgr.cli import main

CSV = """user,sku,ts,rating
alice,A7,30,5
bob,B2,10,4
alice,B2,10,3
alice,C9,20,1
bob,A7,20,2
bob,C9,20,5
carol,A7,5,4
alice,D4,30,2
bob,D4,40,1
"""


def prepare(tmp_path, source, *extra):
    return main(["prepare", "interactions", "--source", str(source), "--out", str(tmp_path / "out"), *extra])


def rows(path):
    return pq.read_table(path).to_pylist()


def test_csv_ids_in_first_appearance_order_history_by_time_ties_in_file_order(tmp_path):
    (tmp_path / "events.csv").write_text(CSV)
    assert prepare(tmp_path, tmp_path / "events.csv", "--user-col", "user", "--item-col", "sku",
                   "--time-col", "ts") == 0
    out = tmp_path / "out"
    assert [(r["user_id"], r["raw_id"]) for r in rows(out / "users.parquet")] == [(0, "alice"), (1, "bob"),
                                                                                  (2, "carol")]
    items = rows(out / "items.parquet")
    assert [r["raw_id"] for r in items] == ["A7", "B2", "C9", "D4"] and all(r["text"] == "" for r in items)
    seqs = {r["user_id"]: (r["item_ids"], r["timestamps"]) for r in rows(out / "sequences.parquet")}
    # alice: B2@10, C9@20, A7@30, D4@30 (the tie at 30 keeps the file order: A7 before D4)
    assert seqs[0] == ([1, 2, 0, 3], [10, 20, 30, 30])
    assert seqs[1] == ([1, 0, 2, 3], [10, 20, 20, 40])  # A7 and C9 tie at 20: file order
    test = {r["user_id"]: (r["item_ids"], r["target"]) for r in rows(out / "test.parquet")}
    assert test == {0: ([1, 2, 0], 3), 1: ([1, 0, 2], 3)}  # carol (1 item) is too short for the split
    stats = json.loads((out / "stats.json").read_text())
    assert stats["users"] == 3 and stats["items"] == 4 and stats["interactions"] == 9
    assert stats["timestamp_ties"] == 4 and stats["items_without_text"] == 4


def test_recbole_atomic_file_and_items_text(tmp_path):
    (tmp_path / "d.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                      "1\t10\t3.7\n1\t11\t1.2\n2\t10\t5.0\n1\t12\t2.9\n2\t12\t1.0\n2\t11\t9.9\n")
    pq.write_table(pa.table({"item_id": [12, 10, 99], "title": ["Blue pen", None, "Unsold"],
                             "brand": ["Acme", "Zed", "Q"]}), tmp_path / "items.parquet")
    assert prepare(tmp_path, tmp_path / "d.inter", "--items", str(tmp_path / "items.parquet"),
                   "--text-cols", "title,brand") == 0
    out = tmp_path / "out"
    items = {r["raw_id"]: (r["title"], r["text"]) for r in rows(out / "items.parquet")}
    assert items == {"10": ("Zed", "Zed"), "11": (None, ""), "12": ("Blue pen", "Blue pen. Acme")}
    seqs = {r["user_id"]: r["item_ids"] for r in rows(out / "sequences.parquet")}
    raw = [r["raw_id"] for r in rows(out / "items.parquet")]
    assert [raw[i] for i in seqs[0]] == ["11", "12", "10"]  # floats floored: 1, 2, 3
    stats = json.loads((out / "stats.json").read_text())
    assert stats["items_without_text"] == 1 and stats["items_file_items_without_interactions"] == 1


def test_parquet_with_iso_times_and_no_time_column(tmp_path):
    pq.write_table(pa.table({"user_id": [5, 5, 6, 6, 5], "item_id": ["x", "y", "x", "z", "z"],
                             "when": ["2024-01-03", "2024-01-01", "2024-02-01", "2024-01-01T10:00:00",
                                      "2024-01-02"]}), tmp_path / "e.parquet")
    assert prepare(tmp_path, tmp_path / "e.parquet", "--time-col", "when") == 0
    seqs = {r["user_id"]: r["item_ids"] for r in rows(tmp_path / "out" / "sequences.parquet")}
    assert seqs == {0: [1, 2, 0], 1: [2, 0]}  # y(01-01) z(01-02) x(01-03); z(01-01) x(02-01)
    (tmp_path / "out2").mkdir()
    assert main(["prepare", "interactions", "--source", str(tmp_path / "e.parquet"), "--time-col", "none",
                 "--out", str(tmp_path / "out2" / "d")]) == 0
    seqs = {r["user_id"]: r["item_ids"] for r in rows(tmp_path / "out2" / "d" / "sequences.parquet")}
    assert seqs == {0: [0, 1, 2], 1: [0, 2]}  # file order


@pytest.mark.parametrize("content, extra, message", [
    (CSV, ["--user-col", "customer"], "--user-col='customer': no such column (columns: user, sku, ts, rating)"),
    ("user_id,item_id,timestamp\n1,2,3\n,4,5\n", [], "row 2 user_id=None: missing value"),
    ("user_id,item_id,timestamp\n1,2,3\n1,4,yesterday\n", [], "timestamp='yesterday': not a time"),
    ("user_id,item_id,timestamp\n", [], "rows=0: no interactions"),
    ("user_id,item_id\n1,2\n", [], "--time-col='timestamp': no such column"),
])
def test_bad_input_is_one_line_naming_file_and_field(tmp_path, capsys, content, extra, message):
    (tmp_path / "e.csv").write_text(content)
    assert prepare(tmp_path, tmp_path / "e.csv", *extra) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "e.csv" in err[0] and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_unknown_format_and_missing_text_column(tmp_path, capsys):
    (tmp_path / "e.json").write_text("{}")
    assert prepare(tmp_path, tmp_path / "e.json") == 1
    assert "expected .csv, .tsv, .inter, .item or .parquet" in capsys.readouterr().err
    (tmp_path / "e.csv").write_text("user_id,item_id,timestamp\n1,2,3\n")
    (tmp_path / "i.csv").write_text("item_id,name\n2,pen\n")
    assert prepare(tmp_path, tmp_path / "e.csv", "--items", str(tmp_path / "i.csv"), "--text-cols", "title") == 1
    assert "--text-cols='title': no such column (columns: item_id, name)" in capsys.readouterr().err


@pytest.mark.slow
def test_own_data_through_the_whole_flow(tmp_path):
    """prepare interactions -> tokenize -> train (tiny, torchrun) -> export -> retrieve -> evaluate."""
    rng = np.random.default_rng(0)
    n_items, n_users = 60, 80
    lines = ["customer,product,day"]
    for u in range(n_users):
        start = rng.integers(n_items)
        for t in range(int(rng.integers(4, 12))):
            lines.append(f"u{u},p{(start + t * 7) % n_items},{t}")
    (tmp_path / "events.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "catalog.csv").write_text("product,name\n" + "".join(f"p{i},product {i % 9}\n" for i in range(n_items)))
    data, run = tmp_path / "data", tmp_path / "run"
    py = [sys.executable, "-m", "sidgr.cli"]

    def sidgr(*args):
        proc = subprocess.run([*py, *map(str, args)], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]

    sidgr("prepare", "interactions", "--source", tmp_path / "events.csv", "--user-col", "customer",
          "--item-col", "product", "--time-col", "day", "--items", tmp_path / "catalog.csv", "--text-cols", "name",
          "--out", data)
    emb = rng.normal(size=(n_items, 16)).astype(np.float32)
    np.save(tmp_path / "emb.npy", emb)
    sidgr("tokenize", "--items", data / "items.parquet", "--embeddings", tmp_path / "emb.npy", "--method",
          "rqkmeans", "--codebook-sizes", "4,4", "--out", data / "sids")
    sidgr("train", "--nproc", "1", "--config", "configs/tiny_ci.gin", f"TrainerConfig.run_dir='{run}'",
          "TrainerConfig.train_steps=4", "TrainerConfig.save_interval=4", "TrainerConfig.eval_interval=4",
          f"DataConfig.train_path='{data / 'train.parquet'}'", f"DataConfig.valid_path='{data / 'valid.parquet'}'",
          f"DataConfig.mapping_path='{data / 'sids' / 'sids.json'}'")
    sidgr("export", "--checkpoint", run / "checkpoints" / "iter_0000004", "--out", run / "engine")
    sidgr("retrieve", "--engine", run / "engine", "--sequences", data / "test.parquet", "--out", run / "c.parquet",
          "--k", "5", "--beam-width", "8")
    sidgr("evaluate", "--candidates", run / "c.parquet", "--targets", data / "test.parquet", "--items",
          data / "items.parquet", "--out", run / "eval")
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["users"]["evaluated"] == pq.read_metadata(data / "test.parquet").num_rows == n_users
    assert metrics["users"]["with_empty_list"] == 0
    assert metrics["candidates"]["num_invalid"] == 0 and metrics["candidates"]["num_in_history"] == 0
