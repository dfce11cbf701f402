"""`sidgr train` on 2 "nodes" x 1 process (two launchers on the loopback address, c10d rendezvous, one shared run
dir) ends with the same losses and weights as one node with --nproc 2."""
import json
import socket
import subprocess
import sys

import pytest
import torch

from launch import REPO, worker_env
from train_fixtures import data_overrides, flat, read_checkpoint, write_dataset

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(run_dir, paths, *extra):
    cmd = [sys.executable, "-m", "sidgr.cli", "train", *extra, "--config", "configs/tiny_ci.gin",
           f'TrainerConfig.run_dir="{run_dir}"', *data_overrides(paths)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=worker_env())


def losses(run_dir) -> dict:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if "loss" in r}


def test_two_nodes_of_one_process_equal_one_node_of_two(tmp_path):
    paths = write_dataset(tmp_path / "data")
    single = launch(tmp_path / "single", paths, "--nproc", "2")
    assert single.wait(timeout=300) == 0, single.stderr.read()[-3000:]
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [launch(tmp_path / "multi", paths, "--nproc", "1", "--nnodes", "2", "--node-rank", str(r),
                    "--rdzv-endpoint", endpoint, "--rdzv-id", "test") for r in (0, 1)]
    for node in nodes:
        assert node.wait(timeout=300) == 0, node.stderr.read()[-3000:]
    assert losses(tmp_path / "multi") == losses(tmp_path / "single") and len(losses(tmp_path / "single")) == 6
    last = "checkpoints/iter_0000006"
    a, b = (dict(flat(read_checkpoint(tmp_path / run / last))) for run in ("single", "multi"))
    weights = [k for k in a if not k.startswith("optimizer")]
    assert a.keys() == b.keys() and len(weights) > 10 and all(torch.equal(a[k], b[k]) for k in weights)


def test_node_flags_are_checked_before_anything_starts(tmp_path, capsys):
    from sidgr.cli import main

    base = ["train", "--config", "configs/tiny_ci.gin", f"TrainerConfig.run_dir='{tmp_path / 'run'}'"]
    for flags, message in [(["--nnodes", "2"], "--rdzv-endpoint"), (["--nnodes", "2", "--node-rank", "2",
                                                                     "--rdzv-endpoint", "h:1"], "--node-rank"),
                           (["--nnodes", "0"], "--nnodes")]:
        assert main([*base[:1], *flags, *base[1:]]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "run").exists()
