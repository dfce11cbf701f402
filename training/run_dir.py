"""One run per run directory and one writer at a time.

A fresh run refuses a directory that holds an earlier run (metrics or checkpoints): continuing it needs --resume,
so two runs are never mixed; a resume may change how long and how fast it trains (TrainerConfig, OptimizerConfig)
but not what it trains (ModelConfig, DataConfig, ParallelConfig), checked against the latest checkpoint's config.
The launcher (`sidgr train`, whose pid the torchrun agent keeps after exec) records its pid in a lock file; a
second launcher is refused while that pid is alive and takes a stale lock over.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from sidgr.errors import input_error
from sidgr.io import atomic_path
from sidgr.process import pid_alive
from sidgr.run_layout import complete_checkpoints

LOCK_FILE = ".sidgr_train.lock"


def holds_a_run(run_dir: Path) -> bool:
    return (run_dir / "metrics.jsonl").exists() or any((run_dir / "checkpoints").glob("iter_*"))


def check_start(run_dir: str | os.PathLike, resume: bool) -> None:
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise input_error(run_dir, "TrainerConfig.run_dir", str(run_dir), "exists and is not a directory")
    if not resume and holds_a_run(run_dir):
        raise input_error(run_dir, "TrainerConfig.run_dir", str(run_dir),
                          "holds an earlier run: continue it with --resume, or choose a new run_dir "
                          "(nothing was changed)")


FIXED_ON_RESUME = ("ModelConfig", "DataConfig", "ParallelConfig")
MAY_CHANGE = ("DataConfig.num_workers",)  # how the data is read, not which data
BINDING = re.compile(r"^(\w+)\.(\w+) = (.*)$")


def gin_bindings(config_str: str) -> dict[str, str]:
    """'Configurable.field' -> value text, from an operative gin config (continuation lines joined)."""
    out, key = {}, None
    for line in config_str.splitlines():
        if match := BINDING.match(line):
            key = f"{match[1]}.{match[2]}"
            out[key] = match[3].strip()
        elif key and line.startswith(" "):
            out[key] += " " + line.strip()
        else:
            key = None
    return out


def check_resume_config(run_dir: str | os.PathLike, config_str: str) -> list[str]:
    """Refuse a resume that changes what is trained; return the bindings it changes that it may change."""
    ckpts = complete_checkpoints(run_dir)
    if not ckpts or not (ckpts[-1] / "config.gin").is_file():
        return []
    before = gin_bindings((ckpts[-1] / "config.gin").read_text())
    now = gin_bindings(config_str)
    # a field only one side has is a release that added or removed it, not a change the user asked for
    changed = sorted(k for k in before.keys() & now.keys() if before[k] != now[k])
    fixed = [k for k in changed if k.split(".")[0] in FIXED_ON_RESUME and k not in MAY_CHANGE]
    if fixed:
        k = fixed[0]
        raise input_error(ckpts[-1] / "config.gin", k, now[k],
                          f"--resume would change what the run trains (it has {before[k]}"
                          f"{f'; also {len(fixed) - 1} more' if len(fixed) > 1 else ''}): start a new run_dir instead")
    return [f"{k}: {before[k]} -> {now[k]}" for k in changed]


def take_lock(run_dir: str | os.PathLike, pid: int | None = None) -> None:
    """Record `pid` (default: this process) as the run dir's only writer."""
    run_dir, pid = Path(run_dir), pid or os.getpid()
    lock = run_dir / LOCK_FILE
    try:
        holder = int(lock.read_text().strip())
    except (FileNotFoundError, ValueError):
        holder = None
    if holder is not None and holder != pid and pid_alive(holder):
        raise input_error(lock, "pid", holder, "another sidgr train is writing this run dir; wait for it or "
                                               "stop it first")
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(lock) as tmp:
        tmp.write_text(f"{pid}\n")
