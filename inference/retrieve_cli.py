"""`sidgr retrieve`: sequences parquet -> top-K candidates parquet (user_id, item_ids, scores), best first.

Streams the input in record batches. Each finished batch is written as a numbered part file in a work
directory next to the output (`.<out name>.parts/`); a rerun after a kill skips the finished parts, and the
parts are combined into the output atomically at the end, so the result equals one uninterrupted run.
The work directory records the run's parameters; a rerun with different ones starts over.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

from sidgr.errors import InputError, input_error

FAIL_AFTER_ENV = "SIDGR_RETRIEVE_FAIL_AFTER"  # test hook: raise after writing this many new parts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", required=True, help="engine directory written by `sidgr export`")
    p.add_argument("--sequences", required=True, help="parquet with user_id and item_ids (history)")
    p.add_argument("--out", required=True, help="output candidates parquet")
    p.add_argument("--k", type=int, default=100, help="candidates per user")
    p.add_argument("--beam-width", type=int, default=256, help="beam width at every step")
    p.add_argument("--beam-widths", default=None, help="comma-separated width per level (overrides --beam-width)")
    p.add_argument("--exclude-history", action="store_true", help="never return items already in the history")
    p.add_argument("--exact", action="store_true", help="score every catalog item exactly instead of beam search")
    p.add_argument("--batch-size", type=int, default=64, help="users per batch")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")


def parse_widths(args) -> int | list[int]:
    if not args.beam_widths:
        return args.beam_width
    try:
        return [int(w) for w in args.beam_widths.split(",")]
    except ValueError:
        raise input_error("--beam-widths", "beam widths", args.beam_widths, "expected integers like 64,256,1024") \
            from None


def run(args) -> int:
    import pyarrow.parquet as pq
    import torch
    from tqdm import tqdm

    from .beam import beam_widths
    from .engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.batch_size < 1:
        raise input_error("--batch-size", "batch_size", args.batch_size, "must be >= 1")
    if args.k < 1:
        raise input_error("--k", "k", args.k, "must be >= 1")
    engine = Engine.load(args.engine)
    widths = beam_widths(parse_widths(args), engine.arch.num_levels, "--beam-width(s)")
    if not args.exact and args.k > widths[-1]:
        raise input_error("--k", "k", args.k, f"larger than the final beam width {widths[-1]}")
    source = Path(args.sequences)
    if not source.exists():
        raise input_error(source, "path", str(source), "sequences file does not exist")
    reader = pq.ParquetFile(source)
    names = reader.schema_arrow.names
    for col in ("user_id", "item_ids"):
        if col not in names:
            raise input_error(source, "column", col, f"missing (columns: {names})")

    check_sequences(reader, source, engine.mapping.num_items)
    out = Path(args.out)
    parts = out.with_name(f".{out.name}.parts")
    prepare_parts_dir(parts, run_fingerprint(args, widths, source))
    fail_after = int(os.environ.get(FAIL_AFTER_ENV, "-1"))
    written = 0
    try:
        batches = reader.iter_batches(batch_size=args.batch_size, columns=["user_id", "item_ids"])
        for i, batch in enumerate(tqdm(batches, total=-(-reader.metadata.num_rows // args.batch_size),
                                       desc="retrieve", unit="batch")):
            part = parts / f"part-{i:06d}.parquet"
            if part.exists():
                continue
            users = batch.column("user_id").to_pylist()
            histories = [torch.tensor(h if h is not None else [], dtype=torch.int64)
                         for h in batch.column("item_ids").to_pylist()]
            engine.check_histories(histories, source, users)
            ranked = engine.retrieve(histories, args.k, widths, args.exclude_history, args.exact)
            write_part(part, users, *ranked.rows())
            written += 1
            if written == fail_after:
                raise RuntimeError(f"{FAIL_AFTER_ENV}={fail_after}: injected failure")
        combine_parts(parts, out)
    except InputError:
        shutil.rmtree(parts, ignore_errors=True)
        raise
    shutil.rmtree(parts, ignore_errors=True)
    print(f"wrote {out} ({reader.metadata.num_rows} users, k={args.k})")
    return 0


def check_sequences(reader, source: Path, num_items: int) -> None:
    """A cheap streaming pass over the histories, so bad input fails before any decoding."""
    import pyarrow.compute as pc

    for batch in reader.iter_batches(batch_size=65536, columns=["user_id", "item_ids"]):
        hist = batch.column("item_ids")
        lengths = pc.fill_null(pc.list_value_length(hist), 0)
        if pc.any(pc.equal(lengths, 0)).as_py():
            row = pc.index(lengths, 0).as_py()
            user = batch.column("user_id")[row].as_py()
            raise input_error(source, f"user_id {user} item_ids", [], "empty history: nothing to condition on")
        flat = pc.list_flatten(hist)
        lo, hi = pc.min_max(flat).values()
        for bad in (v.as_py() for v in (lo, hi) if not 0 <= v.as_py() < num_items):
            parent = pc.list_parent_indices(hist)
            row = parent[pc.index(flat, bad).as_py()].as_py()
            user = batch.column("user_id")[row].as_py()
            raise input_error(source, f"user_id {user} item_ids", bad,
                              f"item id outside the engine's SID mapping 0..{num_items - 1}")


def run_fingerprint(args, widths, source: Path) -> dict:
    st = source.stat()
    engine_json = Path(args.engine) / "engine.json"
    return {"sequences": str(source.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "engine": hashlib.sha256(engine_json.read_bytes()).hexdigest(),
            "weights_mtime_ns": (Path(args.engine) / "model.safetensors").stat().st_mtime_ns,
            "k": args.k, "widths": widths, "exclude_history": args.exclude_history, "exact": args.exact,
            "batch_size": args.batch_size}


def prepare_parts_dir(parts: Path, fingerprint: dict) -> None:
    """Reuse the work directory of an interrupted identical run; otherwise start a fresh one."""
    params = parts / "params.json"
    if parts.exists() and (not params.exists() or json.loads(params.read_text()) != fingerprint):
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not params.exists():
        from sidgr.io import write_json
        write_json(params, fingerprint)


def output_schema():
    import pyarrow as pa
    return pa.schema([("user_id", pa.int64()), ("item_ids", pa.list_(pa.int64())),
                      ("scores", pa.list_(pa.float32()))])


def write_part(path: Path, users, items, scores) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sidgr.io import atomic_path
    table = pa.table({"user_id": users, "item_ids": items, "scores": scores}, schema=output_schema())
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def combine_parts(parts: Path, out: Path) -> None:
    import pyarrow.parquet as pq

    from sidgr.io import atomic_path
    files = sorted(parts.glob("part-*.parquet"))
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, output_schema()) as writer:
            for f in files:
                writer.write_table(pq.read_table(f, schema=output_schema()))
