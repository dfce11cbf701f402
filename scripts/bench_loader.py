"""Loader throughput vs. what the trainer consumes.

Writes a synthetic sequences parquet (default 100k users, 3..150 items each, several row groups) and a random
SID mapping into a temporary directory, then times one epoch of `SequenceLoader` for each `--workers` value
(rank 0 of `--dp-size`), plus the construction pre-pass. The trainer's consumption is global_batch_size users
per optimizer step; the step time comes from `--step-time` or, by default, is measured on a plain-PyTorch
decoder of the ml-100k size (`--hidden/--layers`, fwd+bwd+Adam, all threads) fed by the loader's own batches.
The goal is loader batches/s >= 10x trainer steps/s.

    python scripts/bench_loader.py                         # 100k users, workers 0 1 2
    python scripts/bench_loader.py --users 20000 --workers 0 --json out.json
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sidgr.io import write_json
from sidgr.sid.mapping import SIDMapping
from sidgr.training.loader import Batch, DataConfig, SequenceLoader


def write_synthetic(path: Path, users: int, items: int, min_len: int, max_len: int, seed: int,
                    row_group_size: int) -> int:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=users)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.integers(0, items, size=int(offsets[-1]), dtype=np.int64)
    stamps = np.arange(int(offsets[-1]), dtype=np.int64)
    table = pa.table({"user_id": pa.array(np.arange(users, dtype=np.int64)),
                      "item_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(values)),
                      "timestamps": pa.ListArray.from_arrays(pa.array(offsets), pa.array(stamps))})
    pq.write_table(table, path, row_group_size=row_group_size)
    return int(offsets[-1])


def random_mapping(items: int, sizes: list[int], seed: int) -> SIDMapping:
    g = torch.Generator().manual_seed(seed)
    codes = torch.stack([torch.randint(0, c, (items,), generator=g) for c in sizes])
    return SIDMapping(codes, sizes)


def time_epoch(loader: SequenceLoader) -> tuple[float, int, int, int]:
    """Seconds for one epoch, batches, real users and real items it produced."""
    t0 = time.perf_counter()
    batches = users = items = 0
    for batch in loader:
        batches += 1
        users += batch.real_size
        items += int(batch.lengths.sum())
    return time.perf_counter() - t0, batches, users, items


class ProxyDecoder(torch.nn.Module):
    """Plain-PyTorch stand-in of the SID-GR decoder (same sizes and sequence length) to time a training step."""

    def __init__(self, vocab: int, hidden: int, layers: int, heads: int, max_len: int):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, hidden)
        self.pos = torch.nn.Embedding(max_len, hidden)
        layer = torch.nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.1, batch_first=True,
                                                 norm_first=True)
        self.block = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        S = tokens.shape[1]
        x = self.emb(tokens) + self.pos(torch.arange(S, device=tokens.device))
        mask = torch.nn.Transformer.generate_square_subsequent_mask(S, device=tokens.device)
        return self.head(self.block(x, mask=mask, is_causal=True))


def measure_step_time(batch: Batch, sizes: list[int], hidden: int, layers: int, steps: int, device: str) -> float:
    b, L, H = batch.sids.shape
    offsets = torch.tensor([0] + list(np.cumsum(sizes)[:-1]))
    tokens = torch.cat([torch.zeros(b, L, 1, dtype=torch.int64), batch.sids + offsets], dim=2).reshape(b, -1)
    model = ProxyDecoder(sum(sizes), hidden, layers, max(1, hidden // 32), tokens.shape[1]).to(device)
    tokens = tokens.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--min-len", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=150)
    ap.add_argument("--row-group-size", type=int, default=16_384)
    ap.add_argument("--codebooks", type=int, nargs="+", default=[256, 256, 256])
    ap.add_argument("--max-items", type=int, default=50)
    ap.add_argument("--global-batch", type=int, default=128)
    ap.add_argument("--dp-size", type=int, default=1)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=2, help="epochs timed per setting; the fastest is reported")
    ap.add_argument("--step-time", type=float, default=0.0, help="trainer step time in s (0 = measure a proxy)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--proxy-steps", type=int, default=2)
    ap.add_argument("--proxy-device", type=str, default="cpu", help="where the proxy trainer step runs (cuda on GPU)")
    ap.add_argument("--json", type=str, default="")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.parquet"
        t0 = time.perf_counter()
        total_items = write_synthetic(path, args.users, args.items, args.min_len, args.max_len, 0,
                                      args.row_group_size)
        print(f"wrote {args.users} users / {total_items} items in {time.perf_counter() - t0:.1f}s "
              f"({path.stat().st_size / 2**20:.0f} MiB)")
        mapping = random_mapping(args.items, args.codebooks, 0)
        H = len(args.codebooks)
        results = {"users": args.users, "items": total_items, "global_batch": args.global_batch,
                   "dp_size": args.dp_size, "max_items": args.max_items, "levels": H, "runs": []}
        first_batch = None
        for workers in args.workers:
            cfg = DataConfig(max_items=args.max_items, global_batch_size=args.global_batch, num_workers=workers)
            t0 = time.perf_counter()
            loader = SequenceLoader(path, mapping, cfg, 0, args.dp_size, training=True)
            scan_s = time.perf_counter() - t0
            first_batch = first_batch or next(iter(SequenceLoader(path, mapping, cfg, 0, 1, training=True)))
            secs, batches, users, items = min(time_epoch(loader) for _ in range(args.epochs))  # fastest epoch
            run = {"workers": workers, "scan_s": scan_s, "epoch_s": secs, "batches_per_s": batches / secs,
                   "users_per_s": users / secs, "tokens_per_s": items * (H + 1) / secs}
            results["runs"].append(run)
            print(f"workers={workers}: pre-pass {scan_s:.2f}s, epoch {secs:.2f}s, {run['batches_per_s']:.1f} "
                  f"batches/s, {run['users_per_s']:.0f} users/s, {run['tokens_per_s']:.3g} tokens/s (rank 0 of "
                  f"{args.dp_size}; tokens = items x (H+1))")

        step = args.step_time or measure_step_time(first_batch, args.codebooks, args.hidden, args.layers,
                                                   args.proxy_steps, args.proxy_device)
        tokens_per_step = args.global_batch * args.max_items * (H + 1)  # upper bound: full-length rows
        need = {"step_s": step, "batches_per_s": 1 / step, "users_per_s": args.global_batch / step,
                "tokens_per_s": tokens_per_step / step}
        results["trainer"] = need
        print(f"trainer ({'given' if args.step_time else 'proxy fwd+bwd+Adam'}): step {step:.3f}s -> "
              f"{need['batches_per_s']:.2f} steps/s, {need['users_per_s']:.0f} users/s, "
              f"{need['tokens_per_s']:.3g} tokens/s (global batch {args.global_batch} x {args.max_items} items)")
        for run in results["runs"]:
            run["ratio"] = run["batches_per_s"] / need["batches_per_s"]
            print(f"workers={run['workers']}: loader/trainer = {run['ratio']:.1f}x (goal >= 10x)")
        if args.json:
            write_json(args.json, results)


if __name__ == "__main__":
    main()
