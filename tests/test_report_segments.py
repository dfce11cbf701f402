"""`sidgr report segments`: users split by their target's training popularity (or history length) into quantile
segments that never split equal keys, each run's mean per segment, and paired differences to a baseline."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidgr import cli
from sidgr.errors import InputError
from sidgr.segments import quantile_segments, segment_rows

ITEMS = 8


def write(path, **cols):
    pq.write_table(pa.table(cols), path)
    return path


def lists(rows):
    return pa.array(rows, pa.list_(pa.int64()))


def test_quantile_segments_keep_equal_keys_together_and_cover_every_user():
    keys = np.array([0, 0, 0, 0, 0, 1, 2, 3, 9, 9, 9, 9], dtype=float)
    segs = quantile_segments(keys, 4)
    masks = np.stack([s.mask for s in segs])
    assert (masks.sum(0) == 1).all()  # a partition of the users
    for s in segs:  # no key value in two segments
        assert not np.isin(keys[s.mask], keys[~s.mask]).any()
    # ranks 0-4 (middle 2) -> segment 0; 1 at rank 5 -> 1; 2, 3 at ranks 6, 7 -> 2; ranks 8-11 (middle 9.5) -> 3
    assert [(s.low, s.high, int(s.mask.sum())) for s in segs] == [(0, 0, 5), (1, 1, 1), (2, 3, 2), (9, 9, 4)]
    assert [s.label for s in segs] == ["0", "1", "2–3", "9"]
    assert len(quantile_segments(keys, 1)) == 1
    with pytest.raises(InputError, match="--segments"):
        quantile_segments(keys, 0)


def test_segment_rows_means_and_paired_differences():
    keys = np.array([1, 1, 2, 2, 3, 3], dtype=float)
    values = {"base": np.array([1, 0, 1, 1, 0, 0.0]), "new": np.array([1, 1, 0, 1, 1, 1.0])}
    rows = segment_rows(values, "base", quantile_segments(keys, 3), num_samples=200)
    assert [r["users"] for r in rows] == [2, 2, 2]
    assert [r["mean"]["base"] for r in rows] == [0.5, 1.0, 0.0]
    assert [r["mean"]["new"] for r in rows] == [1.0, 0.5, 1.0]
    assert [r["paired"]["new"]["mean"] for r in rows] == [0.5, -0.5, 1.0]
    for r in rows:
        d = r["paired"]["new"]
        assert d["ci_low"] <= d["mean"] <= d["ci_high"]
    assert rows[2]["paired"]["new"]["ci_low"] == rows[2]["paired"]["new"]["ci_high"] == 1.0  # no variance
    assert "base" not in rows[0]["paired"]


@pytest.fixture
def evaluated(tmp_path):
    """Six test users: targets 0 (5 training interactions), 1 (3) and 2 (1), two users each; "head" finds the
    popular targets, "tail" the rare ones; both evaluated by `sidgr evaluate`."""
    train = write(tmp_path / "train.parquet", user_id=pa.array(range(5), pa.int64()),
                  item_ids=lists([[0, 1], [0, 1], [0, 1, 2], [0, 5], [0, 6]]))
    test = write(tmp_path / "test.parquet", user_id=pa.array(range(6), pa.int64()),
                 item_ids=lists([[3], [3, 4], [4], [4, 5, 6], [5], [7, 6, 5, 4]]), target=pa.array([0, 0, 1, 1, 2, 2]))
    found = {"head": {0: [0], 1: [0], 2: [1], 3: [1]}, "tail": {4: [2], 5: [2]}}
    dirs = {}
    for name, hits in found.items():
        cands = write(tmp_path / f"{name}.parquet", user_id=pa.array(range(6), pa.int64()),
                      item_ids=lists([hits.get(u, [7 if u != 5 else 3]) for u in range(6)]),
                      scores=pa.array([[1.0]] * 6, pa.list_(pa.float32())))
        assert cli.main(["evaluate", "--candidates", str(cands), "--targets", str(test), "--items", str(ITEMS),
                         "--out", str(tmp_path / name), "--ks", "1,10", "--bootstrap", "100"]) == 0
        dirs[name] = tmp_path / name
    return tmp_path, train, test, dirs


def segments_cli(tmp_path, train, test, dirs, *extra):
    runs = sum((["--run", f"{n}={d}"] for n, d in dirs.items()), [])
    return cli.main(["report", "segments", *runs, "--paired-baseline", "head", "--targets", str(test),
                     "--train", str(train), "--metrics", "recall@10", "--out", str(tmp_path / "seg"), *extra])


def test_cli_splits_by_target_popularity_and_writes_table_json_and_plot(evaluated):
    tmp_path, train, test, dirs = evaluated
    assert segments_cli(tmp_path, train, test, dirs, "--segments", "3") == 0
    out = json.loads((tmp_path / "seg" / "segments_target-popularity.json").read_text())
    rows = out["metrics"]["recall@10"]
    assert [(r["low"], r["high"], r["users"]) for r in rows] == [(1, 1, 2), (3, 3, 2), (5, 5, 2)]
    assert [(r["mean"]["head"], r["mean"]["tail"]) for r in rows] == [(0, 1), (1, 0), (1, 0)]
    assert [r["paired"]["tail"]["mean"] for r in rows] == [1, -1, -1]
    md = (tmp_path / "seg" / "segments_target-popularity.md").read_text()
    assert "| 1 | 2 | 0.0000 | 1.0000 | +1.0000 [+1.0000, +1.0000] |" in md
    assert (tmp_path / "seg" / "segments_target-popularity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_splits_by_history_length(evaluated):
    tmp_path, train, test, dirs = evaluated
    assert segments_cli(tmp_path, train, test, dirs, "--by", "history-length", "--segments", "2") == 0
    rows = json.loads((tmp_path / "seg" / "segments_history-length.json").read_text())["metrics"]["recall@10"]
    # history lengths 1, 2, 1, 3, 1, 4: the three 1s (ranks 0-2) are the first half
    assert [(r["low"], r["high"], r["users"]) for r in rows] == [(1, 1, 3), (2, 4, 3)]
    assert [r["mean"]["tail"] for r in rows] == [pytest.approx(1 / 3), pytest.approx(1 / 3)]


def test_cli_refuses_other_users_an_unknown_baseline_and_popularity_without_train(evaluated, capsys):
    tmp_path, train, test, dirs = evaluated
    fewer = write(tmp_path / "fewer.parquet", user_id=pa.array(range(5), pa.int64()),
                  item_ids=lists([[3], [3, 4], [4], [4, 5, 6], [5]]), target=pa.array([0, 0, 1, 1, 2]))

    def refused(*argv) -> str:
        capsys.readouterr()
        assert cli.main(["report", "segments", *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        return err

    common = ["--train", str(train), "--out", str(tmp_path / "x")]
    assert "user_id" in refused("--run", f"head={dirs['head']}", "--paired-baseline", "head",
                                "--targets", str(fewer), *common)
    assert "--paired-baseline" in refused("--run", f"tail={dirs['tail']}", "--paired-baseline", "head",
                                          "--targets", str(test), *common)
    assert "--train" in refused("--run", f"head={dirs['head']}", "--paired-baseline", "head",
                                "--targets", str(test), "--out", str(tmp_path / "x"))
    other = tmp_path / "other_catalog"
    assert cli.main(["evaluate", "--candidates", str(tmp_path / "tail.parquet"), "--targets", str(test), "--items",
                     str(ITEMS + 1), "--out", str(other), "--ks", "10", "--bootstrap", "0"]) == 0
    assert "num_items" in refused("--run", f"head={dirs['head']}", "--run", f"other={other}", "--paired-baseline",
                                  "head", "--targets", str(test), *common)
    assert not (tmp_path / "x").exists()
