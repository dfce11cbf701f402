"""New items get semantic IDs from the saved tokenizer, without retraining anything (`sidgr tokenize --extend`).

`sidgr tokenize` saves what it learned beside the mapping (`tokenizer.pt`: the per-level codebooks, the embedding
model, whether a de-duplication level follows). Extending embeds only the new items (or takes their rows from an
embeddings file when the catalog was tokenized from precomputed vectors), assigns each level's code as the
residual's nearest codeword (balanced RQ-KMeans too: balance was a constraint of fitting, not of the codebooks),
gives the de-duplication level the next free code under each full semantic SID, and writes a grown mapping whose
existing items keep their SIDs bit for bit. RQ-VAE mappings cannot be extended (their encoder is not saved).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from sidgr.errors import input_error
from sidgr.sid.mapping import SIDMapping

TOKENIZER_FILE = "tokenizer.pt"
EXTENDABLE = ("rqkmeans", "balanced")


def tokenizer_state(quantized, method: str, embedding_model: str, dedup: bool) -> dict:
    return {"method": method, "embedding_model": embedding_model, "dedup_level": dedup,
            "codebooks": [torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32)) for b in quantized.codebooks],
            "extendable": method in EXTENDABLE}


def load_tokenizer(mapping_dir: Path) -> dict:
    path = mapping_dir / TOKENIZER_FILE
    if not path.is_file():
        raise input_error(mapping_dir, "--extend", str(mapping_dir),
                          f"has no saved tokenizer ({TOKENIZER_FILE}): re-run `sidgr tokenize` to extend it")
    state = torch.load(path, weights_only=True)
    if not state.get("extendable"):
        raise input_error(path, "method", state.get("method"), f"cannot be extended (only {', '.join(EXTENDABLE)})")
    return state


def assign_codes(x: np.ndarray, codebooks: list[np.ndarray], chunk: int = 1 << 16) -> np.ndarray:
    """[M, D] -> [L, M]: residual quantization with fixed codebooks (nearest codeword per level), in row chunks
    so the distance matrix stays small."""
    out = []
    for start in range(0, x.shape[0], chunk):
        residual = x[start:start + chunk].astype(np.float32)
        codes = []
        for book in codebooks:
            d = -2 * residual @ book.T + (book ** 2).sum(1)[None, :]  # + |r|^2, the same for every codeword
            level = d.argmin(1)
            residual = residual - book[level]
            codes.append(level)
        out.append(np.stack(codes))
    return np.concatenate(out, axis=1).astype(np.int64) if out else np.zeros((len(codebooks), 0), np.int64)


def next_dedup_codes(old: np.ndarray, new_semantic: np.ndarray, size: int, source) -> np.ndarray:
    """The de-duplication code of each new item: the next free code under its semantic SID, in item-id order."""
    taken: dict[tuple, int] = {}
    for col in range(old.shape[1]):
        key = tuple(old[:-1, col])
        taken[key] = max(taken.get(key, -1), int(old[-1, col]))
    out = np.empty(new_semantic.shape[1], np.int64)
    for col in range(new_semantic.shape[1]):
        key = tuple(new_semantic[:, col])
        code = taken.get(key, -1) + 1
        if code >= size:
            raise input_error(source, "de-duplication level", size,
                              f"is full under semantic SID {list(key)} (new item {col}): re-tokenize the grown "
                              "catalog instead")
        taken[key] = code
        out[col] = code
    return out


def extend_mapping(old: SIDMapping, state: dict, x_new: np.ndarray, source) -> SIDMapping:
    books = [b.numpy() for b in state["codebooks"]]
    semantic = assign_codes(x_new, books)
    codes = semantic
    if state["dedup_level"]:
        dedup = next_dedup_codes(old.codes.numpy(), semantic, old.codebook_sizes[-1], source)
        codes = np.concatenate([semantic, dedup[None, :]], axis=0)
    grown = np.concatenate([old.codes.numpy(), codes], axis=1)
    meta = {**old.meta, "extended": {"from_items": old.num_items, "new_items": int(x_new.shape[0])}}
    return SIDMapping(torch.from_numpy(grown), list(old.codebook_sizes), meta, "tokenize --extend").validate(
        require_unique=bool(state["dedup_level"]))


def extend(mapping_dir: str | os.PathLike, items: str | os.PathLike, out: str | os.PathLike,
           embeddings: str | os.PathLike | None = None, embed_cfg=None, encoder=None, progress: bool = True) -> dict:
    """The whole `sidgr tokenize --extend` run; returns its report (also written to OUT/extend.json)."""
    import shutil

    from sidgr.io import check_output, write_json
    from sidgr.tokenize.embed import EmbedConfig, embed_texts, load_embedding_file
    from sidgr.tokenize.pipeline import is_tokenize_dir, read_item_texts, staged_outputs

    mapping_dir, out = Path(mapping_dir), Path(out)
    check_output(out, is_dir=True, replaces=is_tokenize_dir)
    old = SIDMapping.load(mapping_dir / "sids.json")
    state = load_tokenizer(mapping_dir)
    texts = read_item_texts(items, first_id=old.num_items)
    if not texts:
        raise input_error(items, "rows", 0, "no new items")
    model = state["embedding_model"]
    if model.startswith("file:") and embeddings is None:
        raise input_error(mapping_dir, "embedding_model", model, "the catalog was tokenized from precomputed "
                                                                  "embeddings: pass the new items' --embeddings")
    if embeddings is not None:
        x = load_embedding_file(embeddings, len(texts))
    else:
        cfg = embed_cfg or EmbedConfig()
        cfg.model_name = model
        x, _ = embed_texts(texts, cfg, encoder, progress)
    dim = int(state["codebooks"][0].shape[1])
    if x.shape[1] != dim:
        raise input_error(embeddings or items, "embedding dimension", int(x.shape[1]), f"the tokenizer's is {dim}")
    grown = extend_mapping(old, state, x, mapping_dir)
    semantic = len(state["codebooks"])
    old_sids = {tuple(c) for c in old.codes[:semantic].t().tolist()}
    new_sids = grown.codes[:semantic, old.num_items:].t().tolist()
    report = {"from": str(mapping_dir), "old_items": old.num_items, "new_items": len(texts),
              "num_items": grown.num_items, "codebook_sizes": list(grown.codebook_sizes),
              "new_sharing_a_semantic_sid": sum(tuple(c) in old_sids for c in new_sids) / len(new_sids)}
    with staged_outputs(out) as stage:
        grown.save(stage / "sids")
        shutil.copyfile(mapping_dir / TOKENIZER_FILE, stage / TOKENIZER_FILE)
        write_json(stage / "extend.json", report)
    return report
