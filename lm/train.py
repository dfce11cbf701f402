"""`sidgr lm train`: two-stage fine-tuning of the base LM on SID-bilingual tasks, with packing, checkpoints,
exact resume, valid selection and wandb (offline by default).

Stage 1 trains only the new SID token rows (everything else frozen), so the codes settle into the model's space
without disturbing it; stage 2 trains every weight. The data stream is a pure function of (seed, epoch): a resume
rebuilds the epoch and continues at the saved batch, so a killed run loses only the steps since its checkpoint."""
from __future__ import annotations

import json
import math
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from sidgr.io import atomic_path, write_json
from sidgr.logs import get_logger, progress_bar
from sidgr.run_records import MetricsLog, WandbRun
from sidgr.sid.prefix_index import PrefixIndex
from sidgr.inference.beam import ItemPaths

from .config import LMConfig
from .data import LMData, load_lm_data
from .loss import lm_loss
from .model import add_sid_tokens, autocast, load_base, load_model, pick_device, save_model
from .recommend import recall_at, recommend_users
from .run_dir import BEST_FILE, checkpoints, open_run, step_name
from .tasks import TaskRenderer, collate, epoch_examples, heldout_items, pack

log = get_logger("sidgr.lm")


class BatchStream:
    """Packed batches of the seeded epochs, resumable at (epoch, batch)."""

    def __init__(self, renderer: TaskRenderer, data: LMData, cfg: LMConfig, catalog_items: np.ndarray,
                 epoch: int = 0, index: int = 0):
        self.renderer, self.data, self.cfg, self.catalog_items = renderer, data, cfg, catalog_items
        self.epoch, self.index = epoch, index
        self.rows = self._build(epoch)

    def _build(self, epoch: int):
        cfg = self.cfg
        examples = epoch_examples(self.renderer, self.data.train, cfg.seed, epoch, cfg.history_items,
                                  cfg.windows_per_user, cfg.instructions, cfg.catalog_repeats, self.catalog_items)
        return pack(examples, cfg.seq_len, self.renderer.tok.pad_token_id)

    def next(self):
        R = self.cfg.rows_per_step
        if self.index * R >= len(self.rows):
            self.epoch, self.index = self.epoch + 1, 0
            self.rows = self._build(self.epoch)
        rows = self.rows[self.index * R:(self.index + 1) * R]
        self.index += 1
        return collate(rows, self.cfg.seq_len, self.renderer.tok.pad_token_id)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine to a tenth of the peak, within one stage."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def stage_optimizer(model, first_new_token: int, stage: int, cfg: LMConfig):
    """Stage 1: only the embedding matrix has a gradient, and its old rows' gradient is zeroed (AdamW then
    leaves them exactly as they were: zero moments, no decay). Stage 2: every weight."""
    emb = model.get_input_embeddings().weight
    for p in model.parameters():
        p.requires_grad_(stage == 2)
    emb.requires_grad_(True)
    if getattr(emb, "_sid_hook", None) is not None:
        emb._sid_hook.remove()
        emb._sid_hook = None
    if stage == 1:
        keep = torch.zeros(emb.shape[0], 1, device=emb.device)
        keep[first_new_token:] = 1.0
        emb._sid_hook = emb.register_hook(lambda g: g * keep.to(g.dtype))
        return torch.optim.AdamW([emb], lr=cfg.stage1_lr, weight_decay=0.0)
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.stage2_lr,
                             weight_decay=cfg.weight_decay)


def save_checkpoint(run: Path, model, tokenizer, vocab, opt, state: dict) -> Path:
    final = run / "checkpoints" / step_name(state["step"])
    with atomic_path(final, is_dir=True, replaces=lambda p: (p / "state.json").is_file()) as tmp:
        save_model(model, tokenizer, vocab, tmp / "model")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    return final


def prune_checkpoints(run: Path, keep: set[str]) -> None:
    """Drop this run's older checkpoints except the newest and those named in `keep` (the best)."""
    found = checkpoints(run)
    for ckpt in found[:-1]:
        if ckpt.name not in keep:
            shutil.rmtree(ckpt)


def selection_users(data: LMData, cfg: LMConfig):
    """The valid users every checkpoint is scored on (read once per run)."""
    limits = [n for n in (cfg.max_users, cfg.select_users) if n > 0]
    return data.split("valid", min(limits) if limits else 0)


def valid_recall(model, renderer, vocab, index, paths, split, cfg: LMConfig, device) -> float:
    with autocast(cfg.precision, device):
        ranked = recommend_users(model, renderer, vocab, index, paths, split, cfg.select_beam_width, 10,
                                 cfg.history_items, cfg.eval_batch_users, progress=False)
    return recall_at(ranked, split.targets, 10)


def start_or_resume(cfg: LMConfig, run: Path, data: LMData, resuming: bool):
    """(model, tokenizer, vocab, state, optimizer state or None) from the latest checkpoint, or the base model
    grown with the SID tokens."""
    if resuming:
        ckpt = checkpoints(run)[-1]
        model, tokenizer, vocab = load_model(ckpt / "model")
        state = json.loads((ckpt / "state.json").read_text())
        log.info(f"resuming {ckpt} at step {state['step']}")
        return model, tokenizer, vocab, state, torch.load(ckpt / "optimizer.pt", weights_only=True)
    model, tokenizer = load_base(cfg.base_model)
    texts = [tokenizer.encode(n, add_special_tokens=False) for n in data.catalog.names]
    vocab = add_sid_tokens(model, tokenizer, data.mapping.codebook_sizes, texts, data.catalog.sids)
    state = {"step": 0, "epoch": 0, "batch": 0, "stage": 1, "best_step": None, "best_recall": None}
    return model, tokenizer, vocab, state, None


def train_step(model, opt, batch, vocab, precision: str, device) -> tuple[float, int]:
    with autocast(precision, device):
        # no cache and no attention mask: transformers then reads the restarting position ids as packed
        # examples and masks attention across them
        hidden = model.model(input_ids=batch.input_ids.to(device), position_ids=batch.position_ids.to(device),
                             use_cache=False).last_hidden_state
        loss, count = lm_loss(hidden, model.get_output_embeddings().weight, batch.input_ids.to(device),
                              batch.kinds.to(device), vocab)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item(), count


def train(cfg: LMConfig, resume: bool = False) -> Path:
    run = Path(cfg.run_dir)
    resuming = open_run(run, cfg.to_dict(), resume)
    device = pick_device()
    data = load_lm_data(cfg.data_dir, cfg.sids)
    model, tokenizer, vocab, state, opt_state = start_or_resume(cfg, run, data, resuming)
    model.to(device).train()
    renderer = TaskRenderer(tokenizer, vocab, data.catalog, cfg.item_noun)
    held = heldout_items(data.catalog.num_items, cfg.heldout_item_fraction, cfg.seed)
    stream = BatchStream(renderer, data, cfg, np.setdiff1d(np.arange(data.catalog.num_items), held),
                         state["epoch"], state["batch"])
    index = PrefixIndex.build(data.mapping)
    paths = ItemPaths.build(index, data.catalog.num_items)
    valid = selection_users(data, cfg)

    step, total = state["step"], cfg.stage1_steps + cfg.stage2_steps
    stage = 1 if step < cfg.stage1_steps else 2
    opt = stage_optimizer(model, vocab.begin_id, stage, cfg)
    if opt_state is not None and state["stage"] == stage:  # a stage-1 checkpoint resumes into a fresh stage 2
        opt.load_state_dict(opt_state)
    metrics = MetricsLog(run, step, enabled=True)
    wandb = WandbRun(cfg.wandb, "sidgr-lm", run, cfg.to_dict(), enabled=True)
    bar = progress_bar(total=total, initial=step, desc="lm train", unit="step")
    started, tokens = time.time(), 0
    while step < total:
        if step == cfg.stage1_steps and stage == 1:
            stage, opt = 2, stage_optimizer(model, vocab.begin_id, 2, cfg)
        in_stage, steps = (step, cfg.stage1_steps) if stage == 1 else (step - cfg.stage1_steps, cfg.stage2_steps)
        lr = lr_at(in_stage, steps, cfg.stage1_lr if stage == 1 else cfg.stage2_lr, cfg.warmup_steps)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = stream.next()
        loss, count = train_step(model, opt, batch, vocab, cfg.precision, device)
        step += 1
        tokens += int((batch.input_ids != tokenizer.pad_token_id).sum())
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", stage=stage, refresh=False)
        record = {"step": step, "stage": stage, "loss": loss, "lr": lr, "targets": count, "epoch": stream.epoch}
        if step % cfg.log_interval == 0 or step == total:
            record["tokens_per_s"] = tokens / (time.time() - started)
        at_checkpoint = stage == 2 and ((step - cfg.stage1_steps) % cfg.checkpoint_every == 0 or step == total)
        if at_checkpoint:  # score on valid, then save; the end of stage 1 is a resume point, not a candidate
            model.eval()
            record["valid_recall@10"] = valid_recall(model, renderer, vocab, index, paths, valid, cfg, device)
            model.train()
            log.info(f"step {step}: valid Recall@10 {record['valid_recall@10']:.4f}")
            if state["best_recall"] is None or record["valid_recall@10"] > state["best_recall"]:
                state["best_step"], state["best_recall"] = step, record["valid_recall@10"]
        if at_checkpoint or step == cfg.stage1_steps:
            state.update(step=step, epoch=stream.epoch, batch=stream.index, stage=stage)
            save_checkpoint(run, model, tokenizer, vocab, opt, state)
            if at_checkpoint:
                write_json(run / BEST_FILE, {"checkpoint": f"checkpoints/{step_name(state['best_step'])}",
                                             "step": state["best_step"], "valid_recall@10": state["best_recall"]})
            prune_checkpoints(run, {step_name(state["best_step"])} if state["best_step"] else set())
        metrics.add(record)
        wandb.log(record)
        if at_checkpoint or step % cfg.log_interval == 0:
            metrics.flush()
    bar.close()
    metrics.flush()
    wandb.finish()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    log.info(f"done: best valid Recall@10 {state['best_recall']:.4f} at step {state['best_step']}; "
             f"peak RSS {peak:.0f} MiB; {time.time() - started:.0f} s this session")
    return run
