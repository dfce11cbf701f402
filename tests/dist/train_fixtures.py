"""A tiny, learnable SID dataset for the trainer tests (train/valid parquet + SID mapping)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from launch import REPO, run_torchrun  # noqa: F401  (REPO: re-exported for the tests)
from sidgr.sid.mapping import SIDMapping

CODEBOOK_SIZES = (8, 8, 4)  # sum 20: padded to 24 (multiple of 8) for any TP in 1, 2


def write_dataset(out: str | Path, num_items: int = 48, num_users: int = 40, seed: int = 0,
                  sizes=CODEBOOK_SIZES) -> dict:
    """Users walk the catalog with a fixed stride (item i is followed by i + stride), so the next item is
    predictable from the last one: a small model can drive the loss well down."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    codes = np.stack([rng.integers(0, c, num_items) for c in sizes]).astype(np.int64)
    codes[-1] = np.arange(num_items) % sizes[-1]  # keep SIDs mostly distinct
    SIDMapping(torch.from_numpy(codes), list(sizes), {"method": "test"}).save(out / "sids")
    seqs = []
    for u in range(num_users):
        n = int(rng.integers(4, 12))
        stride = 1 + u % 3
        start = int(rng.integers(0, num_items))
        seqs.append([(start + stride * k) % num_items for k in range(n)])
    def table(rows, with_target):
        cols = {"user_id": pa.array(range(len(rows)), pa.int64()),
                "item_ids": pa.array([r[:-1] if with_target else r for r in rows], pa.list_(pa.int64())),
                "timestamps": pa.array([list(range(len(r) - (1 if with_target else 0))) for r in rows],
                                       pa.list_(pa.int64()))}
        if with_target:
            cols["target"] = pa.array([r[-1] for r in rows], pa.int64())
        return pa.table(cols)
    pq.write_table(table([s[:-2] for s in seqs], False), out / "train.parquet", row_group_size=16)
    pq.write_table(table([s[:-1] for s in seqs], True), out / "valid.parquet", row_group_size=16)
    return {"train": str(out / "train.parquet"), "valid": str(out / "valid.parquet"),
            "mapping": str(out / "sids.json")}


def data_overrides(paths: dict) -> list[str]:
    return [f'DataConfig.train_path="{paths["train"]}"', f'DataConfig.valid_path="{paths["valid"]}"',
            f'DataConfig.mapping_path="{paths["mapping"]}"']


if __name__ == "__main__":
    print(write_dataset(sys.argv[1]))


# ---- launching (through launch.run_torchrun) ---------------------------------------------------------------------
def train(nproc: int, run_dir, paths: dict, *overrides: str, resume: bool = False, config="configs/tiny_ci.gin",
          check: bool = True):
    """`python -m sidgr.training.train` on nproc processes; fails the test on a non-zero exit unless check=False."""
    args = ["--config", config] + (["--resume"] if resume else [])
    args += [f'TrainerConfig.run_dir="{run_dir}"'] + data_overrides(paths) + list(overrides)
    return run_torchrun("sidgr.training.train", nproc, *args, timeout=240, check=check)


def read_checkpoint(ckpt_dir) -> dict:
    """All tensors of a checkpoint through torch.distributed.checkpoint alone (what export does)."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(str(ckpt_dir), f"{tmp}/sd.pt")
        return torch.load(f"{tmp}/sd.pt", weights_only=False)


def flat(d, prefix=""):
    """(name, tensor) pairs of a nested checkpoint dict; nested keys joined with '/'."""
    for k, v in d.items():
        if isinstance(v, dict):
            yield from flat(v, f"{prefix}{k}/")
        elif isinstance(v, torch.Tensor):
            yield f"{prefix}{k}", v
