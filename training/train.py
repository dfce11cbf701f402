"""Torchrun entry point of the trainer: the training loop, for any model family (`training/task.py`).

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
from sidgr.logs import get_logger, progress_bar

log = get_logger("sidgr.train")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sidgr.training.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="gin file (configs/*.gin)")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    p.add_argument("overrides", nargs="*", help="gin bindings, e.g. TrainerConfig.train_steps=10")
    return p.parse_args(argv)


def train_step(ddp, model, optimizer, scheduler, batch, losses_fn=None) -> dict:
    """One optimizer step on `batch`; `losses_fn` is the task's per-token loss (default: SID-GR's)."""
    from sidgr.training.dist import all_reduce_dp
    from sidgr.training.loss import forward_loss, token_losses
    from sidgr.training.optim import zero_grads

    zero_grads(ddp, optimizer)
    loss, count = forward_loss(ddp, model, batch, losses_fn or token_losses)
    loss.backward()
    ddp.finish_grad_sync()
    ok, grad_norm, _ = optimizer.step()
    scheduler.step(increment=1)
    report = all_reduce_dp(torch.stack([loss.detach().float(), batch.valid.sum().float()]))
    return {"loss": float(report[0]), "tokens": float(report[1]), "loss_tokens": float(count),
            "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"), "skipped": not ok}


def checkpoint_scores(task, ckpt: Path, run_dir: Path, dcfg, tcfg, rank0: bool) -> dict:
    """The task's scores of a saved checkpoint, computed by rank 0 and given to every rank."""
    import torch.distributed as dist

    box = [task.score_checkpoint(ckpt, run_dir, dcfg, tcfg) if rank0 else None]
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    return box[0]


def run(cfgs: dict, resume: bool) -> dict:
    from dataclasses import asdict

    tcfg, mcfg, ocfg, pcfg, dcfg = (cfgs[k] for k in ("trainer", "model", "optim", "parallel", "data"))
    from sidgr.training.task import preflight

    mapping, task, arch = preflight(cfgs)  # before anything heavy starts
    from sidgr.process import die_with_parent, forks_die_with_parent, restart_attempt, under_torchrun
    from sidgr.training.run_dir import check_start

    if under_torchrun():
        die_with_parent()  # a killed launcher never leaves this worker training on its own
        forks_die_with_parent()  # nor a checkpoint-writer process the worker forked
    # torchrun restarted the group after a worker died (--max-restarts): continue this job's own run
    restarted = restart_attempt() > 0
    if not restarted:
        check_start(tcfg.run_dir, resume)

    from sidgr.run_records import MetricsLog, WandbRun
    from sidgr.training.run_log import Throughput, peak_memory_mb
    from sidgr.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
    from sidgr.training.dist import init_distributed, seed_everything, teardown
    from sidgr.training.loader import SequenceLoader
    from sidgr.training.optim import build_optimizer, build_scheduler, current_lr, wrap_ddp
    from sidgr.training.plots import plot_loss_curves
    from sidgr.training.selection import Selection

    if tcfg.select_best and not dcfg.valid_path:
        raise input_error(tcfg.run_dir, "TrainerConfig.select_best", True, "needs DataConfig.valid_path")

    run_dir = Path(tcfg.run_dir)
    info = init_distributed(pcfg.tensor_parallel)
    try:
        seed_everything(tcfg.seed)
        model = task.build(mcfg, arch, info.tp_size, info.device)
        ddp = wrap_ddp(model, ocfg, pcfg)
        optimizer = build_optimizer(ddp, ocfg)
        scheduler = build_scheduler(optimizer, ocfg, tcfg.train_steps)
        train_loader = SequenceLoader(dcfg.train_path, mapping, dcfg, info.dp_rank, info.dp_size, training=True)
        task.setup_validation(dcfg, mapping, info)
        step = 0
        selection = Selection.load(run_dir, tcfg.early_stop_patience) if tcfg.select_best else None
        if resume and selection is not None and selection.stopped_at is not None:
            log.info(f"{run_dir}: the run stopped early at step {selection.stopped_at} "
                     f"(best {selection.best_checkpoint}, {selection.metric} {selection.best_value:.4f}): "
                     f"nothing to do")
            return {}
        if restarted:
            resume = latest_checkpoint(run_dir) is not None
            log.info(f"restart {restart_attempt()} of the worker group: "
                     + ("resuming from the latest complete checkpoint" if resume else "no checkpoint yet, from step 0"))
        if resume:
            ckpt = latest_checkpoint(run_dir)
            if ckpt is None:
                raise input_error(run_dir, "--resume", str(run_dir / "checkpoints"), "no complete checkpoint")
            state = load_checkpoint(ckpt, model, optimizer, scheduler, arch)
            step = state["iteration"]
            train_loader.load_state_dict(state["loader"])
            if state["rng"] is not None:
                set_rng_state(state["rng"])
            if step >= tcfg.train_steps:
                log.info(f"{run_dir}: the run finished at step {step} (train_steps={tcfg.train_steps}): "
                         f"nothing to do")
                return {}
        rank0 = info.is_rank0
        log.info(f"world={info.world_size} TP={info.tp_size} DP={info.dp_size} "
                 f"params/rank={sum(p.numel() for p in model.parameters()):,} users={train_loader.num_users} "
                 f"skipped_users={train_loader.skipped_users} batches/epoch={train_loader.num_batches} "
                 f"start_step={step}")
        metrics = MetricsLog(run_dir, step, rank0)
        wandb_run = WandbRun(tcfg.wandb, tcfg.wandb_project, run_dir,
                             {k: asdict(v) for k, v in cfgs.items() if k != "config_str"}, rank0)

        def save(at: int):
            keep = (selection.best_checkpoint,) if selection is not None and selection.best_step else ()
            return save_checkpoint(run_dir, at, model, optimizer, scheduler, train_loader.state_dict(), arch,
                                   cfgs["config_str"], dcfg.mapping_path, tcfg.keep_last, keep)

        def validate(at: int, ckpt: Path | None = None):
            scores = task.validate(ddp, model, info.device, tcfg.eval_max_batches)
            if ckpt is not None:
                scores.update(checkpoint_scores(task, ckpt, run_dir, dcfg, tcfg, rank0))
                if selection.update(at, scores) and rank0:
                    log.info(f"step {at}: new best checkpoint {ckpt.name}")
                if rank0:
                    selection.write(run_dir)
            if not scores:
                return
            rec = {"step": at, **scores}
            metrics.add(rec)
            wandb_run.log(rec)
            metrics.flush()
            log.info(f"step {at} " + " ".join(f"{k} {v:.4f}" for k, v in rec.items() if k != "step"))

        bar = progress_bar(total=tcfg.train_steps, initial=step, disable=not (rank0 and tcfg.progress),
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
            tb = task.batch(batch, mcfg.loss_mode, info.device, dcfg.targets_per_window)
            last = train_step(ddp, model, optimizer, scheduler, tb, task.token_losses)
            step += 1
            dt = time.perf_counter() - t0
            rec = {"step": step, "loss": last["loss"], "lr": current_lr(optimizer), "grad_norm": last["grad_norm"],
                   "tokens_per_s": last["tokens"] / dt, "step_time_s": dt}
            throughput.add(last["tokens"], dt)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", tok_s=f"{rec['tokens_per_s']:.0f}",
                            refresh=False)  # shown at the bar's own pace (every 30 s in a log file)
            if step % max(tcfg.log_interval, 1) == 0 or step == tcfg.train_steps:
                metrics.add(rec)
                wandb_run.log(rec)
                metrics.flush()
            if not math.isfinite(rec["loss"]):
                raise FloatingPointError(f"loss is {rec['loss']} at step {step}")
            evaluating = bool(tcfg.eval_interval) and step % tcfg.eval_interval == 0 and step < tcfg.train_steps
            saving = bool(tcfg.save_interval) and step % tcfg.save_interval == 0 and step < tcfg.train_steps
            if selection is not None and evaluating:
                validate(step, save(step))
                if selection.should_stop:
                    log.info(f"early stop at step {step}: {selection.patience} evaluations without a better "
                             f"{selection.metric} than {selection.best_value:.4f} ({selection.best_checkpoint})")
                    break
                continue
            if evaluating:
                validate(step)
            if saving:
                save(step)
        bar.close()
        if selection is None:
            validate(step)
            save(step)
        elif selection.stopped_at is None:
            validate(step, save(step))
        summary = {"step": step, "mean_tokens_per_s": throughput.tokens_per_s(), **peak_memory_mb(info.device)}
        if selection is not None:
            summary.update(best_checkpoint=selection.best_checkpoint, best=selection.best_value)
        metrics.add(summary)
        metrics.flush()
        log.info(f"done: {json.dumps(summary)}")
        if rank0 and metrics.records:
            plot_loss_curves(metrics.records, run_dir / "loss_curves.png")
        wandb_run.finish()
        return {"step": step, **last}
    finally:
        teardown()


def main(argv=None) -> int:
    import sys

    from sidgr.errors import InputError

    from sidgr.training.config import load_configs

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
