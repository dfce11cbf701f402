"""The loader's epoch order, per-rank row buffer and training windows (see `training/loader.py`'s docstring)."""
from __future__ import annotations

import numpy as np


# ---- training windows -------------------------------------------------------------------------------------------
def window_units(num_items: np.ndarray, eligible: np.ndarray, windows: str, step: int) -> np.ndarray:
    """Training rows each file row contributes per epoch (0 for skipped users; `step`: DataConfig.window_step)."""
    if windows == "strided":
        units = np.maximum(1, -(-(num_items - 1) // step))
    else:
        units = np.ones_like(num_items)
    return np.where(eligible, units, 0).astype(np.int64)


def window_ends(num_items: np.ndarray, unit: np.ndarray, windows: str, step: int,
                uniforms: np.ndarray | None = None) -> np.ndarray:
    """Exclusive end (an item count) of the `unit`-th window of users with `num_items` items."""
    if windows == "strided":
        return num_items - unit * step
    if windows == "random":
        drawn = 2 + np.floor(uniforms * (num_items - 1)).astype(np.int64)  # uniform over 2..n
        return np.where(num_items >= 2, np.minimum(drawn, num_items), num_items)
    return num_items


# ---- the epoch order --------------------------------------------------------------------------------------------
def epoch_rng(seed: int, epoch: int, kind: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(epoch, kind, index)))


class EpochOrder:
    """Maps the t-th eligible row in read order to its position in the epoch's user order."""

    def __init__(self, index, seed: int, epoch: int, window: int, shuffle: bool):
        n_rg = len(index.rg_rows)
        self.shuffle, self.seed, self.epoch, self.window = shuffle, seed, epoch, window
        self.rg_order = epoch_rng(seed, epoch, 0, 0).permutation(n_rg) if shuffle else np.arange(n_rg)
        self.read_start = np.concatenate([[0], np.cumsum(index.rg_eligible[self.rg_order])]).astype(np.int64)
        self.total = index.num_eligible
        self._perms: dict[int, np.ndarray] = {}

    def positions(self, t: np.ndarray) -> np.ndarray:
        if not self.shuffle:
            return t
        w = t // self.window
        out = np.empty_like(t)
        for win in np.unique(w):
            sel = w == win
            out[sel] = win * self.window + self._perm(int(win))[t[sel] - win * self.window]
        return out

    def first_row_group(self, position: int) -> int:
        """Index into rg_order of the row group where reading must start to produce `position` onwards."""
        start = (position // self.window) * self.window if self.shuffle else position
        return int(np.searchsorted(self.read_start, start, side="right") - 1)

    def completed(self, t_read: int) -> int:
        """Positions [0, completed) are all known once the first t_read eligible rows have been read."""
        if t_read >= self.total:
            return self.total
        return (t_read // self.window) * self.window if self.shuffle else t_read

    def _perm(self, win: int) -> np.ndarray:
        if win not in self._perms:
            self._perms = {w: p for w, p in self._perms.items() if w >= win - 1}
            size = min(self.window, self.total - win * self.window)
            self._perms[win] = epoch_rng(self.seed, self.epoch, 1, win).permutation(size)
        return self._perms[win]


class RowBuffer:
    """Rows of one rank keyed by the rank's stream index j (PIDs right-padded to L), bounded by what is open."""

    def __init__(self, L: int):
        self.base = 0
        self.pids = np.zeros((0, L), dtype=np.int64)
        self.lens = np.zeros(0, dtype=np.int64)
        self.uids = np.zeros(0, dtype=np.int64)

    def put(self, j: np.ndarray, pids: np.ndarray, lens: np.ndarray, uids: np.ndarray) -> None:
        need = int(j.max()) - self.base + 1
        if need > len(self.lens):
            grow = max(need, 2 * len(self.lens))
            self.pids = np.concatenate([self.pids, np.zeros((grow - len(self.lens), self.pids.shape[1]), np.int64)])
            self.lens = np.concatenate([self.lens, np.zeros(grow - len(self.lens), np.int64)])
            self.uids = np.concatenate([self.uids, np.zeros(grow - len(self.uids), np.int64)])
        k = j - self.base
        self.pids[k], self.lens[k], self.uids[k] = pids, lens, uids

    def take(self, j0: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows j0 … j0+n-1 (rows never put, padding past the end of the epoch, come back as zeros)."""
        lo = j0 - self.base
        have = max(0, min(n, len(self.lens) - lo))
        pids = np.zeros((n, self.pids.shape[1]), np.int64)
        lens, uids = np.zeros(n, np.int64), np.zeros(n, np.int64)
        rows = slice(lo, lo + have)
        pids[:have], lens[:have], uids[:have] = self.pids[rows], self.lens[rows], self.uids[rows]
        return pids, lens, uids

    def release_before(self, j: int) -> None:
        drop = j - self.base
        if drop > 0 and drop * 2 >= len(self.lens):
            self.pids, self.lens, self.uids = self.pids[drop:], self.lens[drop:], self.uids[drop:]
            self.base = j
