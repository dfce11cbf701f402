"""Trainer-only run measurements: throughput and peak memory (metrics.jsonl and wandb: sidgr.run_records)."""
from __future__ import annotations

import torch


class Throughput:
    """Tokens per second over the steps after the first few (which pay for warm-up)."""

    def __init__(self, warmup_steps: int):
        self.skip, self.tokens, self.seconds = warmup_steps, 0.0, 0.0

    def add(self, tokens: float, seconds: float) -> None:
        if self.skip > 0:
            self.skip -= 1
            return
        self.tokens += tokens
        self.seconds += seconds

    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


def peak_memory_mb(device: torch.device) -> dict:
    """Peak resident memory (max over ranks) and, on GPU, peak allocated device memory."""
    import resource

    import torch.distributed as dist

    vals = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0]
    if device.type == "cuda":
        vals.append(torch.cuda.max_memory_allocated() / 2**20)
    t = torch.tensor(vals, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    out = {"peak_rss_mb": float(t[0])}
    if device.type == "cuda":
        out["peak_gpu_mb"] = float(t[1])
    return out
