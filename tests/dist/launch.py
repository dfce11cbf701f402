"""The one way tests start worker processes: `run_torchrun(target, nproc, *args)`.

    from launch import run_torchrun          # tests/dist is on pytest's pythonpath (pyproject)
    run_torchrun("tests/dist/item_train.py", 2, data_dir, out)         # a script (path ends in .py)
    run_torchrun("sidgr.training.train", 1, "--config", cfg)           # a module (python -m)

nproc > 1 runs `python -m torch.distributed.run --standalone --nproc_per_node=N`; nproc == 1 runs a plain python
process (the trainer and the workers set up a world of one themselves). Every worker starts in the repository
root with tests/ and tests/dist on PYTHONPATH (so workers import the fixtures modules and test helpers like the
tests do), one OpenMP thread per process, wandb off and warnings silenced; `env` adds to / overrides that.
A non-zero exit fails the test with the tails of the worker's stdout and stderr, unless check=False (for tests
that expect the run to fail and inspect its output).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKER_PATHS = (REPO / "tests", REPO / "tests" / "dist")
TAIL = 4000


def worker_env(env: dict | None = None) -> dict:
    """os.environ + the settings every worker process gets (+ env)."""
    paths = [str(p) for p in WORKER_PATHS]
    if os.environ.get("PYTHONPATH"):
        paths.append(os.environ["PYTHONPATH"])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore", **(env or {})}


def command(target: str | os.PathLike, nproc: int, *args) -> list[str]:
    """The argv for `target` (a .py path, relative to the repository root or absolute, or a module name)."""
    if nproc < 1:
        raise ValueError(f"nproc={nproc}: expected >= 1")
    is_script = isinstance(target, os.PathLike) or str(target).endswith(".py")
    entry = [str(target)] if is_script else ["-m", str(target)]
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [sys.executable, *launcher, *entry, *map(str, args)]


def run_torchrun(target: str | os.PathLike, nproc: int, *args, env: dict | None = None, timeout: float = 300,
                 check: bool = True) -> subprocess.CompletedProcess:
    """Run `target` on nproc processes from the repository root; stdout/stderr captured as text."""
    cmd = command(target, nproc, *args)
    proc = subprocess.run(cmd, cwd=REPO, env=worker_env(env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"worker exited {proc.returncode}: {' '.join(cmd)}\n"
                    f"---- stdout (tail) ----\n{proc.stdout[-TAIL:]}\n---- stderr (tail) ----\n{proc.stderr[-TAIL:]}",
                    pytrace=False)
    return proc
