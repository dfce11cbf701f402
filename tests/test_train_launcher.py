"""`sidgr train` (the launcher, parent of torchrun): killing it kills torchrun and every worker, a second launcher on
the same run dir is refused while the first is alive, and a worker's error is the last line the user sees."""
import json
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


def descendants(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for kid in map(int, (task / "children").read_text().split()):
            out += [kid, *descendants(kid)]
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
        workers = descendants(first.pid)  # torchrun and its two workers
        assert len(workers) >= 3, workers
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
    survivors = {w: Path(f"/proc/{w}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for w in workers if alive(w)}
    assert not survivors, f"outlived their launcher: {survivors}"


def test_a_workers_error_is_printed_last_below_torchruns_banner(tmp_path):
    """What only the workers can see (here: a training file that is not parquet) ends the launcher's output."""
    paths = write_dataset(tmp_path / "data")
    (tmp_path / "bad.parquet").write_text("not parquet")
    proc = subprocess.run([sys.executable, "-m", "sidgr.cli", "train", "--nproc", "2", "--config",
                           "configs/tiny_ci.gin", f'TrainerConfig.run_dir="{tmp_path / "run"}"',
                           *data_overrides(paths), f'DataConfig.valid_path="{tmp_path / "bad.parquet"}"'],
                          capture_output=True, text=True, env=worker_env(), timeout=240)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("sidgr train: error:") and "bad.parquet" in last, proc.stderr[-3000:]


def test_a_two_rank_run_says_once_what_megatron_warns_about_per_module_and_rank(tmp_path):
    from sidgr.logs import LIBRARY_NOISE

    paths = write_dataset(tmp_path / "data")
    env = {k: v for k, v in worker_env().items() if k not in ("PYTHONWARNINGS", "OMP_NUM_THREADS")}
    proc = subprocess.run([sys.executable, "-m", "sidgr.cli", "train", "--nproc", "2", "--config",
                           "configs/tiny_ci.gin", f'TrainerConfig.run_dir="{tmp_path / "run"}"',
                           "TrainerConfig.train_steps=8", "ParallelConfig.tensor_parallel=2",
                           "TrainerConfig.progress=True", *data_overrides(paths)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for noise in (*LIBRARY_NOISE, "CUDA_DEVICE_MAX_CONNECTIONS"):
        assert noise not in proc.stderr
    # a log file gets a progress line when the bar starts and ends (and every 30 s), not one per step
    assert sum(line.startswith("train:") for line in proc.stderr.splitlines()) <= 3, proc.stderr[-2000:]
    assert "OMP_NUM_THREADS" not in proc.stderr  # torchrun's banner: the launcher sets the threads itself
    assert "reinit" not in proc.stderr  # wandb's deprecation warning
    assert proc.stderr.count("not installed: Megatron-Core uses its local torch implementations") == 1


def test_a_non_finite_loss_stops_the_run_in_one_line_and_saves_nothing_after_it(tmp_path):
    paths = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "sidgr.cli", "train", "--config", "configs/tiny_ci.gin",
                           f'TrainerConfig.run_dir="{run}"', *data_overrides(paths), "OptimizerConfig.lr=1e30",
                           "OptimizerConfig.warmup_steps=0", "OptimizerConfig.clip_grad=0.0",
                           "TrainerConfig.save_interval=1", "TrainerConfig.eval_interval=0"],
                          capture_output=True, text=True, env=worker_env(), timeout=240)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "FloatingPointError: loss is" in last and last.startswith("sidgr train: error:"), proc.stderr[-2000:]
    failed_at = int(last.rsplit("step ", 1)[1])
    saved = sorted(int(p.name[5:]) for p in (run / "checkpoints").glob("iter_*")) if (run / "checkpoints").exists() \
        else []
    assert all(s < failed_at for s in saved), (saved, failed_at)


# The interrupted runs below end as this uninterrupted one: 12 steps, a checkpoint after every step.
EVERY_STEP = ["TrainerConfig.train_steps=12", "TrainerConfig.save_interval=1", "TrainerConfig.eval_interval=0",
              "TrainerConfig.log_interval=1"]


def start_training(run, paths, *extra):
    return subprocess.Popen([sys.executable, "-m", "sidgr.cli", "train", "--nproc", "2", *extra, "--config",
                             "configs/tiny_ci.gin", f'TrainerConfig.run_dir="{run}"', *data_overrides(paths),
                             *EVERY_STEP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=worker_env())


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """(dataset paths, the uninterrupted run's dir)"""
    tmp = tmp_path_factory.mktemp("straight")
    paths = write_dataset(tmp / "data")
    proc = start_training(tmp / "run", paths)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    return paths, tmp / "run"


def assert_same_losses_and_weights(run, reference):
    from train_fixtures import flat, read_checkpoint

    def losses(r):  # in logged order: a replayed or skipped step shows
        lines = [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()]
        return [(x["step"], x["loss"]) for x in lines if "loss" in x]

    assert losses(run) == losses(reference) and len(losses(reference)) == 12
    a, b = (dict(flat(read_checkpoint(r / "checkpoints" / "iter_0000012"))) for r in (reference, run))
    weights = [k for k in a if not k.startswith("optimizer")]
    assert len(weights) > 10 and all(a[k].equal(b[k]) for k in weights)


def test_kill9_during_a_checkpoint_save_then_resume_ends_bit_identical(tmp_path, straight):
    """A checkpoint every step, the launcher killed while one is being written (its temporary exists): the resumed
    run ends with the uninterrupted run's losses and weights, and never loads the half-written one."""
    paths, reference = straight
    killed = tmp_path / "killed"
    first = start_training(killed, paths)
    caught = None
    deadline = time.time() + 240
    while caught is None and first.poll() is None and time.time() < deadline:
        ckpts = killed / "checkpoints"
        saving = list(ckpts.glob(".iter_*.tmp")) if ckpts.is_dir() else []
        if saving and any(ckpts.glob("iter_*")):
            os.kill(first.pid, signal.SIGKILL)
            caught = saving[0].name
        time.sleep(0.002)
    first.wait()
    assert caught is not None, "the run finished before a save could be interrupted"

    def ours() -> list[str]:  # processes of this run: workers and whatever they forked (checkpoint writers)
        found = []
        for proc_dir in Path("/proc").glob("[0-9]*"):
            try:
                cmd = (proc_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if str(killed).encode() in cmd and alive(int(proc_dir.name)):
                found.append(cmd.replace(b"\0", b" ")[:160].decode(errors="replace"))
        return found

    deadline = time.time() + 20
    while ours() and time.time() < deadline:
        time.sleep(0.2)
    assert not ours(), f"outlived the killed launcher: {ours()}"
    resumed = start_training(killed, paths, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-3000:]
    assert not list((killed / "checkpoints").glob(".iter_*.tmp"))
    assert_same_losses_and_weights(killed, reference)


def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_uninterrupted(tmp_path, straight):
    """--max-restarts 1, DP=2: kill -9 one worker after the fourth checkpoint; torchrun restarts the group, which
    resumes from the latest complete checkpoint by itself; losses and weights equal an uninterrupted run's."""
    paths, reference = straight
    run = tmp_path / "elastic"
    proc = start_training(run, paths, "--max-restarts", "1")
    deadline, killed = time.time() + 240, None
    while killed is None and proc.poll() is None and time.time() < deadline:
        if any((run / "checkpoints").glob("iter_0000004")):
            try:  # torchrun's children (a worker's own helper processes share its command line)
                agents = [p for p in descendants(proc.pid)
                          if b"torch.distributed.run" in Path(f"/proc/{p}/cmdline").read_bytes()]
                workers = [p for a in agents for p in map(int, Path(f"/proc/{a}/task/{a}/children").read_text()
                                                          .split())]
            except FileNotFoundError:  # a process ended while we looked
                workers = []
            if len(workers) == 2:
                os.kill(workers[-1], signal.SIGKILL)
                killed = workers[-1]
        time.sleep(0.05)
    assert killed is not None, "the run ended before a worker could be killed"
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-3000:]
    assert_same_losses_and_weights(run, reference)
