"""`sidgr prepare beauty|ml1m` (and `--max-users`) on tiny hand-written sources; the real benchmark files are
tested in test_prepare_benchmarks_real.py."""
from __future__ import annotations

import importlib.util
import json
import lzma
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sidgr.cli import main as cli_main
from sidgr.data import beauty, ml1m
from sidgr.data.readers import read_sequences
from sidgr.errors import InputError

BENCH = Path(os.environ.get("SIDGR_BENCH_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SPLITS = ("sequences", "train", "valid", "test")


# ---- helpers ----------------------------------------------------------------------------------------------
def prepare(dataset: str, source: Path, out: Path, *extra: str) -> dict:
    assert cli_main(["prepare", dataset, "--source", str(source), "--out", str(out), *extra]) == 0
    return json.loads((out / "stats.json").read_text())


def read_out(out: Path) -> dict:
    data = {name: read_sequences(out / f"{name}.parquet") for name in SPLITS}
    data["items"] = pq.read_table(out / "items.parquet").to_pylist()
    data["users"] = pq.read_table(out / "users.parquet").to_pylist()
    return data


def raw_history(data: dict, user: int) -> list[str]:
    return [data["items"][i]["raw_id"] for i in data["sequences"].sequence(user)]


def check_contract(data: dict, stats: dict) -> None:
    """Contiguous ids, counts consistent with stats.json, leave-one-out split of every user."""
    seq, train, valid, test = (data[n] for n in SPLITS)
    assert [r["item_id"] for r in data["items"]] == list(range(stats["items"]))
    assert [r["user_id"] for r in data["users"]] == list(range(stats["users"])) == seq.user_ids.tolist()
    assert int(seq.lengths.sum()) == stats["interactions"]
    assert sorted(set(seq.item_ids.tolist())) == list(range(stats["items"]))  # every item is used
    assert len({r["raw_id"] for r in data["items"]}) == stats["items"]
    assert len({r["raw_id"] for r in data["users"]}) == stats["users"]
    assert stats["items_without_text"] == sum(r["text"] == "" for r in data["items"])
    long = seq.lengths >= 3
    assert test.user_ids.tolist() == seq.user_ids[long].tolist() == valid.user_ids.tolist()
    for row, user in enumerate(test.user_ids.tolist()):
        full = seq.sequence(user)
        assert train.sequence(row).tolist() == valid.sequence(row).tolist() == full[:-2].tolist()
        assert test.sequence(row).tolist() == full[:-1].tolist()
        assert (valid.targets.values[row], test.targets.values[row]) == (full[-2], full[-1])


def assert_same_outputs(a: Path, b: Path) -> None:
    for name in ("items", "users", *SPLITS):
        assert pq.read_table(a / f"{name}.parquet").equals(pq.read_table(b / f"{name}.parquet")), name


def write_xz(path: Path, data: bytes) -> None:
    path.with_name(path.name + ".xz").write_bytes(lzma.compress(data))


# ---- tiny Amazon Beauty ----------------------------------------------------------------------------------
BEAUTY_INTER = {"1": [0, 1, 3], "0": [0, 1, 2, 5], "2": [2, 4, 3, 1]}  # user 1 listed first on purpose
BEAUTY_ATTRIBUTES = {
    "0": ["OPI", "Makeup", "Nails", "Nail Polish"],
    "1": ["Skin Care", "Face"],
    "2": ["Unknown", "Hair Care", "Shampoos"],
    "3": ["L&#39;Oreal Paris", "Makeup"],
    "5": [],  # empty; item 4 has no entry at all
}


def write_beauty(root: Path, compress: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    asin = {i: f"B00ASIN{i:03d}" for i in range(6)}
    maps = {"id2item": {str(i + 1): a for i, a in asin.items()},
            "id2user": {str(u + 1): f"AREVIEWER{u}" for u in range(3)}, "item2id": {}, "user2id": {}}
    attributes = {k: {"asin": asin[int(k)], "attributes": v} for k, v in BEAUTY_ATTRIBUTES.items()}
    inter = json.dumps(BEAUTY_INTER, indent=4).encode()
    (root / "datamaps.json").write_text(json.dumps(maps))
    if compress:
        write_xz(root / "Beauty.inter.json", inter)
        write_xz(root / "beauty_item_attributes.json", json.dumps(attributes).encode())
    else:
        (root / "Beauty.inter.json").write_bytes(inter)
        (root / "beauty_item_attributes.json").write_text(json.dumps(attributes))
    return root


def test_beauty_tiny(tmp_path):
    stats = prepare("beauty", write_beauty(tmp_path / "src"), tmp_path / "out")
    data = read_out(tmp_path / "out")
    check_contract(data, stats)
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 6, 11)
    assert stats["items_without_text"] == 2 and "no times" in stats["timestamps"]
    assert [r["raw_id"] for r in data["users"]] == ["AREVIEWER0", "AREVIEWER1", "AREVIEWER2"]
    assert [r["raw_id"] for r in data["items"]] == [f"B00ASIN{i:03d}" for i in range(6)]
    seq = data["sequences"]
    assert [seq.sequence(u).tolist() for u in range(3)] == [[0, 1, 2, 5], [0, 1, 3], [2, 4, 3, 1]]  # list order
    assert seq.timestamps.tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3]  # positions
    # user 0 = [0, 1, 2, 5]: train [0, 1], valid [0, 1] -> 2, test [0, 1, 2] -> 5
    assert data["train"].sequence(0).tolist() == [0, 1] and data["valid"].targets.values[0] == 2
    assert data["test"].sequence(0).tolist() == [0, 1, 2] and data["test"].targets.values[0] == 5
    texts = [r["text"] for r in data["items"]]
    assert texts[:4] == ["Brand: OPI. Categories: Makeup > Nails > Nail Polish.", "Categories: Skin Care > Face.",
                         "Categories: Hair Care > Shampoos.", "Brand: L'Oreal Paris. Categories: Makeup."]
    assert texts[4:] == ["", ""]
    assert data["items"][0]["genres"] == ["Makeup", "Nails", "Nail Polish"] and data["items"][0]["title"] is None


def test_beauty_plain_and_xz_agree(tmp_path):
    prepare("beauty", write_beauty(tmp_path / "xz"), tmp_path / "a")
    prepare("beauty", write_beauty(tmp_path / "plain", compress=False), tmp_path / "b")
    assert_same_outputs(tmp_path / "a", tmp_path / "b")


def test_beauty_max_users_remaps_items(tmp_path):
    stats = prepare("beauty", write_beauty(tmp_path / "src"), tmp_path / "out", "--max-users", "2")
    data = read_out(tmp_path / "out")
    check_contract(data, stats)
    assert (stats["users"], stats["items"], stats["interactions"], stats["max_users"]) == (2, 5, 7, 2)
    assert [r["raw_id"] for r in data["items"]] == [f"B00ASIN{i:03d}" for i in (0, 1, 2, 3, 5)]  # item 4 unused
    assert raw_history(data, 0) == ["B00ASIN000", "B00ASIN001", "B00ASIN002", "B00ASIN005"]
    assert stats["items_without_text"] == 1


# ---- tiny MovieLens-1M -----------------------------------------------------------------------------------
ML1M_RATINGS = """2::10::5::100
1::30::4::200
1::20::5::100
1::10::3::100
1::40::1::50
2::30::2::90
2::50::3::90
3::20::4::10
3::10::4::20
3::30::4::30
"""
ML1M_MOVIES = """10::Misérables, Les (1995)::Drama|Musical
20::Godfather, The (1972)::Action|Crime|Drama
30::Toy Story (1995)::Animation|Children's|Comedy
40::Untitled Film::
60::Never Rated (1999)::Comedy
"""
ML1M_USERS = "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n4::M::45::7::02460\n"


def write_ml1m(root: Path, compress: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if compress:
        write_xz(root / "ratings.dat", ML1M_RATINGS.encode())
    else:
        (root / "ratings.dat").write_text(ML1M_RATINGS)
    (root / "movies.dat").write_bytes(ML1M_MOVIES.encode("latin-1"))  # the GroupLens encoding
    (root / "users.dat").write_text(ML1M_USERS)
    return root


def test_ml1m_tiny(tmp_path):
    stats = prepare("ml1m", write_ml1m(tmp_path / "src"), tmp_path / "out")
    data = read_out(tmp_path / "out")
    check_contract(data, stats)
    assert (stats["users"], stats["items"], stats["interactions"]) == (3, 5, 10)
    assert [r["raw_id"] for r in data["users"]] == ["1", "2", "3"]  # ascending UserID, not file order
    assert [r["raw_id"] for r in data["items"]] == ["10", "20", "30", "40", "50"]  # ascending MovieID
    # user 1: 40 @50, then 20 and 10 tie @100 and keep file order (20 first), then 30 @200
    assert raw_history(data, 0) == ["40", "20", "10", "30"]
    assert data["sequences"].timestamps[:4].tolist() == [50, 100, 100, 200]
    assert raw_history(data, 1) == ["30", "50", "10"] and raw_history(data, 2) == ["20", "10", "30"]
    assert stats["timestamp_ties"] == 4
    # user 1 = [40, 20, 10, 30] = ids [3, 1, 0, 2]: train [3, 1], valid -> 0, test [3, 1, 0] -> 2
    assert data["train"].sequence(0).tolist() == [3, 1] and data["valid"].targets.values[0] == 0
    assert data["test"].sequence(0).tolist() == [3, 1, 0] and data["test"].targets.values[0] == 2
    items = data["items"]
    assert items[0]["text"] == "Les Misérables (1995). Genres: Drama, Musical."
    assert items[0]["title"] == "Misérables, Les"  # raw title, latin-1 decoded
    assert items[1]["text"] == "The Godfather (1972). Genres: Action, Crime, Drama." and items[1]["year"] == 1972
    assert items[3]["text"] == "Untitled Film." and items[3]["genres"] == [] and items[3]["year"] is None
    assert items[4] == {"item_id": 4, "raw_id": "50", "title": None, "year": None, "genres": [], "text": ""}
    assert stats["items_without_text"] == 1


def test_ml1m_plain_and_utf8_copies_agree(tmp_path):
    prepare("ml1m", write_ml1m(tmp_path / "xz"), tmp_path / "a")
    plain = write_ml1m(tmp_path / "plain", compress=False)
    (plain / "movies.dat").write_text(ML1M_MOVIES, encoding="utf-8")  # a re-encoded copy is accepted too
    prepare("ml1m", plain, tmp_path / "b")
    assert_same_outputs(tmp_path / "a", tmp_path / "b")


def test_ml1m_max_users(tmp_path):
    stats = prepare("ml1m", write_ml1m(tmp_path / "src"), tmp_path / "out", "--max-users", "1")
    data = read_out(tmp_path / "out")
    check_contract(data, stats)
    assert (stats["users"], stats["items"], stats["interactions"]) == (1, 4, 4)
    assert [r["raw_id"] for r in data["items"]] == ["10", "20", "30", "40"]
    assert stats["items_without_text"] == 0


# ---- bad input: one line, naming the file, exit code 1, no output -----------------------------------------
def _edit(name: str, text: str):
    def edit(root: Path) -> None:
        for old in root.glob(f"{name}*"):
            old.unlink()
        (root / name).write_bytes(text.encode("latin-1") if isinstance(text, str) else text)
    return edit


def _remove(name: str):
    return lambda root: [p.unlink() for p in root.glob(f"{name}*")]


def _truncate_xz(name: str):
    def edit(root: Path) -> None:
        path = root / f"{name}.xz"
        path.write_bytes(path.read_bytes()[:-20])
    return edit


BAD_ML1M = {
    "missing ratings": (_remove("ratings.dat"), r"ratings\.dat: file='ratings\.dat': .*not found"),
    "missing users": (_remove("users.dat"), r"users\.dat: file="),
    "wrong field count": (_edit("ratings.dat", "1::10::5::100\n1::20::5\n"), r"ratings\.dat: line 2='1::20::5'"),
    "extra field": (_edit("ratings.dat", "1::10::5::100::7\n"), r"ratings\.dat: line 1="),
    "non-integer": (_edit("ratings.dat", "1::10::5::100\n1::2O::5::100\n"), r"ratings\.dat: line 2 MovieID='2O'"),
    "negative": (_edit("ratings.dat", "1::10::-5::100\n"), r"ratings\.dat: line 1 Rating='-5'"),
    "blank line": (_edit("ratings.dat", "1::10::5::100\n\n1::20::5::100\n"), r"ratings\.dat: line 2=''"),
    "not utf-8": (_edit("ratings.dat", b"1::10::5::100\n1::\xff0::5::100\n"), r"ratings\.dat: line 2=.*not utf-8"),
    "truncated xz": (_truncate_xz("ratings.dat"), r"ratings\.dat\.xz: xz=.*truncated"),
    "movies fields": (_edit("movies.dat", "10::Heat (1995)\n"), r"movies\.dat: line 1='10::Heat \(1995\)'"),
    "movies id": (_edit("movies.dat", "x::Heat (1995)::Drama\n"), r"movies\.dat: line 1 MovieID='x'"),
    "movies twice": (_edit("movies.dat", "10::A (1995)::Drama\n10::B (1995)::Drama\n"), r"movies\.dat: line 2 MovieID"),
    "unlisted user": (_edit("users.dat", "1::F::1::10::48067\n"),
                      r"ratings\.dat\.xz: UserID=2: not listed in users\.dat"),
}


BAD_BEAUTY = {
    "missing inter": (_remove("Beauty.inter.json"), r"Beauty\.inter\.json: file="),
    "missing datamaps": (_remove("datamaps.json"), r"datamaps\.json: file="),
    "garbage json": (_edit("Beauty.inter.json", '{"0": [1, 2'), r"Beauty\.inter\.json: line 1 column \d+"),
    "not utf-8": (_edit("Beauty.inter.json", b'{"0": [1]}\n\xfe'), r"Beauty\.inter\.json: line 2=.*not utf-8"),
    "list, not object": (_edit("Beauty.inter.json", "[[0, 1]]"), r"Beauty\.inter\.json: top level='list'"),
    "string item": (_edit("Beauty.inter.json", '{"0": [0, "1"]}'), r"Beauty\.inter\.json: user 0="),
    "bad user key": (_edit("Beauty.inter.json", '{"u0": [0, 1]}'), r"Beauty\.inter\.json: user key='u0'"),
    "repeated key": (_edit("Beauty.inter.json", '{"0": [0], "0": [1]}'), r"Beauty\.inter\.json: key='0': repeated"),
    "truncated xz": (_truncate_xz("beauty_item_attributes.json"), r"beauty_item_attributes\.json\.xz: xz="),
    "no id2item": (_edit("datamaps.json", '{"id2user": {}}'), r"datamaps\.json: id2item='NoneType'"),
    "item lacks asin": (_edit("datamaps.json", json.dumps({"id2item": {"1": "B00ASIN000"}, "id2user": {}})),
                        r"beauty_item_attributes\.json\.xz: item 1 asin='B00ASIN001': datamaps\.json id2item\['2'\]"),
    "asin disagrees": (_edit("beauty_item_attributes.json", json.dumps({"0": {"asin": "X", "attributes": []}})),
                       r"beauty_item_attributes\.json: item 0 asin='X'"),
    "attributes shape": (_edit("beauty_item_attributes.json", json.dumps({"0": ["B00ASIN000"]})),
                         r"beauty_item_attributes\.json: item 0="),
}


BAD_INPUTS = {**{("ml1m", case): v for case, v in BAD_ML1M.items()},
              **{("beauty", case): v for case, v in BAD_BEAUTY.items()}}
WRITERS = {"ml1m": write_ml1m, "beauty": write_beauty}


@pytest.mark.parametrize("dataset,case", list(BAD_INPUTS))
def test_bad_input(dataset, case, tmp_path, capsys):
    edit, message = BAD_INPUTS[dataset, case]
    root = WRITERS[dataset](tmp_path / "src")
    edit(root)
    _assert_fails(dataset, root, tmp_path / "out", message, capsys)


def test_beauty_user_without_reviewer_id(tmp_path):
    root = write_beauty(tmp_path / "src")
    maps = json.loads((root / "datamaps.json").read_text())
    del maps["id2user"]["3"]
    (root / "datamaps.json").write_text(json.dumps(maps))
    with pytest.raises(InputError, match=r"datamaps\.json: id2user\['3'\]=None: no raw id for user"):
        beauty.prepare(str(tmp_path / "out"), str(root))
    assert not (tmp_path / "out").exists()


def _assert_fails(dataset: str, root: Path, out: Path, message: str, capsys) -> None:
    with pytest.raises(InputError, match=message):
        (beauty if dataset == "beauty" else ml1m).prepare(str(out), str(root))
    capsys.readouterr()
    assert cli_main(["prepare", dataset, "--source", str(root), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(root) in err
    assert not out.exists()


@pytest.mark.parametrize("dataset", ["beauty", "ml1m"])
def test_source_is_required(dataset, tmp_path, capsys):
    assert cli_main(["prepare", dataset, "--out", str(tmp_path / "out")]) == 1
    assert "--source" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_max_users_must_be_positive(tmp_path):
    with pytest.raises(SystemExit):
        cli_main(["prepare", "ml1m", "--source", str(tmp_path), "--out", str(tmp_path / "o"), "--max-users", "0"])


def test_ml100k_max_users(tmp_path):
    if importlib.util.find_spec("recbole") is None:
        pytest.skip("recbole is not installed (pip install --no-deps recbole==1.2.1): no MovieLens-100K data")
    out = tmp_path / "out"
    assert cli_main(["prepare", "ml100k", "--out", str(out), "--max-users", "10"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    data = read_out(out)
    assert (stats["users"], stats["items"], stats["max_users"]) == (10, 1682, 10)  # the whole catalog stays
    assert [r["raw_id"] for r in data["users"]] == [str(u) for u in range(1, 11)]
    assert int(data["sequences"].lengths.sum()) == stats["interactions"]
