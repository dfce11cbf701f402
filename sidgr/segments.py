"""Where one model beats another: the evaluated users split into segments by how often their target item occurs
in the training data (or by their history length), and per segment each model's mean metric and its paired
difference to a baseline with a bootstrap CI (users resampled jointly within the segment).

    sidgr report segments --run sasrec_ce=RUN/sasrec_ce/test --run sid-gr=RUN/sidgr_collab/test \\
        --paired-baseline sasrec_ce --train DATA/train.parquet --targets DATA/test.parquet --out RUN/segments

Segments are quantiles of the users' keys; equal keys stay in one segment, so segments can differ in size (their
user counts are printed). The key of a user with several targets is their mean training count.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sidgr.errors import input_error

SEGMENT_KEYS = ("target-popularity", "history-length")
KEY_LABELS = {"target-popularity": "target's training interactions", "history-length": "history length"}


@dataclass(frozen=True)
class Segment:
    low: float  # smallest key in the segment
    high: float  # largest key in the segment
    mask: np.ndarray  # [U] bool over the users in user-id order

    @property
    def label(self) -> str:
        return f"{self.low:g}" if self.low == self.high else f"{self.low:g}–{self.high:g}"


def user_keys(by: str, targets_path, train_path, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """(user ids sorted, one key per user): the target's count in the training sequences, or the history length."""
    from sidgr.data.readers import read_sequences, read_targets

    if by not in SEGMENT_KEYS:
        raise input_error("--by", "value", by, f"expected one of {', '.join(SEGMENT_KEYS)}")
    targets, has_history = read_targets(targets_path, num_items)
    order = np.argsort(targets.user_ids, kind="stable")
    if by == "history-length":
        if not has_history:
            raise input_error(targets_path, "item_ids", "missing", "history-length segments need the histories")
        keys = np.diff(targets.items.offsets).astype(np.float64)
    else:
        counts = np.bincount(read_sequences(train_path, with_timestamps=False, with_target=False,
                                            num_items=num_items).item_ids, minlength=num_items)
        per_target = counts[targets.targets.values].astype(np.float64)
        lengths = np.diff(targets.targets.offsets)
        keys = np.add.reduceat(per_target, targets.targets.offsets[:-1]) / np.maximum(lengths, 1)
    return targets.user_ids[order], keys[order]


def quantile_segments(keys: np.ndarray, count: int) -> list[Segment]:
    """Up to `count` segments of about equal size in key order. Equal keys stay together: a run of ties goes to the
    segment its middle rank falls in (so a key held by many users can leave a neighbouring segment empty)."""
    if count < 1:
        raise input_error("--segments", "value", count, "expected >= 1")
    values, inverse, ties = np.unique(keys, return_inverse=True, return_counts=True)
    middle = np.cumsum(ties) - ties + (ties - 1) / 2.0  # the middle rank of each distinct key
    segment_of_value = np.floor(middle * count / len(keys)).astype(np.int64)
    of_user = segment_of_value[inverse]
    out = []
    for i in np.unique(segment_of_value):
        mask = of_user == i
        out.append(Segment(float(keys[mask].min()), float(keys[mask].max()), mask))
    return out


def segment_rows(values: dict[str, np.ndarray], baseline: str, segments: list[Segment], num_samples: int = 1000,
                 seed: int = 0) -> list[dict]:
    """Per segment: users, each run's mean, and each other run's paired difference to the baseline (mean, CI)."""
    from sidgr.metrics import bootstrap_ci

    rows = []
    for seg in segments:
        row = {"segment": seg.label, "low": seg.low, "high": seg.high, "users": int(seg.mask.sum()),
               "mean": {n: float(v[seg.mask].mean()) for n, v in values.items()}, "paired": {}}
        for name, v in values.items():
            if name != baseline:
                diff = {"diff": v[seg.mask] - values[baseline][seg.mask]}
                row["paired"][name] = bootstrap_ci(diff, num_samples, seed)["diff"]
        rows.append(row)
    return rows


def markdown(rows: list[dict], by: str, metric: str, baseline: str) -> str:
    from sidgr.report import paired_cell

    names = list(rows[0]["mean"])
    others = [n for n in names if n != baseline]
    header = [KEY_LABELS[by], "users", *[f"{n} {metric}" for n in names], *[f"Δ {n} vs {baseline}" for n in others]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["segment"], str(r["users"]), *[f"{r['mean'][n]:.4f}" for n in names]]
        cells += [paired_cell(r["paired"][n]) for n in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(tables: dict[str, list[dict]], by: str, out_path: Path) -> Path:
    """One panel per metric: each run's mean per segment (grouped bars)."""
    from sidgr.report import _figure, _save_png

    plt, fig, axes = _figure(len(tables))
    axes = np.atleast_1d(axes)
    for ax, (metric, rows) in zip(axes, tables.items()):
        names = list(rows[0]["mean"])
        x = np.arange(len(rows))
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            ax.bar(x + (i - (len(names) - 1) / 2) * width, [r["mean"][name] for r in rows], width, label=name)
        ax.set_xticks(x, [f"{r['segment']}\n({r['users']})" for r in rows], fontsize=8)
        ax.set_xlabel(f"{KEY_LABELS[by]} (users)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save_png(fig, out_path)
    plt.close(fig)
    return out_path
