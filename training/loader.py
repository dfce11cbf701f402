"""Streaming SID loader: sequences parquet -> per-DP-rank batches of right-padded SIDs, with exact resume.

Design
------
Construction makes one streaming pass over the file (record batches of `record_batch_rows`, row group by row
group): it validates every PID against the mapping (an out-of-range PID is an `InputError` naming the file, the
user_id and the value), counts each user's items (history, plus `target` in validation files) and keeps only a
1-byte eligibility flag per row (users with fewer than `min_items` items are skipped and counted). Nothing else
of the file stays in memory.

The user order of an epoch is a permutation of the eligible rows that depends only on (seed, epoch) and on the
file's row-group layout, never on the DP layout:
  1. the row groups are visited in a seeded random order (random access in parquet is per row group);
  2. the eligible rows, in that read order, are cut into windows of `shuffle_window_rows` users, and each
     window is permuted by its own generator seeded with (seed, epoch, window).
So every epoch is read sequentially (row group by row group, record batch by record batch) while each global
batch mixes users from a window of up to `shuffle_window_rows` users drawn from randomly ordered row groups: the
memory is one window (plus one record batch), not the file. Mixing is as good as the row groups are small
relative to the file; writers of large files should use several row groups (e.g. <= 64k users each).
`shuffle=False` (and validation, `training=False`) uses the file order.

Global batch i is positions [i*G, (i+1)*G) of that order (G = global_batch_size); DP rank r owns the contiguous
slice [i*G + r*b, i*G + (r+1)*b), b = G / dp_size. Shards are disjoint and together cover the epoch; the last
global batch may be short and each rank pads its batch to b rows (lengths 0, user_ids -1, `real_size` = real
rows, possibly 0). Every rank streams the whole file but converts only its own rows (PID -> SID happens when a
batch is emitted). TP peers pass the same dp_rank and so build identical batches.

Training windows (`DataConfig.windows`): "recent" makes one row per user (its most recent max_items items).
"strided" makes ceil((n-1)/(max_items-1)) rows from a user with n items: windows of max_items items ending at
item n, n-(max_items-1), …, so consecutive windows share one item and every item after the first is a target
exactly once per epoch (`targets_per_window` = m: windows end at n, n-m, …, and only a row's last m items are
targets, so each target reads more context; the trainer's layouts honour it). "random" makes one row per user
ending at a random item (seeded by seed, epoch and the row group). Everything above then applies to rows
instead of users: the epoch order permutes rows, a user's windows sit next to each other in read order (and are
shuffled apart within a shuffle window), and the state is still (epoch, batches handed out), so DP sharding, TP
peers and exact resume are unchanged.

Exact resume: the state is (epoch, batches handed out in that epoch); since the order is layout-independent, a
run may even resume with another DP size as long as global_batch_size is unchanged. On resume the reader starts
at the first row group that holds the window containing the first unconsumed position.

Workers (`num_workers = n > 0`): n DataLoader processes each stream the file and build every n-th batch; the
DataLoader's round-robin hands them back in order, so batches and resume are identical to `num_workers = 0`.
Measured (`scripts/bench_loader.py`, 100k users, 2 loaded cores): inline ~2,600 batches/s of 128 users; 1 or 2
workers ~260-340 batches/s (inter-process transfer per batch dominates, and each worker decodes the whole file).
Workers do not pay here: keep `num_workers = 0` (the default).

Memory: a 1-byte eligibility flag per user, one window of this rank's rows (PIDs, [rows, max_items] int64), the
current record batch, and whatever pyarrow buffers for the row group being read (keep row groups moderate).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sidgr.data.readers import open_parquet, sequence_batch
from sidgr.data.sequences import SequenceBatch
from sidgr.errors import input_error
from sidgr.sid.mapping import SIDMapping
from sidgr.training.loader_config import DataConfig
from sidgr.training.loader_order import EpochOrder, RowBuffer, epoch_rng, window_ends, window_units

__all__ = ["Batch", "DataConfig", "SequenceLoader"]


@dataclass
class Batch:
    sids: torch.Tensor  # [b, L, H] int64 right-padded items' codes (0 on padding), L = max_items
    lengths: torch.Tensor  # [b] items per row (0 for padding rows)
    user_ids: torch.Tensor  # [b] (-1 for padding rows)
    real_size: int  # rows that are real users; rows past it are padding

    def to(self, device) -> "Batch":
        return Batch(self.sids.to(device), self.lengths.to(device), self.user_ids.to(device), self.real_size)


# ---- the pre-pass -----------------------------------------------------------------------------------------------
@dataclass
class _FileIndex:
    rg_rows: np.ndarray  # [R] rows per row group
    rg_start: np.ndarray  # [R] first global row of each row group
    rg_eligible: np.ndarray  # [R] training rows (windows) per row group
    eligible: np.ndarray  # [N] bool
    skipped: int
    units: np.ndarray | None = None  # [N] training rows (windows) of each file row; None = eligible (one each)

    def row_units(self, start: int, stop: int) -> np.ndarray:
        if self.units is None:
            return self.eligible[start:stop].astype(np.int64)
        return self.units[start:stop]

    @property
    def num_eligible(self) -> int:
        return int(self.rg_eligible.sum())


def _item_counts(sb: SequenceBatch) -> np.ndarray:
    """Items per row as the loader sees them: the history, plus the target in validation files."""
    return sb.lengths + (1 if sb.targets is not None else 0)


def _open(path, append_target: bool):
    return open_parquet(path, ["user_id", "item_ids"] + (["target"] if append_target else []))


def _scan(path, mapping: SIDMapping, cfg: DataConfig, append_target: bool, windows: str = "recent") -> _FileIndex:
    with _open(path, append_target) as pf:
        return _scan_file(pf, path, mapping, cfg, append_target, windows)


def _scan_file(pf: pq.ParquetFile, path, mapping: SIDMapping, cfg: DataConfig, append_target: bool,
               windows: str = "recent") -> _FileIndex:
    meta = pf.metadata
    rg_rows = np.array([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], dtype=np.int64)
    rg_start = np.concatenate([[0], np.cumsum(rg_rows)[:-1]]).astype(np.int64)
    eligible = np.zeros(int(rg_rows.sum()), dtype=bool)
    rg_eligible = np.zeros(len(rg_rows), dtype=np.int64)
    units = np.zeros(int(rg_rows.sum()), dtype=np.int64) if windows == "strided" else None
    for g in range(len(rg_rows)):
        row = int(rg_start[g])
        for batch in _iter_row_group(pf, g, cfg.record_batch_rows, append_target):
            cols = sequence_batch(batch, path, mapping.num_items)
            ok = _item_counts(cols) >= cfg.min_items
            eligible[row:row + len(ok)] = ok
            if units is None:
                rg_eligible[g] += int(ok.sum())
            else:
                u = window_units(_item_counts(cols), ok, windows, cfg.window_step)
                units[row:row + len(ok)] = u
                rg_eligible[g] += int(u.sum())
            row += len(ok)
    return _FileIndex(rg_rows, rg_start, rg_eligible, eligible, int(len(eligible) - eligible.sum()), units)


def _iter_row_group(pf: pq.ParquetFile, g: int, rows: int, append_target: bool) -> Iterator[pa.RecordBatch]:
    columns = ["user_id", "item_ids"] + (["target"] if append_target else [])
    return pf.iter_batches(batch_size=rows, row_groups=[g], columns=columns, use_threads=False)


# ---- the loader -------------------------------------------------------------------------------------------------
class SequenceLoader:
    """An iterable over one epoch at a time (see the module docstring).

    Training (`training=True`): each `iter()` continues from the state (epoch, batches handed out) and, once the
    epoch is exhausted, the next `iter()` starts the next epoch. Take `state_dict()` after the step that used the
    last batch handed out. Validation (`training=False`): every `iter()` is one full pass over all eligible
    users in file order.
    """

    def __init__(self, path, mapping: SIDMapping, cfg: DataConfig, dp_rank: int, dp_size: int,
                 training: bool, append_target: bool = False):
        cfg.check(dp_size)
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank={dp_rank} outside 0..{dp_size - 1}")
        self.path, self.mapping, self.cfg = str(path), mapping, cfg
        self.dp_rank, self.dp_size, self.training, self.append_target = dp_rank, dp_size, training, append_target
        self.shuffle = bool(cfg.shuffle and training)
        self.windows = cfg.windows if training else "recent"
        self.rank_batch = cfg.global_batch_size // dp_size
        self.index = _scan(self.path, mapping, cfg, append_target, self.windows)
        if self.index.num_eligible == 0:
            raise input_error(self.path, "min_items", cfg.min_items,
                              f"no user has enough items ({self.index.skipped} users skipped)")
        self.num_users = self.index.num_eligible  # training rows (= users unless windows="strided")
        self.num_batches = math.ceil(self.num_users / cfg.global_batch_size)
        self.skipped_users = self.index.skipped
        # [N+1, H]: row N is all zeros, the PID used for padding, so one gather yields zero-padded SIDs
        pad_row = torch.zeros(1, mapping.num_levels, dtype=torch.int64)
        self._codes = torch.cat([mapping.codes.t(), pad_row]).contiguous()
        self._pad_pid = mapping.num_items
        self._epoch = 0
        self._consumed = 0

    # ---- iteration ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        if not self.training:
            yield from self._produce(0, 0)
            return
        if self._consumed >= self.num_batches:
            self._epoch, self._consumed = self._epoch + 1, 0
        epoch = self._epoch
        for batch in self._produce(epoch, self._consumed):
            self._consumed += 1
            yield batch
        self._epoch, self._consumed = epoch + 1, 0

    def _produce(self, epoch: int, start: int) -> Iterator[Batch]:
        if self.cfg.num_workers == 0:
            return self.epoch_batches(epoch, start)
        dataset = _WorkerDataset(self, epoch, start, self.cfg.num_workers)
        return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.cfg.num_workers))

    # ---- resume ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "batches_consumed": self._consumed, "seed": self.cfg.seed,
                "global_batch_size": self.cfg.global_batch_size, "shuffle": self.shuffle,
                "shuffle_window_rows": self.cfg.shuffle_window_rows, "num_users": self.num_users,
                "num_row_groups": len(self.index.rg_rows), "dp_rank": self.dp_rank, "dp_size": self.dp_size,
                "windows": self.windows, "max_items": self.cfg.max_items, "window_step": self.cfg.window_step}

    def load_state_dict(self, state: dict) -> None:
        """Continue where `state` stopped. The DP layout may differ (global batches do not depend on it); the
        settings that define the order must not."""
        mine = self.state_dict()
        for key in ("seed", "global_batch_size", "shuffle", "shuffle_window_rows", "num_users", "num_row_groups"):
            if state[key] != mine[key]:
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has {mine[key]!r}: "
                                 "resuming would not reproduce the same batches")
        # states written before the windows switch existed used "recent" windows
        windows = state.get("windows", "recent")
        theirs = (windows, state.get("max_items"), state.get("window_step", (state.get("max_items") or 0) - 1))
        ours = (self.windows, self.cfg.max_items, self.cfg.window_step)
        if theirs[0] != ours[0] or (windows != "recent" and theirs != ours):
            raise ValueError(f"loader state has windows, max_items, window_step={theirs} but this loader has "
                             f"{ours}: resuming would not reproduce the same batches")
        self._epoch, self._consumed = int(state["epoch"]), int(state["batches_consumed"])

    # ---- one epoch ------------------------------------------------------------------------------------------
    def epoch_batches(self, epoch: int, start: int = 0, stride: int = 1, offset: int = 0) -> Iterator[Batch]:
        """Batches start, start+1, … of `epoch` for this rank; with stride > 1 only those k with
        (k - start) % stride == offset (one worker's share)."""
        order = EpochOrder(self.index, self.cfg.seed, epoch, self.cfg.shuffle_window_rows, self.shuffle)
        buf = RowBuffer(self.cfg.max_items)
        todo = [k for k in range(start, self.num_batches) if (k - start) % stride == offset]
        if not todo:
            return
        with _open(self.path, self.append_target) as pf:
            yield from self._stream(pf, order, buf, start, stride, offset, todo)

    def _stream(self, pf, order: EpochOrder, buf: RowBuffer, start: int, stride: int, offset: int,
                todo: list[int]) -> Iterator[Batch]:
        G, b, r = self.cfg.global_batch_size, self.rank_batch, self.dp_rank
        next_k = 0  # index into todo
        rg_first = order.first_row_group(start * G)
        t = int(order.read_start[rg_first])  # eligible rows read so far, in read order
        for g in order.rg_order[rg_first:]:
            row = int(self.index.rg_start[g])
            uniforms = (epoch_rng(self.cfg.seed, order.epoch, 2, int(g)).random(int(self.index.rg_rows[g]))
                        if self.windows == "random" else None)
            for batch in _iter_row_group(pf, int(g), self.cfg.record_batch_rows, self.append_target):
                n = batch.num_rows
                units = self.index.row_units(row, row + n)
                in_rg = row - int(self.index.rg_start[g])
                row += n
                if not units.any():
                    continue
                elig = np.repeat(np.arange(n), units)  # one entry per training row, a user's windows together
                unit = np.arange(elig.size) - np.repeat(np.cumsum(units) - units, units)
                p = order.positions(t + np.arange(elig.size, dtype=np.int64))
                t += elig.size
                k, slot = p // G, p % G - r * b
                mine = (slot >= 0) & (slot < b) & (k >= start) & ((k - start) % stride == offset)
                if mine.any():
                    cols = sequence_batch(batch, self.path)
                    ends = None
                    if self.windows != "recent":
                        sel = elig[mine]
                        u = uniforms[in_rg + sel] if uniforms is not None else None
                        ends = window_ends(np.diff(cols.offsets)[sel], unit[mine], self.windows,
                                           self.cfg.window_step, u)
                    pids, lens = self._truncate(cols, elig[mine], ends)
                    buf.put(k[mine] * b + slot[mine], pids, lens, cols.user_ids[elig[mine]])
                done = order.completed(t)
                while next_k < len(todo) and min(todo[next_k] * G + (r + 1) * b, self.num_users) <= done:
                    yield self._emit(buf, todo[next_k])
                    next_k += 1
                if next_k == len(todo):
                    return

    def _truncate(self, cols: SequenceBatch, rows: np.ndarray,
                  ends: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The most recent max_items items (history, then target) of `rows`, right-padded with the pad PID;
        with `ends` (training files only), the max_items items before history position ends[i] instead."""
        L = self.cfg.max_items
        has_t = 1 if cols.targets is not None else 0
        if ends is None:
            end, n_items = cols.offsets[rows + 1], _item_counts(cols)[rows]
        else:
            end, n_items = cols.offsets[rows] + ends, ends
        keep = np.minimum(n_items, L)
        hist = keep - has_t
        col = np.arange(L, dtype=np.int64)
        in_hist = col[None, :] < hist[:, None]
        pids = np.full((len(rows), L), self._pad_pid, dtype=np.int64)
        if cols.item_ids.size:
            idx = (end - hist)[:, None] + col[None, :]
            pids[in_hist] = cols.item_ids[idx[in_hist]]
        if has_t:
            pids[np.arange(len(rows)), hist] = cols.single_targets(self.path)[rows]
        return pids, keep

    def _emit(self, buf: RowBuffer, k: int) -> Batch:
        G, b = self.cfg.global_batch_size, self.rank_batch
        real = min(b, max(0, self.num_users - (k * G + self.dp_rank * b)))
        pids, lens, uids = buf.take(k * b, b)
        buf.release_before(k * b + b)
        pids[real:], lens[real:], uids[real:] = self._pad_pid, 0, -1
        # index_select, not advanced indexing: ~50x faster for this gather on CPU
        sids = self._codes.index_select(0, torch.from_numpy(pids).view(-1)).view(b, self.cfg.max_items, -1)
        return Batch(sids, torch.from_numpy(lens), torch.from_numpy(uids), real)


class _WorkerDataset(torch.utils.data.IterableDataset):
    """One epoch split over DataLoader workers: worker w builds batches start+w, start+w+n, …"""

    def __init__(self, loader: SequenceLoader, epoch: int, start: int, num_workers: int):
        self.loader, self.epoch, self.start, self.num_workers = loader, epoch, start, num_workers

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        offset = info.id if info is not None else 0
        stride = self.num_workers if info is not None else 1
        return self.loader.epoch_batches(self.epoch, self.start, stride, offset)
