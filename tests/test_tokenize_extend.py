"""`sidgr tokenize --extend`: new items get SIDs from the saved tokenizer; existing SIDs never change."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sidgr.cli import main as sidgr_main
from sidgr.errors import InputError
from sidgr.sid.mapping import SIDMapping
from sidgr.tokenize.extend import assign_codes, extend

OLD, NEW = 400, 40


def items_file(path, ids, texts=None):
    texts = texts if texts is not None else [f"item {i}" for i in ids]
    pq.write_table(pa.table({"item_id": pa.array(list(ids), pa.int64()), "text": pa.array(texts, pa.string())}),
                   path)
    return path


def clustered(n, seed, d=16, k=6):
    rng = np.random.default_rng(seed)
    top = np.random.default_rng(99).normal(size=(k, d)) * 3
    return (top[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture()
def catalog(tmp_path):
    x_old = clustered(OLD, 0)
    np.save(tmp_path / "old.npy", x_old)
    items_file(tmp_path / "items.parquet", range(OLD))
    out = tmp_path / "sids"
    assert sidgr_main(["tokenize", "--items", str(tmp_path / "items.parquet"), "--embeddings",
                       str(tmp_path / "old.npy"), "--method", "balanced", "--codebook-sizes", "8,8",
                       "--out", str(out), "--no-progress"]) == 0
    x_new = clustered(NEW, 1)
    x_new[:3] = x_old[[5, 5, 17]]  # exact copies of existing items: same semantic SID, next dedup codes
    np.save(tmp_path / "new.npy", x_new)
    items_file(tmp_path / "new.parquet", range(OLD, OLD + NEW))
    return tmp_path, out, x_new


@pytest.mark.parametrize("method", ["balanced", "rqkmeans"])
def test_extension_keeps_every_sid_and_assigns_new_items_by_nearest_codeword(tmp_path, method):
    x_old = clustered(OLD, 0)
    np.save(tmp_path / "old.npy", x_old)
    items_file(tmp_path / "items.parquet", range(OLD))
    assert sidgr_main(["tokenize", "--items", str(tmp_path / "items.parquet"), "--embeddings",
                       str(tmp_path / "old.npy"), "--method", method, "--codebook-sizes", "8,8",
                       "--out", str(tmp_path / "sids"), "--no-progress"]) == 0
    x_new = clustered(NEW, 1)
    x_new[:3] = x_old[[5, 5, 17]]
    np.save(tmp_path / "new.npy", x_new)
    items_file(tmp_path / "new.parquet", range(OLD, OLD + NEW))
    assert sidgr_main(["tokenize", "--extend", str(tmp_path / "sids"), "--items", str(tmp_path / "new.parquet"),
                       "--embeddings", str(tmp_path / "new.npy"), "--out", str(tmp_path / "grown")]) == 0
    old = SIDMapping.load(tmp_path / "sids" / "sids.json")
    grown = SIDMapping.load(tmp_path / "grown" / "sids.json")
    assert grown.num_items == OLD + NEW and grown.codebook_sizes == old.codebook_sizes
    assert torch.equal(grown.codes[:, :OLD], old.codes)  # nothing existing moves
    books = [b.numpy() for b in torch.load(tmp_path / "sids" / "tokenizer.pt", weights_only=True)["codebooks"]]
    semantic = grown.codes[:2, OLD:].numpy()
    # independently: the nearest codeword of the residual, level by level
    residual = x_new.copy()
    for level, book in enumerate(books):
        nearest = ((residual[:, None, :] - book[None]) ** 2).sum(-1).argmin(1)
        assert (semantic[level] == nearest).all()
        residual -= book[nearest]
    # new items sharing a semantic SID take the next free dedup codes under it, in id order (items OLD and OLD+1
    # are copies of the same vector); with plain RQ-KMeans a copy of an existing item also shares its SID
    sid = grown.codes[:2, OLD]
    assert grown.codes[:2, OLD + 1].tolist() == sid.tolist()
    under = (old.codes[:2] == sid[:, None]).all(0)
    first = int(old.codes[2, under].max()) + 1 if bool(under.any()) else 0
    assert grown.codes[2, OLD:OLD + 2].tolist() == [first, first + 1]
    if method == "rqkmeans":
        assert grown.codes[:2, OLD].tolist() == old.codes[:2, 5].tolist()
        assert grown.codes[:2, OLD + 2].tolist() == old.codes[:2, 17].tolist()
    assert len({tuple(c) for c in grown.codes.t().tolist()}) == OLD + NEW  # every full SID unique
    report = json.loads((tmp_path / "grown" / "extend.json").read_text())
    assert report["new_items"] == NEW and report["new_sharing_a_semantic_sid"] >= 3 / NEW
    assert (tmp_path / "grown" / "tokenizer.pt").is_file()  # the grown mapping can be extended again


def test_assign_codes_is_the_residual_nearest_codeword():
    books = [np.array([[0.0, 0.0], [10.0, 0.0]]), np.array([[0.0, 1.0], [0.0, -1.0]])]
    codes = assign_codes(np.array([[9.0, -0.8], [0.2, 0.9]]), books)
    assert codes.tolist() == [[1, 0], [1, 0]]


def test_bad_extensions_are_one_line_errors_and_write_nothing(catalog):
    tmp, sids, _ = catalog
    new = tmp / "new.parquet"
    cases = [
        (items_file(tmp / "overlap.parquet", range(OLD - 1, OLD + NEW - 1)), "already exists"),
        (items_file(tmp / "gap.parquet", [OLD + i + (i > 5) for i in range(NEW)]), r"contiguous after the catalog"),
        (items_file(tmp / "null.parquet", range(OLD, OLD + NEW), [None] + ["x"] * (NEW - 1)), "text is null"),
    ]
    for path, message in cases:
        with pytest.raises(InputError, match=message):
            extend(sids, path, tmp / "out", tmp / "new.npy")
        assert not (tmp / "out").exists()
    with pytest.raises(InputError, match="pass the new items' --embeddings"):
        extend(sids, new, tmp / "out")  # tokenized from a file: text cannot be embedded the same way
    (tmp / "plain").mkdir()
    SIDMapping.load(sids / "sids.json").save(tmp / "plain" / "sids")  # an old mapping: no tokenizer.pt
    with pytest.raises(InputError, match="no saved tokenizer"):
        extend(tmp / "plain", new, tmp / "out", tmp / "new.npy")
    assert not (tmp / "out").exists()
