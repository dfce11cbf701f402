"""items.parquet (+ optional embeddings file) -> embeddings -> quantizer -> dedup level -> SID mapping + diagnostics
(+ tokenizer.pt: the codebooks, for `sidgr tokenize --extend`).

Outputs go to a staging folder inside OUT and are moved into OUT only once everything has been written, so a
failure or a kill leaves no partial output (and removes OUT itself when this run created it).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sidgr.errors import input_error
from sidgr.io import atomic_path, check_output, write_json
from sidgr.sid.mapping import SIDMapping
from sidgr.tokenize.dedup import add_dedup_level
from sidgr.tokenize.embed import EmbedConfig, Encoder, embed_texts, load_embedding_file
from sidgr.tokenize.quantized import Quantized

METHODS = ("rqkmeans", "balanced", "rqvae")
# Measured on ml-100k (1,682 items, MiniLM): balanced 3x64 leaves 5% of items colliding before dedup (plain
# RQ-KMeans 3x32: 28%, 3x64: 45%); the floor is 2.1% (36 items with identical text).
DEFAULT_METHOD = "balanced"
DEFAULT_CODEBOOK_SIZES = [64, 64, 64]


@dataclass
class TokenizeConfig:
    method: str = DEFAULT_METHOD
    codebook_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_CODEBOOK_SIZES))
    seed: int = 0
    dedup: bool = True
    chunk_size: int | None = None
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    progress: bool = True


def read_item_texts(path: str | os.PathLike, first_id: int = 0) -> list[str]:
    """Texts in item-id order; item ids must be first_id .. first_id + n - 1 (0..N-1 for a catalog; the ids after
    the catalog for the new items of `sidgr tokenize --extend`)."""
    from sidgr.data.readers import open_parquet

    path = Path(path)
    if not path.is_file():
        raise input_error(path, "path", str(path), "items file does not exist (run `sidgr prepare` first)")
    table = open_parquet(path).read()
    for col in ("item_id", "text"):
        if col not in table.column_names:
            raise input_error(path, "columns", table.column_names, f"missing column {col!r}")
    ids = table.column("item_id").to_numpy(zero_copy_only=False).astype(np.int64)
    if first_id and ids.size and ids.min() < first_id:
        raise input_error(path, "item_id", int(ids.min()), f"already exists (the catalog has items 0..{first_id - 1})")
    order = np.argsort(ids, kind="stable")
    want = np.arange(first_id, first_id + ids.size)
    if not np.array_equal(ids[order], want):
        bad = int(np.flatnonzero(ids[order] != want)[0])
        where = " (contiguous after the catalog)" if first_id else ""
        raise input_error(path, f"item_id (sorted row {bad})", int(ids[order][bad]),
                          f"item ids must be {first_id}..{first_id + ids.size - 1}{where}")
    texts = table.column("text").to_pylist()
    for row, text in enumerate(texts):
        if text is None:
            raise input_error(path, f"row {row} text", None, "item text is null")
    return [texts[i] for i in order]


def item_embeddings(items: str | os.PathLike, embeddings: str | os.PathLike | None, cfg: TokenizeConfig,
                    encoder: Encoder | None = None) -> tuple[np.ndarray, str, dict]:
    """(embeddings [N, D], embedding model name for the metadata, stats)."""
    texts = read_item_texts(items)
    if embeddings is not None:
        return load_embedding_file(embeddings, len(texts)), f"file:{Path(embeddings).name}", {}
    x, stats = embed_texts(texts, cfg.embed, encoder, cfg.progress)
    return x, cfg.embed.model_name, stats


def quantize(x: np.ndarray, cfg: TokenizeConfig) -> Quantized:
    """Runs the chosen quantizer; its config dataclass takes codebook sizes and seed from `cfg`, the rest
    from gin bindings or its defaults."""
    common = dict(codebook_sizes=list(cfg.codebook_sizes), seed=cfg.seed)
    if cfg.method == "rqkmeans":
        from sidgr.tokenize.rqkmeans import RQKMeansConfig, rq_kmeans
        return rq_kmeans(x, RQKMeansConfig(**common), cfg.progress)
    if cfg.method == "balanced":
        from sidgr.tokenize.balanced import BalancedConfig, balanced_rq_kmeans
        return balanced_rq_kmeans(x, BalancedConfig(**common), cfg.progress)
    if cfg.method == "rqvae":
        from sidgr.tokenize.rqvae import RQVAEConfig, rq_vae
        return rq_vae(x, RQVAEConfig(**common), cfg.progress)
    raise input_error("--method", "method", cfg.method, f"expected one of {', '.join(METHODS)}")


def build_mapping(quantized: Quantized, cfg: TokenizeConfig, embedding_model: str) -> SIDMapping:
    codes, sizes = quantized.codes, list(quantized.codebook_sizes)
    if cfg.dedup:
        codes, dedup_size = add_dedup_level(codes)
        sizes.append(dedup_size)
    meta = {
        "method": cfg.method,
        "embedding_model": embedding_model,
        "seed": cfg.seed,
        "dedup_level": cfg.dedup,
        "semantic_levels": len(quantized.codebook_sizes),
        "quantizer_config": quantized.config,
    }
    mapping = SIDMapping(torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64)), sizes, meta, "tokenize")
    return mapping.validate(require_unique=cfg.dedup)


def is_tokenize_dir(path: Path) -> bool:
    """A directory an earlier `sidgr tokenize` wrote (the only kind of non-empty --out it writes into)."""
    return (path / "sids.json").is_file()


@contextlib.contextmanager
def staged_outputs(out: Path):
    """Yield a staging folder inside `out`; on success move its files into `out`, on failure drop them (and
    `out` itself when it did not exist before)."""
    created = not out.exists()  # `tokenize` checked OUT (check_output) before any work
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tokenize.", suffix=".tmp", dir=out))
    try:
        yield staging
        for f in sorted(staging.iterdir()):
            os.replace(f, out / f.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_outputs(out: Path, x: np.ndarray, quantized: Quantized, mapping: SIDMapping, cfg: TokenizeConfig,
                  extra: dict) -> dict:
    from sidgr.tokenize.diagnostics import build_report, plot_code_usage, report_markdown
    from sidgr.tokenize.extend import TOKENIZER_FILE, tokenizer_state

    report = build_report(x, quantized, mapping.codes.numpy(), mapping.codebook_sizes, cfg.dedup)
    report.update(extra)
    with staged_outputs(out) as stage:
        mapping.save(stage / "sids", chunk_size=cfg.chunk_size)
        torch.save(tokenizer_state(quantized, cfg.method, mapping.meta["embedding_model"], cfg.dedup),
                   stage / TOKENIZER_FILE)  # what `sidgr tokenize --extend` needs to give new items SIDs
        write_json(stage / "diagnostics.json", report)
        with atomic_path(stage / "diagnostics.md") as tmp:
            tmp.write_text(report_markdown(report))
        with atomic_path(stage / "code_usage.png") as tmp:
            plot_code_usage(mapping.codes.numpy(), mapping.codebook_sizes, tmp)
    return report


def tokenize(items: str | os.PathLike, out: str | os.PathLike, cfg: TokenizeConfig,
             embeddings: str | os.PathLike | None = None, encoder: Encoder | None = None) -> dict:
    """The whole `sidgr tokenize` run; returns the diagnostics report."""
    check_output(Path(out), is_dir=True, replaces=is_tokenize_dir)  # before the (slow) embedding
    t0 = time.perf_counter()
    x, model_name, embed_stats = item_embeddings(items, embeddings, cfg, encoder)
    t1 = time.perf_counter()
    quantized = quantize(x, cfg)
    t2 = time.perf_counter()
    mapping = build_mapping(quantized, cfg, model_name)
    report = write_outputs(Path(out), x, quantized, mapping, cfg, {
        "embedding_model": model_name, "embedding": embed_stats,
        "seconds": {"embed": round(t1 - t0, 3), "quantize": round(t2 - t1, 3)},
    })
    return report
