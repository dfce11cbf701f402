"""Trainer benchmarks.

  python scripts/bench_train.py compare [--hidden 128 --layers 4 --heads 4 --ffn 512 --batch 64 --items 20]
      Step time (forward + backward + Adam) of the Megatron-Core SID-GR model vs a plain-PyTorch model of the
      same size on the same batch (nn.TransformerEncoder, pre-LN, GELU, causal mask). Steps alternate between
      the two so machine load hits both alike; medians are reported. Goal: plain / megatron >= 0.9.
  python scripts/bench_train.py ml100k [--steps 30]
      tokens/s and peak memory of configs/ml100k.gin at TP1/DP1, DP2 and TP2 (torchrun, a few steps each).
      Uses artifacts/ml100k/sids/ (or the demo's sids_balanced/), else a random 3 x 256 mapping (said so).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]


# ---- compare ---------------------------------------------------------------------------------------------------
class PlainModel(nn.Module):
    def __init__(self, vocab, hidden, layers, heads, ffn, max_positions):
        super().__init__()
        self.codes = nn.Embedding(vocab, hidden)
        self.bos = nn.Parameter(torch.randn(hidden) * 0.02)
        self.positions = nn.Embedding(max_positions, hidden)
        layer = nn.TransformerEncoderLayer(hidden, heads, ffn, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(hidden), enable_nested_tensor=False)
        self.head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, tb):
        x = torch.where(tb.is_bos.unsqueeze(-1), self.bos, self.codes(tb.tokens)) + self.positions(tb.positions)
        S = x.shape[1]
        causal = torch.ones(S, S, dtype=torch.bool).triu(1)
        h = self.encoder(x, mask=causal, is_causal=True)
        mask = tb.loss_mask
        return F.cross_entropy(self.head(h[mask]).float(), tb.labels[mask])


def compare(args) -> dict:
    from sidgr.token_layout import training_layout
    from sidgr.training.config import ModelConfig, OptimizerConfig, ParallelConfig, model_arch
    from sidgr.training.dist import init_distributed, seed_everything, teardown
    from sidgr.training.model import build_model
    from sidgr.training.optim import build_optimizer, build_scheduler, wrap_ddp
    from sidgr.training.train import train_step

    info = init_distributed(1)
    seed_everything(0)
    sizes = (256, 256, 256)
    mcfg = ModelConfig(hidden_size=args.hidden, num_layers=args.layers, num_attention_heads=args.heads,
                       ffn_hidden_size=args.ffn, dropout=0.0, loss_mode="all")
    arch = model_arch(mcfg, sizes, args.items)
    ocfg = OptimizerConfig(lr=1e-4, warmup_steps=0, clip_grad=1.0)
    model = build_model(mcfg, arch, 1, info.device)
    ddp = wrap_ddp(model, ocfg, ParallelConfig())
    opt = build_optimizer(ddp, ocfg)
    sched = build_scheduler(opt, ocfg, 10_000)

    plain = PlainModel(arch.vocab_size, args.hidden, args.layers, args.heads, args.ffn, arch.max_positions)
    popt = torch.optim.AdamW(plain.parameters(), lr=1e-4, weight_decay=0.01)

    g = torch.Generator().manual_seed(0)
    sids = torch.stack([torch.randint(0, c, (args.batch, args.items), generator=g) for c in sizes], -1)
    tb = training_layout(sids, torch.full((args.batch,), args.items), "all", arch.level_offsets)

    def plain_step():
        popt.zero_grad(set_to_none=True)
        loss = plain(tb)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        popt.step()

    def mega_step():
        train_step(ddp, model, opt, sched, tb)

    times = {"megatron": [], "plain": []}
    for i in range(args.warmup + args.steps):
        for name, fn in (("megatron", mega_step), ("plain", plain_step)):
            t0 = time.perf_counter()
            fn()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    teardown()
    med = {k: statistics.median(v) for k, v in times.items()}
    n_params = sum(p.numel() for p in model.parameters())
    return {"seq_len": int(tb.tokens.shape[1]), "batch": args.batch, "params_megatron": n_params,
            "params_plain": sum(p.numel() for p in plain.parameters()),
            "median_step_s": med, "speed_ratio_plain_over_megatron": med["plain"] / med["megatron"],
            "tokens_per_s_megatron": args.batch * tb.tokens.shape[1] / med["megatron"]}


# ---- ml100k ------------------------------------------------------------------------------------------------------
def ml100k_mapping(tmp: Path) -> tuple[str, str | None]:
    """The README flow's SIDs, else the demo's balanced ones, else a random 3 x 256 mapping."""
    for real in (REPO / "artifacts/ml100k/sids/sids.json", REPO / "artifacts/ml100k/sids_balanced/sids.json"):
        if real.exists():
            return str(real), str(real.parent.relative_to(REPO))
    import pyarrow.parquet as pq

    from sidgr.sid.mapping import SIDMapping

    n = pq.read_metadata(REPO / "artifacts/ml100k/items.parquet").num_rows
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 256, (3, n), generator=g)
    return str(SIDMapping(codes, [256, 256, 256], {"method": "random-bench"}).save(tmp / "sids")), None


def ml100k(args) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        mapping, real = ml100k_mapping(Path(tmp))
        out["mapping"] = real or "random 3x256 (no SIDs under artifacts/ml100k)"
        for name, nproc, tp in (("TP1_DP1", 1, 1), ("TP1_DP2", 2, 1), ("TP2_DP1", 2, 2)):
            run_dir = Path(tmp) / name
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "sidgr.training.train", "--config", "configs/ml100k.gin",
                   f'TrainerConfig.run_dir="{run_dir}"', f"TrainerConfig.train_steps={args.steps}",
                   "TrainerConfig.eval_interval=0", "TrainerConfig.save_interval=0", 'TrainerConfig.wandb="disabled"',
                   "TrainerConfig.progress=False", "TrainerConfig.log_interval=1", f"ParallelConfig.tensor_parallel={tp}",
                   f'DataConfig.mapping_path="{mapping}"']
            env = dict(os.environ, OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 2) // nproc)))
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            if proc.returncode:
                out[name] = {"error": proc.stderr[-1500:]}
                continue
            rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
            summary = [r for r in rows if "mean_tokens_per_s" in r][-1]
            losses = [r["loss"] for r in rows if "loss" in r]
            out[name] = {**summary, "first_loss": losses[0], "last_loss": losses[-1],
                         "wall_s": round(time.perf_counter() - t0, 1)}
            print(name, json.dumps(out[name]), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("compare")
    for name, default in (("hidden", 128), ("layers", 4), ("heads", 4), ("ffn", 512), ("batch", 64), ("items", 20),
                          ("steps", 20), ("warmup", 3)):
        c.add_argument(f"--{name}", type=int, default=default)
    m = sub.add_parser("ml100k")
    m.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    result = compare(args) if args.what == "compare" else ml100k(args)
    print(json.dumps({"bench": args.what, "loadavg": os.getloadavg(), **result}, indent=2))


if __name__ == "__main__":
    main()
