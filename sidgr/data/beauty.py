"""Amazon Beauty 2014 5-core (the TIGER / LETTER / P5 split) -> items/users/sequences parquet.

Source files (each may also be `.xz`): `Beauty.inter.json` `{"<user index>": [item index, ...]}` with every
list in chronological order (kept as is), `datamaps.json` (`id2item[str(i + 1)]` = ASIN of item i,
`id2user[str(u + 1)]` = reviewer id of user u) and `beauty_item_attributes.json`
(`{"<item index>": {"asin", "attributes": [brand?, category, sub-category, ...]}}`; its ASIN must equal the
datamaps one). There are no timestamps: `timestamps` holds each interaction's position 0..len-1 in its user's
list, so time order = list order (stats.json says so under `timestamps`).

Ids: users are the source's user indices in ascending order, user_id = rank; items are the item indices that
the kept users interacted with, item_id = rank in ascending source index. On the full data both equal the
source's own indices (LETTER/TIGER numbering; its items are numbered by first appearance in user order), and
`raw_id` is the reviewer id / ASIN. `--max-users N` keeps the N smallest user indices and only their items.

Item text (there are no titles): "Brand: OPI. Categories: Makeup > Nails > Nail Polish." The first attribute
is the brand unless it is one of the six top-level categories (`TOP_CATEGORIES`, the children of "Beauty",
which the category path starts with; the constant "Beauty" root is not written); the brand "Unknown" is
dropped, HTML entities ("L&#39;Oreal Paris") are unescaped. The `genres` column holds the category path,
`title` and `year` are null. An item without attributes gets empty text and is counted in stats.json
`items_without_text`.
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pyarrow as pa

from sidgr.data.ml100k import build_sequences
from sidgr.data.schemas import ITEMS_SCHEMA, USERS_SCHEMA
from sidgr.data.sequences import PreparedDataset, write_dataset
from sidgr.data.source_files import EXCERPT, find_file, read_json
from sidgr.errors import input_error

FILES = {"inter": "Beauty.inter.json", "maps": "datamaps.json", "attributes": "beauty_item_attributes.json"}
TOP_CATEGORIES = frozenset({"Bath & Body", "Fragrance", "Hair Care", "Makeup", "Skin Care", "Tools & Accessories"})
NO_BRAND = "Unknown"
TIMESTAMPS = "position in the user's list; the source has no times"


def load(source: str, max_users: int | None = None) -> PreparedDataset:
    root = Path(source)
    paths = {key: find_file(root, name, "Amazon Beauty") for key, name in FILES.items()}
    histories = read_histories(paths["inter"])
    id2item, id2user = read_datamaps(paths["maps"])
    attributes = read_attributes(paths["attributes"], id2item)
    user_index = sorted(histories)[:max_users]
    lengths = np.array([len(histories[u]) for u in user_index], dtype=np.int64)
    flat = np.fromiter((i for u in user_index for i in histories[u]), dtype=np.int64, count=int(lengths.sum()))
    item_index = np.unique(flat)
    user_row = np.repeat(np.arange(len(user_index), dtype=np.int64), lengths)
    positions = np.arange(len(flat), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    sequences = build_sequences(user_row, np.searchsorted(item_index, flat), positions, len(user_index))
    asins = raw_ids(paths["maps"], id2item, "id2item", item_index.tolist(), f"item of {paths['inter'].name}")
    reviewers = raw_ids(paths["maps"], id2user, "id2user", user_index, f"user of {paths['inter'].name}")
    items = build_items(asins, [attributes.get(i, []) for i in item_index.tolist()])
    users = pa.table({"user_id": np.arange(len(user_index), dtype=np.int64), "raw_id": reviewers},
                     schema=USERS_SCHEMA)
    return PreparedDataset(items, users, sequences, sum(t == "" for t in items["text"].to_pylist()))


def index_key(path: Path, key: str, seen: dict, what: str) -> int:
    """A JSON object key that must be a decimal user/item index not seen before."""
    if not (key.isascii() and key.isdigit()) or int(key) in seen:
        raise input_error(path, f"{what} key", key, f"not {'an' if what == 'item' else 'a'} {what} index "
                                                    "(decimal, listed once)")
    return int(key)


def read_histories(path: Path) -> dict[int, list[int]]:
    """User index -> item indices, from `{"<user index>": [item index, ...]}`."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise input_error(path, "top level", type(data).__name__, 'expected {"<user index>": [item index, ...]}')
    histories = {}
    for key, items in data.items():
        index_key(path, key, histories, "user")
        if not isinstance(items, list) or not all(type(i) is int and i >= 0 for i in items):
            raise input_error(path, f"user {key}", repr(items)[:EXCERPT], "expected a list of item indices >= 0")
        histories[int(key)] = items
    return histories


def read_datamaps(path: Path) -> tuple[dict, dict]:
    """(id2item, id2user): 1-based id (a string) -> ASIN / reviewer id."""
    data = read_json(path)
    tables = []
    for name in ("id2item", "id2user"):
        table = data.get(name) if isinstance(data, dict) else None
        if not isinstance(table, dict):
            raise input_error(path, name, type(table).__name__, 'expected an object {"<index + 1>": "<raw id>"}')
        tables.append(table)
    return tables[0], tables[1]


def raw_ids(path: Path, table: dict, name: str, indices: list[int], what: str) -> list[str]:
    """The raw id of each 0-based index: table[str(index + 1)], a non-empty string."""
    out = []
    for index in indices:
        raw = table.get(str(index + 1))
        if not isinstance(raw, str) or not raw:
            raise input_error(path, f"{name}[{str(index + 1)!r}]", raw, f"no raw id for {what} {index}")
        out.append(raw)
    return out


def read_attributes(path: Path, id2item: dict) -> dict[int, list[str]]:
    """Item index -> attribute names; each entry's ASIN must be the datamaps one."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise input_error(path, "top level", type(data).__name__, 'expected {"<item index>": {"asin", "attributes"}}')
    attributes = {}
    for key, entry in data.items():
        index_key(path, key, attributes, "item")
        if not (isinstance(entry, dict) and isinstance(entry.get("asin"), str)
                and isinstance(entry.get("attributes"), list) and all(isinstance(a, str) for a in entry["attributes"])):
            raise input_error(path, f"item {key}", repr(entry)[:EXCERPT], 'expected {"asin": str, "attributes": [str]}')
        expected = id2item.get(str(int(key) + 1))
        if entry["asin"] != expected:
            raise input_error(path, f"item {key} asin", entry["asin"],
                              f"datamaps.json id2item[{str(int(key) + 1)!r}] is {expected!r}")
        attributes[int(key)] = entry["attributes"]
    return attributes


def brand_and_categories(attributes: list[str]) -> tuple[str | None, list[str]]:
    """[brand?, category path...] -> (brand or None, category path); see the module docstring."""
    names = [html.unescape(a).strip() for a in attributes if a.strip()]
    brand = names.pop(0) if names and names[0] not in TOP_CATEGORIES else None
    return (None if brand == NO_BRAND else brand), names


def item_text(brand: str | None, categories: list[str]) -> str:
    parts = ([f"Brand: {brand}."] if brand else []) + ([f"Categories: {' > '.join(categories)}."] if categories else [])
    return " ".join(parts)


def build_items(asins: list[str], attributes: list[list[str]]) -> pa.Table:
    parsed = [brand_and_categories(a) for a in attributes]
    n = len(asins)
    return pa.table({"item_id": np.arange(n, dtype=np.int64), "raw_id": asins, "title": [None] * n,
                     "year": [None] * n, "genres": [cats for _, cats in parsed],
                     "text": [item_text(brand, cats) for brand, cats in parsed]}, schema=ITEMS_SCHEMA)


def prepare(out_dir: str, source: str | None, max_users: int | None = None) -> dict:
    """Load Amazon Beauty from `source` and write the dataset files into `out_dir` (all or nothing)."""
    if source is None:
        raise input_error("--source", "source", None, "required for beauty: the directory holding "
                                                       f"{', '.join(FILES.values())} (each may be .xz)")
    data = load(source, max_users)
    stats = {"dataset": "beauty", "source": str(Path(source)), "timestamps": TIMESTAMPS,
             "items_without_text": data.items_without_text}
    if max_users is not None:
        stats["max_users"] = max_users
    return write_dataset(out_dir, data.items, data.users, [data.sequences], stats)
