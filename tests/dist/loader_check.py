"""torchrun check of the loader across real processes: TP peers get identical batches, DP shards are disjoint
and complete, and every global batch is the same as a single-process loader's (launched by tests/test_loader.py).

    PYTHONPATH=tests torchrun --standalone --nproc_per_node=4 tests/dist/loader_check.py <parquet> <tp> [windows]
Rank layout as Megatron's default order: tp rank = rank % tp, dp rank = rank // tp.
"""
from __future__ import annotations

import hashlib
import sys


def batch_digest(batch) -> str:
    h = hashlib.sha256()
    for t in (batch.sids, batch.lengths, batch.user_ids):
        h.update(t.numpy().tobytes())
    return h.hexdigest() + f":{batch.real_size}"


def main() -> None:
    import torch.distributed as dist

    from sidgr.training.loader import SequenceLoader
    from test_loader import cfg, make_mapping  # tests/ is on the workers' PYTHONPATH (launch.run_torchrun)

    path, tp = sys.argv[1], int(sys.argv[2])
    windows = sys.argv[3] if len(sys.argv) > 3 else "recent"
    c = cfg(windows=windows, max_items=3 if windows != "recent" else 6)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dp_size, dp_rank = world // tp, rank // tp
    loader = SequenceLoader(path, make_mapping(), c, dp_rank, dp_size, training=True)
    batches = list(loader) + list(loader)  # two epochs
    mine = {"dp_rank": dp_rank, "digests": [batch_digest(b) for b in batches],
            "users": [b.user_ids[:b.real_size].tolist() for b in batches]}
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        check(gathered, SequenceLoader(path, make_mapping(), c, 0, 1, training=True), tp, windows)
    dist.barrier()
    dist.destroy_process_group()


def check(gathered: list[dict], whole_loader, tp: int, windows: str = "recent") -> None:
    whole = [b.user_ids[:b.real_size].tolist() for b in list(whole_loader) + list(whole_loader)]
    by_dp: dict[int, dict] = {}
    for rank, got in enumerate(gathered):
        first = by_dp.setdefault(got["dp_rank"], got)
        assert got["digests"] == first["digests"], f"rank {rank}: TP peers of dp rank {got['dp_rank']} differ"
    for i, users in enumerate(whole):
        split = sum((by_dp[r]["users"][i] for r in sorted(by_dp)), [])
        assert split == users, f"global batch {i}: DP shards {split} != single-process {users}"
    per_epoch = len(whole) // 2
    for e in range(2):
        seen = sum(whole[e * per_epoch:(e + 1) * per_epoch], [])
        assert len(seen) == whole_loader.num_users, f"epoch {e}: {len(seen)} rows, want {whole_loader.num_users}"
        if windows != "strided":  # strided: a user has several windows per epoch
            assert len(seen) == len(set(seen)), f"epoch {e}: duplicate users"
    print(f"OK: {len(gathered)} ranks, tp={tp}, {len(whole)} global batches checked ({windows})")


if __name__ == "__main__":
    main()
