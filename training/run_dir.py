"""One run per run directory and one writer at a time.

A fresh run refuses a directory that holds an earlier run (metrics or checkpoints): continuing it needs --resume,
so two runs are never mixed. The launcher (`sidgr train`, whose pid the torchrun agent keeps after exec) records
its pid in a lock file; a second launcher is refused while that pid is alive and takes a stale lock over.
"""
from __future__ import annotations

import os
from pathlib import Path

from sidgr.errors import input_error
from sidgr.io import atomic_path
from sidgr.process import pid_alive

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
