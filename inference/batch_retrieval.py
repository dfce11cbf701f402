"""Batch retrieval over a sequences parquet, resumable: each finished batch of users is a part file.

Part files live in a work directory next to the output (`.<out name>.parts/`) that records the run's parameters;
a rerun after a kill skips the finished parts, a rerun with other parameters starts over, and the parts are
combined into the output atomically at the end, so the result equals one uninterrupted run. Under several
processes (`inference/shards.py`) each rank writes the parts of its own batches and rank 0 combines them.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch
from sidgr.logs import progress_bar

from sidgr.data.readers import Candidates, iter_sequence_batches, open_parquet, write_candidates
from sidgr.data.schemas import CANDIDATES_SCHEMA
from sidgr.errors import InputError
from sidgr.io import atomic_path, check_output, write_json

from .engine import Engine
from .shards import Shard

FAIL_AFTER_ENV = "SIDGR_RETRIEVE_FAIL_AFTER"  # test hook: raise after writing this many new parts


@dataclass(frozen=True)
class RetrievalParams:
    k: int
    widths: list[int]
    exclude_history: bool
    exact: bool
    batch_size: int
    new_items: str = "model"
    dense_weight: float | None = None  # None: the engine's trained weight (see Engine.retrieve)
    dense_candidates: int | None = None  # the dense score's top items joining the beam's (see Engine.retrieve)


def retrieve_file(engine: Engine, engine_dir, sequences, out, params: RetrievalParams,
                  shard: Shard = Shard()) -> int:
    """Rank items for every user of `sequences` -> candidates parquet `out`; returns the number of users.
    With several ranks every rank calls this; each decodes its own batches, rank 0 writes `out`."""
    source, out = Path(sequences), Path(out)
    check_output(out, is_dir=False)
    total = open_parquet(source, ["user_id", "item_ids"]).metadata.num_rows
    for _ in iter_sequence_batches(source, num_items=engine.mapping.num_items, require_history=True):
        pass  # a cheap validating pass, so bad input fails before any decoding (on every rank alike)
    parts = out.with_name(f".{out.name}.parts")
    if shard.rank == 0:
        prepare_parts_dir(parts, run_fingerprint(engine_dir, source, params))
    shard.barrier()
    fail_after, written = int(os.environ.get(FAIL_AFTER_ENV, "-1")), 0
    try:
        batches = iter_sequence_batches(source, params.batch_size)  # validated by the pass above
        for i, batch in enumerate(progress_bar(batches, total=-(-total // params.batch_size), desc="retrieve",
                                       unit="batch", disable=shard.rank > 0)):
            part = parts / f"part-{i:06d}.parquet"
            if not shard.owns(i) or part.exists():
                continue
            histories = [torch.from_numpy(batch.items.row(u)) for u in range(batch.num_users)]
            ranked = engine.retrieve(histories, params.k, params.widths, params.exclude_history, params.exact,
                                     params.new_items, params.dense_weight, params.dense_candidates)
            write_candidates(part, Candidates(batch.user_ids, *ranked.to_ragged()))
            written += 1
            if written == fail_after:
                raise RuntimeError(f"{FAIL_AFTER_ENV}={fail_after}: injected failure")
        shard.barrier()
        if shard.rank == 0:
            combine_parts(parts, out)
    except InputError:
        if shard.rank == 0:
            shutil.rmtree(parts, ignore_errors=True)
        raise
    if shard.rank == 0:
        shutil.rmtree(parts, ignore_errors=True)
    return total


def run_fingerprint(engine_dir, source: Path, params: RetrievalParams) -> dict:
    st = source.stat()
    engine_dir = Path(engine_dir)
    return {"sequences": str(source.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "engine": hashlib.sha256((engine_dir / "engine.json").read_bytes()).hexdigest(),
            "weights_mtime_ns": (engine_dir / "model.safetensors").stat().st_mtime_ns, **asdict(params)}


def prepare_parts_dir(parts: Path, fingerprint: dict) -> None:
    """Reuse the work directory of an interrupted identical run; otherwise start a fresh one."""
    params = parts / "params.json"
    if parts.exists() and (not params.exists() or json.loads(params.read_text()) != fingerprint):
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not params.exists():
        write_json(params, fingerprint)


def combine_parts(parts: Path, out: Path) -> None:
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, CANDIDATES_SCHEMA) as writer:
            for f in sorted(parts.glob("part-*.parquet")):
                writer.write_table(pq.read_table(f, schema=CANDIDATES_SCHEMA))
