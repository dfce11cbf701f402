"""No command deletes or overwrites what it did not write: an --out that holds something else is refused with a
one-line error, before any work, and left byte-for-byte as it was."""
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidgr.arch import ModelArch
from sidgr.cli import main
from sidgr.inference.random_engine import random_mapping, random_state_dict
from sidgr.inference.weights import save_engine

SIZES = (8, 6, 8)


def snapshot(path):
    if path.is_file():
        return {".": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


@pytest.fixture()
def engine(tmp_path):
    arch = ModelArch(codebook_sizes=SIZES, hidden_size=32, num_layers=2, num_attention_heads=4,
                     ffn_hidden_size=64, max_items=10, head_mode="shared")
    save_engine(tmp_path / "engine", arch, random_state_dict(arch, 3), random_mapping(60, list(SIZES), 3))
    return tmp_path / "engine"


@pytest.fixture()
def items(tmp_path):
    n = 40
    pq.write_table(pa.table({"item_id": np.arange(n), "text": [f"item {i}" for i in range(n)]}),
                   tmp_path / "items.parquet")
    np.save(tmp_path / "emb.npy", np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32))
    return tmp_path


def user_dir(tmp_path):
    d = tmp_path / "my_documents"
    (d / "sub").mkdir(parents=True)
    (d / "thesis.txt").write_text("years of work")
    (d / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return d


def user_file(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    return f


def export_args(engine, out):
    # any checkpoint path: the --out check comes first, so the run stops before reading it
    return ["export", "--checkpoint", str(engine), "--out", str(out)]


def tokenize_args(tmp_path, out):
    return ["tokenize", "--items", str(tmp_path / "items.parquet"), "--embeddings", str(tmp_path / "emb.npy"),
            "--method", "rqkmeans", "--codebook-sizes", "4,4", "--out", str(out)]


@pytest.mark.parametrize("target", [user_dir, user_file])
@pytest.mark.parametrize("command", ["export", "tokenize"])
def test_out_holding_user_data_is_refused_and_untouched(tmp_path, engine, items, capsys, command, target):
    out = target(tmp_path)
    before = snapshot(out)
    args = export_args(engine, out) if command == "export" else tokenize_args(tmp_path, out)
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0], err
    assert snapshot(out) == before
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []  # no temporaries left


def test_tokenize_rewrites_its_own_output(tmp_path, items):
    out = tmp_path / "sids"
    assert main(tokenize_args(tmp_path, out)) == 0
    first = (out / "sids.json").read_bytes()
    assert main(tokenize_args(tmp_path, out)) == 0  # its own earlier output: replaced, same result
    assert (out / "sids.json").read_bytes() == first


def test_file_output_onto_a_directory_is_one_line_error(tmp_path, engine, capsys):
    pq.write_table(pa.table({"user_id": [1], "item_ids": [[1, 2]]}), tmp_path / "seq.parquet")
    out = user_dir(tmp_path)
    before = snapshot(out)
    assert main(["retrieve", "--engine", str(engine), "--sequences", str(tmp_path / "seq.parquet"),
                 "--out", str(out), "--k", "5", "--beam-width", "8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a directory" in err[0], err
    assert snapshot(out) == before


def test_an_engine_directory_has_the_usual_permissions(tmp_path, engine):
    import os
    import stat
    umask = os.umask(0o022)
    try:
        assert main(export_args(engine, tmp_path / "unused")) == 1  # not a checkpoint: the path is only checked
        from sidgr.inference.weights import load_engine, save_engine
        files = load_engine(engine)
        save_engine(tmp_path / "copy", files.arch, files.state_dict, files.mapping)
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "copy").stat().st_mode) == 0o755
    for f in (tmp_path / "copy").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
