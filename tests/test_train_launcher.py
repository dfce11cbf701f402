"""`sidgr train` (the launcher, which becomes the torchrun agent): killing it kills every worker, and a second
launcher on the same run dir is refused while the first is alive."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch import worker_env
from train_fixtures import data_overrides, write_dataset

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids = (task / "children").read_text().split()
        out += [int(k) for k in kids]
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def launch(run_dir, paths, *extra):
    cmd = [sys.executable, "-m", "sidgr.cli", "train", "--nproc", "2", "--config", "configs/tiny_ci.gin",
           *extra, f'TrainerConfig.run_dir="{run_dir}"', "TrainerConfig.train_steps=100000",
           *data_overrides(paths)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=worker_env())


def test_kill9_of_the_launcher_leaves_no_worker_and_a_lock_blocks_a_second_writer(tmp_path):
    paths = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    first = launch(run, paths)
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists():  # workers are training
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.time() < deadline, "the run never started"
            time.sleep(0.5)
        workers = children(first.pid)
        assert len(workers) == 2
        second = subprocess.run([sys.executable, "-m", "sidgr.cli", "train", "--nproc", "1", "--config",
                                 "configs/tiny_ci.gin", "--resume", f'TrainerConfig.run_dir="{run}"',
                                 *data_overrides(paths)], capture_output=True, text=True, env=worker_env(),
                                timeout=120)
        assert second.returncode == 1
        assert f"pid={first.pid}" in second.stderr and "another sidgr train" in second.stderr, second.stderr
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    deadline = time.time() + 20
    while any(alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(w) for w in workers), "a worker outlived its launcher"
