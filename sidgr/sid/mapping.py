"""The PID -> SID mapping: an int64 tensor [H, N] plus metadata, optionally chunked along the item axis.

On disk (written by `save`):
  <stem>.json             metadata: codebook_sizes, num_items, method, embedding_model, seed, dedup_level, chunks
  <stem>.pt               the [H, N] tensor, or
  <stem>.chunk00000.pt …  [H, n_i] chunks concatenated along the item axis
`load` also accepts a plain tensor file written by another tool (NVIDIA's sid_gr example format: a tensor [H, N], or a
list/tuple of such chunks), inferring codebook sizes as max code + 1 per level when no metadata is beside it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sidgr.errors import input_error
from sidgr.io import atomic_path


MAX_LEVELS = 16  # more semantic levels than this is a tensor the wrong way round, not a mapping


@dataclass
class SIDMapping:
    codes: torch.Tensor  # [H, N] int64; column p is item p's SID
    codebook_sizes: list[int]
    meta: dict = field(default_factory=dict)
    source: str = "<memory>"

    @property
    def num_levels(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.codes.shape[1])

    @property
    def has_dedup_level(self) -> bool:
        return bool(self.meta.get("dedup_level", False))

    # ---- lookups -------------------------------------------------------------------------------
    def pid_to_sid(self, pids: torch.Tensor) -> torch.Tensor:
        """PIDs of any shape -> SIDs of shape [*pids.shape, H]. Raises on out-of-range PIDs."""
        pids = torch.as_tensor(pids, dtype=torch.int64)
        if pids.numel():
            lo, hi = int(pids.min()), int(pids.max())
            if lo < 0 or hi >= self.num_items:
                bad = lo if lo < 0 else hi
                raise input_error(self.source, "pid", bad, f"outside the mapping's 0..{self.num_items - 1}")
        return self.codes.t()[pids]

    # ---- validation ----------------------------------------------------------------------------
    def extends(self, trained: "SIDMapping") -> bool:
        """Whether this mapping keeps every item of `trained` at the same id and SID (a catalog grown by
        `sidgr tokenize --extend`, or the same catalog)."""
        n = trained.num_items
        return (self.num_levels == trained.num_levels and self.num_items >= n
                and bool((self.codes[:, :n] == trained.codes).all()))

    def validate(self, require_unique: bool = False) -> "SIDMapping":
        c = self.codes
        if c.dim() != 2:
            raise input_error(self.source, "shape", tuple(c.shape), "SID mapping must be a 2-D tensor [H, N]")
        if c.dtype != torch.int64:
            raise input_error(self.source, "dtype", str(c.dtype), "SID mapping must be int64")
        if c.shape[0] > MAX_LEVELS and c.shape[1] <= MAX_LEVELS:
            raise input_error(self.source, "shape", tuple(c.shape),
                              f"{c.shape[0]} levels of {c.shape[1]} items: the tensor looks transposed (expected "
                              f"[H, N], H levels of N items)")
        if len(self.codebook_sizes) != c.shape[0]:
            hint = " (it looks transposed: [N, H] instead of [H, N])" if c.shape[1] == len(self.codebook_sizes) else ""
            raise input_error(self.source, "codebook_sizes", self.codebook_sizes,
                              f"has {len(self.codebook_sizes)} levels but the tensor has H={c.shape[0]}{hint}")
        sizes = torch.tensor(self.codebook_sizes, dtype=torch.int64).unsqueeze(1)
        bad = (c < 0) | (c >= sizes)
        if bool(bad.any()):
            level, item = (int(v) for v in bad.nonzero()[0])
            raise input_error(self.source, f"level {level} item {item}", int(c[level, item]),
                              f"code outside 0..{self.codebook_sizes[level] - 1}")
        if require_unique:
            dup = first_duplicate_items(c)
            if dup is not None:
                raise input_error(self.source, f"items {dup[0]} and {dup[1]}", c[:, dup[0]].tolist(),
                                  "duplicate SID where unique SIDs are required")
        return self

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, chunk_size: int | None = None) -> Path:
        """Write `<stem>.json` + tensor file(s) next to it; returns the JSON path. Atomic per file,
        and the metadata is written last so a reader never sees metadata pointing at missing chunks."""
        path = Path(path)
        stem = path.with_suffix("") if path.suffix in (".json", ".pt") else path
        chunks = [self.codes] if not chunk_size else list(torch.split(self.codes, chunk_size, dim=1))
        names = ([f"{stem.name}.pt"] if not chunk_size
                 else [f"{stem.name}.chunk{i:05d}.pt" for i in range(len(chunks))])
        for name, chunk in zip(names, chunks):
            with atomic_path(stem.parent / name) as tmp:
                torch.save(chunk.contiguous().clone(), tmp)
        meta = dict(self.meta, codebook_sizes=list(self.codebook_sizes), num_items=self.num_items,
                    num_levels=self.num_levels, chunks=names)
        meta_path = stem.parent / f"{stem.name}.json"
        with atomic_path(meta_path) as tmp:
            tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return meta_path

    @classmethod
    def load(cls, path: str | os.PathLike | list, validate: bool = True) -> "SIDMapping":
        """Load from our JSON, a plain tensor file (with or without JSON beside it), or a list of chunk files."""
        if isinstance(path, (list, tuple)):
            codes = torch.cat([_load_tensor(Path(p)) for p in path], dim=1)
            mapping = cls(codes, _infer_sizes(codes), {}, str(path[0]))
        else:
            path = Path(path)
            if not path.exists() and path.suffix not in (".json", ".pt"):  # the stem `save` was given
                path = path.parent / f"{path.name}.json"
            if not path.exists():
                raise input_error(path, "path", str(path), "SID mapping file does not exist")
            meta_path = path if path.suffix == ".json" else path.with_suffix(".json")
            if meta_path.exists():
                meta = json.loads(meta_path.read_text())
                files = [meta_path.parent / n for n in meta.get("chunks", [meta_path.with_suffix(".pt").name])]
                codes = torch.cat([_load_tensor(f) for f in files], dim=1)
                sizes = meta.get("codebook_sizes") or _infer_sizes(codes)
                if meta.get("num_items", codes.shape[1]) != codes.shape[1]:
                    raise input_error(meta_path, "num_items", meta["num_items"],
                                      f"metadata disagrees with the {codes.shape[1]} items in its tensor file(s)")
                mapping = cls(codes, list(sizes), meta, str(meta_path))
            else:
                codes = _load_tensor(path)
                mapping = cls(codes, _infer_sizes(codes), {}, str(path))
        return mapping.validate() if validate else mapping


def _load_tensor(path: Path) -> torch.Tensor:
    if not path.exists():
        raise input_error(path, "chunk", str(path), "SID mapping chunk listed in metadata is missing")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, (list, tuple)):  # the sid_gr example writes chunk lists too
        obj = torch.cat([torch.as_tensor(t) for t in obj], dim=1)
    if not isinstance(obj, torch.Tensor):
        raise input_error(path, "type", type(obj).__name__, "expected a tensor [H, N] (or a list of chunks)")
    if obj.dim() != 2:
        raise input_error(path, "shape", tuple(obj.shape), "SID mapping must be a 2-D tensor [H, N]")
    if obj.dtype.is_floating_point:
        raise input_error(path, "dtype", str(obj.dtype), "SID codes must be integers")
    return obj.to(torch.int64)


def _infer_sizes(codes: torch.Tensor) -> list[int]:
    return [int(v) + 1 for v in codes.max(dim=1).values] if codes.numel() else [0] * codes.shape[0]


def first_duplicate_items(codes: torch.Tensor) -> tuple[int, int] | None:
    """Two item ids sharing a full SID, or None when all SIDs are unique. Vectorized (lexicographic sort)."""
    n = codes.shape[1]
    if n < 2:
        return None
    order = lexsort_items(codes)
    s = codes[:, order]
    same = (s[:, 1:] == s[:, :-1]).all(dim=0)
    if not bool(same.any()):
        return None
    i = int(same.nonzero()[0])
    a, b = sorted((int(order[i]), int(order[i + 1])))
    return a, b


def lexsort_items(codes: torch.Tensor) -> torch.Tensor:
    """Item order sorted lexicographically by SID (level 0 most significant), ties by item id."""
    order = torch.arange(codes.shape[1])
    for level in reversed(range(codes.shape[0])):
        order = order[torch.sort(codes[level, order], stable=True).indices]
    return order
