"""sidgr export-embeddings: DCP item tables -> [N, D] .npy, and the text/collab fusion."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sidgr.errors import InputError
from sidgr.inference import item_embeddings as eie


@pytest.fixture
def ckpt(tmp_path):
    import torch.distributed.checkpoint as dcp

    g = torch.Generator().manual_seed(0)
    state = {"model.embedding.items.weight": torch.randn(8, 4, generator=g),  # 5 items padded to 8 rows
             "model.head.weight": torch.randn(8, 4, generator=g),
             "model.decoder.final_layernorm.weight": torch.ones(4),
             "optimizer.state.exp_avg.model.head.weight": torch.zeros(8, 4)}
    dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp_path / "ckpt")), no_dist=True)
    return tmp_path / "ckpt", state


def test_reads_the_item_tables_without_padding(ckpt):
    path, state = ckpt
    x = eie.collab_embeddings(path, 5, "items")
    assert x.dtype == np.float32 and x.shape == (5, 4)
    np.testing.assert_allclose(x, state["model.embedding.items.weight"][:5].numpy())
    np.testing.assert_allclose(eie.collab_embeddings(path, 5, "head"), state["model.head.weight"][:5].numpy())
    both = eie.collab_embeddings(path, 5, "both")
    assert both.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(both[:, :4], axis=1), 1.0, rtol=1e-5)


def test_missing_table_is_reported(ckpt, tmp_path):
    import torch.distributed.checkpoint as dcp

    dcp.save({"model.decoder.w": torch.ones(2)}, storage_writer=dcp.FileSystemWriter(str(tmp_path / "sid")),
             no_dist=True)
    with pytest.raises(InputError, match="embedding.items.weight"):
        eie.collab_embeddings(tmp_path / "sid", 5, "items")


def test_fuse_weights_normalised_blocks():
    rng = np.random.default_rng(0)
    text, collab = rng.normal(size=(6, 3)) * 10, rng.normal(size=(6, 5))
    x = eie.fuse(text, collab, 0.3)
    assert x.shape == (6, 8)
    np.testing.assert_allclose(np.linalg.norm(x[:, :3], axis=1), 0.3, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(x[:, 3:], axis=1), 0.7, rtol=1e-6)
    with pytest.raises(ValueError):
        eie.fuse(text[:5], collab, 0.5)


def test_cli_writes_the_npy_atomically_and_rejects_bad_weight(ckpt, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sidgr import cli

    path, state = ckpt
    items = tmp_path / "items.parquet"
    pq.write_table(pa.table({"item_id": pa.array(range(5), pa.int64()), "text": [f"item {i}" for i in range(5)]}),
                   items)
    out = tmp_path / "e" / "collab.npy"
    assert cli.main(["export-embeddings", "--checkpoint", str(path), "--items", str(items), "--out", str(out)]) == 0
    np.testing.assert_allclose(np.load(out), state["model.embedding.items.weight"][:5].numpy())
    assert cli.main(["export-embeddings", "--checkpoint", str(path), "--items", str(items), "--out",
                     str(tmp_path / "bad.npy"), "--fuse-text", "1.5"]) == 1
    assert "--fuse-text" in capsys.readouterr().err and not (tmp_path / "bad.npy").exists()
