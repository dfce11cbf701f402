"""Reading benchmark source files (plain or `.xz`): every failure is one InputError naming the file.

`find_file(root, "ratings.dat")` accepts `ratings.dat` or `ratings.dat.xz` (the plain name wins when both
exist); `.xz` is read with the stdlib `lzma`, so a truncated or corrupt archive is reported, never half-read.
Text is decoded strictly (a bad byte names its line); JSON errors name their line and column. `::`-separated
files (MovieLens-1M) name the 1-based line and the field of a bad value; big all-integer files are parsed by
pyarrow and only re-read line by line, to locate the problem, when that fails.
"""
from __future__ import annotations

import io
import json
import lzma
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from sidgr.errors import input_error

EXCERPT = 80  # characters of an offending line or value quoted in an error


def find_file(root: Path, name: str, what: str) -> Path:
    """`root/name` or `root/name.xz`, whichever exists (plain first)."""
    for path in (root / name, root / f"{name}.xz"):
        if path.is_file():
            return path
    raise input_error(root / name, "file", name, f"{what} file not found (nor {name}.xz)")


def read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed when it ends in .xz."""
    try:
        if path.suffix == ".xz":
            with lzma.open(path) as f:
                return f.read()
        return path.read_bytes()
    except (lzma.LZMAError, EOFError) as err:
        raise input_error(path, "xz", str(err)[:EXCERPT], "cannot decompress (truncated or not .xz)") from None
    except OSError as err:
        raise input_error(path, "file", str(err)[:EXCERPT], "cannot read") from None


def read_text(path: Path, encodings: tuple[str, ...] = ("utf-8",)) -> str:
    """The text in the first of `encodings` that decodes the whole file; else the first one's bad byte."""
    data = read_bytes(path)
    errors = []
    for encoding in encodings:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError as err:
            errors.append(err)
    line = data.count(b"\n", 0, errors[0].start) + 1
    raise input_error(path, f"line {line}", data[errors[0].start:errors[0].start + 4],
                      f"not {' or '.join(encodings)} text")


class _DuplicateKey(Exception):
    pass


def read_json(path: Path) -> object:
    """Parsed JSON; a key repeated inside one object is an error (json would silently keep the last)."""
    text = read_text(path)
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise input_error(path, f"line {err.lineno} column {err.colno}", text[err.pos:err.pos + 20],
                          f"not valid JSON: {err.msg}") from None
    except _DuplicateKey as err:
        raise input_error(path, "key", err.args[0], "repeated inside one JSON object") from None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return obj


def split_lines(path: Path, text: str, fields: tuple[str, ...], int_fields: tuple[str, ...] = ()) -> list[list[str]]:
    """`a::b::c` lines -> lists of exactly len(fields) strings; `int_fields` must be non-negative integers."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    check = [(fields.index(name), name) for name in int_fields]
    rows = []
    for no, line in enumerate(lines, 1):
        row = line.removesuffix("\r").split("::")
        if len(row) != len(fields):
            raise input_error(path, f"line {no}", line[:EXCERPT], f"expected {len(fields)} fields {'::'.join(fields)}")
        for col, name in check:
            if not (row[col].isascii() and row[col].isdigit()):
                raise input_error(path, f"line {no} {name}", row[col][:EXCERPT], "not a non-negative integer")
        rows.append(row)
    return rows


def read_int_lines(path: Path, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A `::`-separated file of non-negative integers -> one int64 array per field (fast path: pyarrow)."""
    text = read_text(path)
    table = _arrow_int_table(text, fields)
    if table is None:
        split_lines(path, text, fields, fields)  # raises, naming the line and field
        raise input_error(path, "content", text[:EXCERPT], "cannot parse as integers")  # not reached in practice
    return {name: table[name].to_numpy() for name in fields}


def _arrow_int_table(text: str, fields: tuple[str, ...]) -> pa.Table | None:
    """The parsed table, or None when some line is not exactly `len(fields)` non-negative integers."""
    if not text.strip():
        return pa.table({name: pa.array([], pa.int64()) for name in fields})
    try:
        table = pacsv.read_csv(
            io.BytesIO(text.encode().replace(b"::", b"\t")),
            read_options=pacsv.ReadOptions(column_names=list(fields)),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.int64() for n in fields}, null_values=[]),
        )
    except pa.ArrowInvalid:
        return None
    ok = all(table[n].null_count == 0 and (table.num_rows == 0 or table[n].to_numpy().min() >= 0) for n in fields)
    return table if ok else None
