"""Torchrun entry point of the SID-GR trainer.

    torchrun --nproc_per_node=N -m sidgr.training.train --config configs/X.gin [--resume] [gin overrides ...]

Every side effect lives under `if __name__ == "__main__":` (the checkpoint writer re-imports __main__).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from sidgr.errors import input_error
from sidgr.io import atomic_path
from sidgr.token_layout import IGNORE, TokenBatch, training_layout
from sidgr.sid.mapping import SIDMapping


# ---- configuration -------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sidgr.training.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="gin file (configs/*.gin)")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p.add_argument("overrides", nargs="*", help="gin bindings, e.g. TrainerConfig.train_steps=10")
    return p.parse_args(argv)


def load_configs(config_file: str, overrides) -> dict:
    import gin

    from sidgr.training.config import (ModelConfig, OptimizerConfig, ParallelConfig, TrainerConfig,
                                       parse_config)
    from sidgr.training.loader import DataConfig

    if not Path(config_file).is_file():
        raise input_error(config_file, "--config", config_file, "gin file does not exist")
    parse_config(config_file, overrides)
    cfgs = dict(trainer=TrainerConfig(), model=ModelConfig(), optim=OptimizerConfig(), parallel=ParallelConfig(),
                data=DataConfig())
    cfgs["config_str"] = gin.operative_config_str()
    return cfgs


def config_codebook_sizes(model_cfg, mapping: SIDMapping) -> tuple[int, ...]:
    """The mapping's codebook sizes, after checking them against ModelConfig.codebook_sizes (when set)."""
    sizes = tuple(int(c) for c in mapping.codebook_sizes)
    want = tuple(int(c) for c in model_cfg.codebook_sizes)
    if want and len(want) != len(sizes):
        raise input_error(mapping.source, "levels", len(sizes),
                          f"the config expects {len(want)} levels (ModelConfig.codebook_sizes={list(want)})")
    if want and want != sizes:
        raise input_error(mapping.source, "codebook_sizes", list(sizes),
                          f"disagree with ModelConfig.codebook_sizes={list(want)}")
    return sizes


# ---- one step ------------------------------------------------------------------------------------------------
def layout_for(batch, loss_mode: str, arch, device) -> TokenBatch:
    tb = training_layout(batch.sids, batch.lengths, loss_mode, arch.level_offsets)
    if tb.tokens.shape[1] == 0:  # a DP rank whose rows are all padding still joins the collectives
        B = tb.tokens.shape[0]
        z = torch.zeros(B, 1, dtype=torch.int64)
        tb = TokenBatch(z, z.bool(), z.bool(), z, z - 1, z + IGNORE, z + IGNORE,
                        torch.zeros(B, 1, 1, 1, dtype=torch.bool))
    return TokenBatch(*(getattr(tb, f).to(device, non_blocking=True) for f in TokenBatch.__dataclass_fields__))


def forward_loss(ddp, model, tb: TokenBatch):
    from sidgr.training.loss import global_mean_loss, global_token_count, token_losses

    count = global_token_count(tb, tb.tokens.device)
    hidden = ddp(tb.tokens, tb.is_bos, tb.positions, tb.attention_mask)
    tl = token_losses(model, hidden, tb)
    loss = global_mean_loss(tl, count)
    if tl.losses.numel() == 0:
        loss = loss + 0.0 * hidden.sum()  # keep the graph (and DDP's hooks) connected
    return loss, count


def train_step(ddp, model, optimizer, scheduler, tb, loss_fn=forward_loss) -> dict:
    from sidgr.training.dist import all_reduce_dp
    from sidgr.training.optim import zero_grads

    zero_grads(ddp, optimizer)
    loss, count = loss_fn(ddp, model, tb)
    loss.backward()
    ddp.finish_grad_sync()
    ok, grad_norm, _ = optimizer.step()
    scheduler.step(increment=1)
    report = all_reduce_dp(torch.stack([loss.detach().float(), tb.valid.sum().float()]))
    return {"loss": float(report[0]), "tokens": float(report[1]), "loss_tokens": float(count),
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"), "skipped": not ok}


@torch.no_grad()
def validation_loss(ddp, model, loader, arch, device, max_batches: int) -> dict:
    """Validation token-mean cross-entropy of the target item ('last' mode: history + BOS + target codes)."""
    from sidgr.training.dist import all_reduce_dp
    from sidgr.training.loss import token_losses

    ddp.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    for i, batch in enumerate(loader):
        if max_batches and i >= max_batches:
            break
        tb = layout_for(batch, "last", arch, device)
        hidden = ddp(tb.tokens, tb.is_bos, tb.positions, tb.attention_mask)
        tl = token_losses(model, hidden, tb)
        total += torch.stack([tl.losses.double().sum(), torch.tensor(float(tl.losses.numel()), device=device,
                                                                      dtype=torch.float64)])
    ddp.train()
    all_reduce_dp(total)
    return {"valid_loss": float(total[0] / total[1].clamp_min(1))}


class SIDGRTask:
    """The SID-GR hooks of the train loop; `sidgr.training.item_model.ItemTask` is the item-level twin."""

    def __init__(self):
        self.arch_ = None

    def arch(self, arch):
        self.arch_ = arch
        return arch

    def build(self, model_cfg, arch, tp: int, device):
        from sidgr.training.model import build_model
        return build_model(model_cfg, arch, tp, device)

    def batch(self, batch, loss_mode: str, device) -> TokenBatch:
        return layout_for(batch, loss_mode, self.arch_, device)

    forward_loss = staticmethod(forward_loss)

    def validate(self, ddp, model, loader, device, max_batches: int) -> dict:
        return validation_loss(ddp, model, loader, self.arch_, device, max_batches)


def make_task(model_cfg, mapping: SIDMapping):
    if model_cfg.kind == "item":
        from sidgr.training.item_model import ItemTask
        return ItemTask(mapping, model_cfg.item_input)
    return SIDGRTask()


# ---- metrics -------------------------------------------------------------------------------------------------
class MetricsLog:
    """RUN_DIR/metrics.jsonl, rewritten atomically; on resume keeps the records up to the resumed step."""

    def __init__(self, run_dir: Path, start_step: int, enabled: bool):
        self.path = run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.records: list[dict] = []
        if enabled and self.path.exists():
            rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
            self.records = [r for r in rows if r.get("step", 0) <= start_step]

    def add(self, record: dict) -> None:
        if self.enabled:
            self.records.append(record)

    def flush(self) -> None:
        if self.enabled:
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records))


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


class WandbRun:
    def __init__(self, mode: str, project: str, run_dir: Path, config: dict, enabled: bool):
        self.run = None
        if enabled and mode != "disabled":
            import wandb
            self.run = wandb.init(project=project, dir=str(run_dir), mode=mode, config=config,
                                  name=run_dir.name, reinit=True)

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()


# ---- the run -------------------------------------------------------------------------------------------------
def preflight(cfgs: dict):
    """Everything that can be checked without Megatron or processes: the mapping, the task, the architecture."""
    from sidgr.training.config import model_arch

    mcfg, dcfg = cfgs["model"], cfgs["data"]
    for field_name in ("train_path", "mapping_path"):
        path = getattr(dcfg, field_name)
        if not Path(path).exists():
            raise input_error(path, f"DataConfig.{field_name}", path, "file does not exist")
    mapping = SIDMapping.load(dcfg.mapping_path)
    task = make_task(mcfg, mapping)
    arch = task.arch(model_arch(mcfg, config_codebook_sizes(mcfg, mapping), dcfg.max_items))
    return mapping, task, arch


def run(cfgs: dict, resume: bool) -> dict:
    from dataclasses import asdict

    tcfg, mcfg, ocfg, pcfg, dcfg = (cfgs[k] for k in ("trainer", "model", "optim", "parallel", "data"))
    mapping, task, arch = preflight(cfgs)  # before anything heavy starts

    from tqdm import tqdm

    from sidgr.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
    from sidgr.training.dist import init_distributed, seed_everything, teardown
    from sidgr.training.loader import SequenceLoader
    from sidgr.training.optim import build_optimizer, build_scheduler, current_lr, wrap_ddp
    from sidgr.training.plots import plot_loss_curves

    run_dir = Path(tcfg.run_dir)
    info = init_distributed(pcfg.tensor_parallel)
    try:
        seed_everything(tcfg.seed)
        model = task.build(mcfg, arch, info.tp_size, info.device)
        ddp = wrap_ddp(model, ocfg, pcfg)
        optimizer = build_optimizer(ddp, ocfg)
        scheduler = build_scheduler(optimizer, ocfg, tcfg.train_steps)
        train_loader = SequenceLoader(dcfg.train_path, mapping, dcfg, info.dp_rank, info.dp_size, training=True)
        valid_loader = (SequenceLoader(dcfg.valid_path, mapping, dcfg, info.dp_rank, info.dp_size,
                                       training=False, append_target=True) if dcfg.valid_path else None)
        step = 0
        if resume:
            ckpt = latest_checkpoint(run_dir)
            if ckpt is None:
                raise input_error(run_dir, "--resume", str(run_dir / "checkpoints"), "no complete checkpoint")
            state = load_checkpoint(ckpt, model, optimizer, scheduler, arch)
            step = state["iteration"]
            train_loader.load_state_dict(state["loader"])
            if state["rng"] is not None:
                set_rng_state(state["rng"])
        rank0 = info.is_rank0
        if rank0:
            print(f"[sidgr train] world={info.world_size} TP={info.tp_size} DP={info.dp_size} "
                  f"params/rank={sum(p.numel() for p in model.parameters()):,} users={train_loader.num_users} "
                  f"skipped_users={train_loader.skipped_users} batches/epoch={train_loader.num_batches} "
                  f"start_step={step}", flush=True)
        metrics = MetricsLog(run_dir, step, rank0)
        wandb_run = WandbRun(tcfg.wandb, tcfg.wandb_project, run_dir,
                             {k: asdict(v) for k, v in cfgs.items() if k != "config_str"}, rank0)

        def save(at: int):
            save_checkpoint(run_dir, at, model, optimizer, scheduler, train_loader.state_dict(), arch,
                            cfgs["config_str"], dcfg.mapping_path, tcfg.keep_last)

        def validate(at: int):
            if valid_loader is None:
                return
            rec = {"step": at, **task.validate(ddp, model, valid_loader, info.device, tcfg.eval_max_batches)}
            metrics.add(rec)
            wandb_run.log(rec)
            metrics.flush()
            if rank0:
                tqdm.write(f"[sidgr train] step {at} " + " ".join(f"{k} {v:.4f}" for k, v in rec.items()
                                                                   if k != "step"))

        bar = tqdm(total=tcfg.train_steps, initial=step, disable=not (rank0 and tcfg.progress),
                   dynamic_ncols=True, desc="train")
        batches = iter(train_loader)
        last = {}
        throughput = Throughput(warmup_steps=2)
        while step < tcfg.train_steps:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(train_loader)  # next epoch, new shuffle
                continue
            tb = task.batch(batch, mcfg.loss_mode, info.device)
            last = train_step(ddp, model, optimizer, scheduler, tb, task.forward_loss)
            step += 1
            dt = time.perf_counter() - t0
            rec = {"step": step, "loss": last["loss"], "lr": current_lr(optimizer), "grad_norm": last["grad_norm"],
                   "tokens_per_s": last["tokens"] / dt, "step_time_s": dt}
            throughput.add(last["tokens"], dt)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", tok_s=f"{rec['tokens_per_s']:.0f}")
            if step % max(tcfg.log_interval, 1) == 0 or step == tcfg.train_steps:
                metrics.add(rec)
                wandb_run.log(rec)
                metrics.flush()
            if not math.isfinite(rec["loss"]):
                raise FloatingPointError(f"loss is {rec['loss']} at step {step}")
            if tcfg.eval_interval and step % tcfg.eval_interval == 0 and step < tcfg.train_steps:
                validate(step)
            if tcfg.save_interval and step % tcfg.save_interval == 0 and step < tcfg.train_steps:
                save(step)
        bar.close()
        validate(step)
        save(step)
        summary = {"step": step, "mean_tokens_per_s": throughput.tokens_per_s(), **peak_memory_mb(info.device)}
        metrics.add(summary)
        metrics.flush()
        if rank0:
            print(f"[sidgr train] done: {json.dumps(summary)}", flush=True)
        if rank0 and metrics.records:
            plot_loss_curves(metrics.records, run_dir / "loss_curves.png")
        wandb_run.finish()
        return {"step": step, **last}
    finally:
        teardown()


def main(argv=None) -> int:
    import sys

    from sidgr.errors import InputError

    args = parse_args(argv)
    try:
        cfgs = load_configs(args.config, args.overrides)
        run(cfgs, args.resume)
    except InputError as err:
        print(f"sidgr train: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
