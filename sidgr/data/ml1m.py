"""MovieLens-1M from the GroupLens files (`ratings.dat`, `movies.dat`, `users.dat`; each may be `.xz`)
-> items/users/sequences parquet.

Every rating is an interaction (implicit feedback: the Rating field is checked to be an integer, then dropped;
a repeated (user, movie) pair would be kept twice). Each user's history is ordered by (Timestamp, line of
ratings.dat): ties keep the file order (stable sort), as ml100k.

Ids: users are the UserIDs that rated something, user_id = rank in ascending numeric UserID (the file's order);
items are the MovieIDs rated by the kept users, item_id = rank in ascending numeric MovieID (as ml100k), so
both are 0..N-1 and `raw_id` is the UserID / MovieID as a string. `--max-users N` keeps the N smallest UserIDs
and only the movies they rated.

Item text, as ml100k: "Title (year). Genres: a, b." with a library-style trailing article moved to the front
("Godfather, The" -> "The Godfather"); the `title` column keeps the raw title without the "(year)" suffix.
movies.dat is latin-1 in the GroupLens original; a UTF-8 copy is accepted too (UTF-8 is tried first: a
latin-1 file with accented titles is never valid UTF-8). A rated MovieID that movies.dat does not list is
still an item, with null title/year, no genres and empty text, counted in stats.json `items_without_text`
(the reconstructed ratings.dat of the benchmark copy has 91 such placeholder MovieIDs, 4001-4091).
users.dat must list every rated UserID; its demographic fields are not used.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from sidgr.data.ml100k import build_sequences, item_text, tied_interactions
from sidgr.data.schemas import ITEMS_SCHEMA, USERS_SCHEMA
from sidgr.data.sequences import PreparedDataset, write_dataset
from sidgr.data.source_files import find_file, read_int_lines, read_text, split_lines
from sidgr.errors import input_error

RATINGS = ("UserID", "MovieID", "Rating", "Timestamp")
MOVIES = ("MovieID", "Title", "Genres")
USERS = ("UserID", "Gender", "Age", "Occupation", "Zip-code")
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})\)\s*$")


def load(source: str, max_users: int | None = None) -> PreparedDataset:
    root = Path(source)
    ratings_path = find_file(root, "ratings.dat", "MovieLens-1M ratings")
    movies_path = find_file(root, "movies.dat", "MovieLens-1M movies")
    users_path = find_file(root, "users.dat", "MovieLens-1M users")
    ratings = read_int_lines(ratings_path, RATINGS)
    movies = read_movies(movies_path)
    check_users(users_path, ratings_path, np.unique(ratings["UserID"]))
    user_raw = np.unique(ratings["UserID"])[:max_users]
    keep = np.isin(ratings["UserID"], user_raw)
    users_of_row, movies_of_row = ratings["UserID"][keep], ratings["MovieID"][keep]
    item_raw = np.unique(movies_of_row)
    sequences = build_sequences(np.searchsorted(user_raw, users_of_row), np.searchsorted(item_raw, movies_of_row),
                                ratings["Timestamp"][keep], len(user_raw))
    items = build_items(item_raw, movies)
    users = pa.table({"user_id": np.arange(len(user_raw), dtype=np.int64), "raw_id": [str(u) for u in user_raw]},
                     schema=USERS_SCHEMA)
    return PreparedDataset(items, users, sequences, sum(t == "" for t in items["text"].to_pylist()))


def read_movies(path: Path) -> dict[int, tuple[str | None, int | None, list[str]]]:
    """MovieID -> (raw title without the year, year, genres)."""
    movies = {}
    for no, (movie, title, genres) in enumerate(split_lines(path, read_text(path, ("utf-8", "latin-1")), MOVIES,
                                                            ("MovieID",)), 1):
        if int(movie) in movies:
            raise input_error(path, f"line {no} MovieID", movie, "MovieID listed twice")
        movies[int(movie)] = (*split_title(title), [g for g in genres.split("|") if g.strip()])
    return movies


def split_title(title: str) -> tuple[str | None, int | None]:
    """'Toy Story (1995)' -> ('Toy Story', 1995); no trailing (year) -> (title, None); blank -> (None, None)."""
    match = _TITLE_YEAR.match(title)
    if match is None:
        return (title.strip() or None), None
    return (match.group(1).strip() or None), int(match.group(2))


def check_users(path: Path, ratings_path: Path, rated: np.ndarray) -> None:
    """users.dat must be well-formed, list each UserID once and cover every UserID of ratings.dat."""
    listed = [int(row[0]) for row in split_lines(path, read_text(path), USERS, ("UserID",))]
    unique, counts = np.unique(np.array(listed, dtype=np.int64), return_counts=True)
    if (counts > 1).any():
        raise input_error(path, "UserID", int(unique[counts > 1][0]), "UserID listed twice")
    missing = rated[~np.isin(rated, unique)]
    if missing.size:
        raise input_error(ratings_path, "UserID", int(missing[0]), f"not listed in {path.name}")


def build_items(item_raw: np.ndarray, movies: dict) -> pa.Table:
    titles, years, genres, texts = [], [], [], []
    for movie in item_raw.tolist():
        title, year, names = movies.get(movie, (None, None, []))
        titles.append(title)
        years.append(year)
        genres.append(names)
        texts.append(item_text(title, year, names) if movie in movies else "")
    return pa.table({"item_id": np.arange(len(item_raw), dtype=np.int64), "raw_id": [str(m) for m in item_raw],
                     "title": titles, "year": years, "genres": genres, "text": texts}, schema=ITEMS_SCHEMA)


def prepare(out_dir: str, source: str | None, max_users: int | None = None) -> dict:
    """Load MovieLens-1M from `source` and write the dataset files into `out_dir` (all or nothing)."""
    if source is None:
        raise input_error("--source", "source", None, "required for ml1m: the directory holding ratings.dat, "
                                                       "movies.dat and users.dat (each may be .xz)")
    data = load(source, max_users)
    stats = {"dataset": "ml1m", "source": str(Path(source)), "timestamp_ties": tied_interactions(data.sequences),
             "items_without_text": data.items_without_text}
    if max_users is not None:
        stats["max_users"] = max_users
    return write_dataset(out_dir, data.items, data.users, [data.sequences], stats)
