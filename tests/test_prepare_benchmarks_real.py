"""`sidgr prepare beauty|ml1m` on the real benchmark files when present (SIDGR_BENCH_DATA, default
<repo>/../shared/data; never copied into the repository); skipped with a reason otherwise."""
from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from test_prepare_benchmarks import BENCH, check_contract, prepare, raw_history, read_out

from sidgr.data.readers import read_sequences

# ---- the real benchmark files ----------------------------------------------------------------------------
def bench_dir(name: str) -> Path:
    root = BENCH / name
    if not root.is_dir():
        pytest.skip(f"benchmark data not found at {root} (set SIDGR_BENCH_DATA to the shared/data folder)")
    return root


@pytest.fixture(scope="module")
def beauty_source() -> dict:
    root = bench_dir("amazon-beauty")
    with lzma.open(root / "Beauty.inter.json.xz") as f:
        inter = json.load(f)
    maps = json.loads((root / "datamaps.json").read_text())
    return {"root": root, "inter": inter, "id2item": maps["id2item"], "id2user": maps["id2user"]}


def test_beauty_real_slice(beauty_source, tmp_path):
    stats = prepare("beauty", beauty_source["root"], tmp_path / "out", "--max-users", "500")
    data = read_out(tmp_path / "out")
    check_contract(data, stats)
    inter, id2item, id2user = beauty_source["inter"], beauty_source["id2item"], beauty_source["id2user"]
    assert stats["users"] == 500 and stats["interactions"] == sum(len(inter[str(u)]) for u in range(500))
    assert stats["items"] == len({i for u in range(500) for i in inter[str(u)]})
    assert [r["raw_id"] for r in data["users"]] == [id2user[str(u + 1)] for u in range(500)]
    for u in range(500):
        assert raw_history(data, u) == [id2item[str(i + 1)] for i in inter[str(u)]]
    assert data["items"][0]["raw_id"] == "B004756YJA" and data["users"][0]["raw_id"] == "A1YJEY40YUW4SE"


def test_beauty_real_full(beauty_source, tmp_path):
    stats = prepare("beauty", beauty_source["root"], tmp_path / "out")
    assert (stats["users"], stats["items"], stats["interactions"]) == (22_363, 12_101, 198_502)
    assert stats["items_without_text"] == 0 and stats["valid_rows"] == stats["test_rows"] == 22_363
    items = pq.read_table(tmp_path / "out" / "items.parquet").to_pylist()
    assert [r["raw_id"] for r in items] == [beauty_source["id2item"][str(i + 1)] for i in range(12_101)]
    assert items[0]["text"] == "Brand: OPI. Categories: Makeup > Nails > Nail Polish."
    test = read_sequences(tmp_path / "out" / "test.parquet")
    assert test.targets.values.tolist() == [beauty_source["inter"][str(u)][-1] for u in range(22_363)]


@pytest.fixture(scope="module")
def ml1m_first_users() -> dict:
    """UserID -> [(timestamp, line, MovieID)] for UserIDs 1..500, read line by line from the real file."""
    root = bench_dir("ml-1m")
    per_user: dict[int, list] = {}
    with lzma.open(root / "ratings.dat.xz", "rt", encoding="ascii") as f:
        for no, line in enumerate(f):
            user, movie, _, ts = line.rstrip("\n").split("::")
            if int(user) > 500:
                break  # the file is grouped by ascending UserID
            per_user.setdefault(int(user), []).append((int(ts), no, movie))
    return {"root": root, "ratings": per_user}


def test_ml1m_real_slice(ml1m_first_users, tmp_path):
    stats = prepare("ml1m", ml1m_first_users["root"], tmp_path / "out", "--max-users", "500")
    data = read_out(tmp_path / "out")
    check_contract(data, stats)
    ratings = ml1m_first_users["ratings"]
    assert [r["raw_id"] for r in data["users"]] == [str(u) for u in range(1, 501)]
    assert stats["interactions"] == sum(len(v) for v in ratings.values())
    assert stats["items"] == len({m for v in ratings.values() for _, _, m in v})
    raw_items = [int(r["raw_id"]) for r in data["items"]]
    assert raw_items == sorted(raw_items)
    for u in range(500):
        assert raw_history(data, u) == [m for _, _, m in sorted(ratings[u + 1])], f"UserID {u + 1}"
        assert raw_history(data, u)[-1] == ratings[u + 1][-1][2]  # the wheel's test row (last in file) is last


def test_ml1m_real_full(tmp_path):
    stats = prepare("ml1m", bench_dir("ml-1m"), tmp_path / "out")
    assert (stats["users"], stats["items"], stats["interactions"]) == (6_040, 3_706, 1_000_209)
    assert stats["items_without_text"] == 91 and stats["users_too_short_for_split"] == 0
    items = pq.read_table(tmp_path / "out" / "items.parquet").to_pylist()
    assert [r["raw_id"] for r in items if r["text"] == ""] == [str(m) for m in range(4001, 4092)]
    assert items[0]["text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    seq = read_sequences(tmp_path / "out" / "sequences.parquet")
    user_of = np.repeat(np.arange(seq.num_users), seq.lengths)
    assert np.all((np.diff(seq.timestamps) >= 0) | (np.diff(user_of) != 0))  # time order within each user
