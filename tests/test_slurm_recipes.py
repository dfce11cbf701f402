"""The SLURM recipes rendered for 2 nodes with stand-ins for srun/scontrol/sidgr (there is no SLURM here): the
commands each node would run, with flags the real `sidgr` parser accepts, and the resume a requeued job needs."""
import json
import os
import stat
import subprocess
from pathlib import Path

from sidgr.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]

FAKE_SRUN = """#!/bin/bash
# stand-in for srun: record its own options, then run the command once per node with that node's SLURM_NODEID
opts=()
while [[ "$1" == --* ]]; do opts+=("$1"); shift; done
printf '%s\\n' "${opts[@]}" > "$CALLS.srun"
for ((node = 0; node < ${SLURM_NNODES:-1}; node++)); do SLURM_NODEID=$node "$@"; done
"""
FAKE_SIDGR = """#!/usr/bin/env python3
import json, os, sys
with open(os.environ["CALLS"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
"""
FAKE_SCONTROL = """#!/bin/bash
[ "$1 $2" = "show hostnames" ] || exit 1
case "$3" in gpu-*) printf 'gpu-a17\\ngpu-a18\\n' ;; *) printf 'cpu-3\\ncpu-4\\n' ;; esac
"""


def render(tmp_path, script, env, *args):
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    for name, text in (("srun", FAKE_SRUN), ("sidgr", FAKE_SIDGR), ("scontrol", FAKE_SCONTROL)):
        (fake / name).write_text(text)
        (fake / name).chmod((fake / name).stat().st_mode | stat.S_IEXEC)
    calls = tmp_path / "calls.jsonl"
    calls.unlink(missing_ok=True)
    full = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "CALLS": str(calls), **env}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / script), *args], env=full, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    srun_opts = (tmp_path / "calls.jsonl.srun").read_text().split()
    return [json.loads(line) for line in calls.read_text().splitlines()], srun_opts


def test_train_recipe_runs_one_launcher_per_node_with_one_rendezvous_and_resumes_when_requeued(tmp_path):
    run = tmp_path / "shared" / "run"
    env = {"CONFIG": "configs/synth_large.gin", "RUN_DIR": str(run), "SLURM_JOB_NODELIST": "gpu-a[17-18]",
           "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", "GPUS_PER_NODE": "8"}
    calls, srun_opts = render(tmp_path, "train.sbatch", env, "TrainerConfig.train_steps=100")
    assert len(calls) == 2 and "--kill-on-bad-exit=1" in srun_opts
    for node, argv in enumerate(calls):
        assert argv[0] == "train"
        args = build_parser("train")[0].parse_args(argv[1:])
        assert (args.nproc, args.nnodes, args.node_rank) == (8, 2, node)
        assert (args.rdzv_endpoint, args.rdzv_id, args.max_restarts) == ("gpu-a17:29500", "4242", 3)
        assert args.config == "configs/synth_large.gin" and not args.resume
        assert args.overrides == [f"TrainerConfig.run_dir='{run}'", "TrainerConfig.train_steps=100"]
    (run / "checkpoints" / "iter_0000400").mkdir(parents=True)  # the job was requeued after a checkpoint
    calls, srun_opts = render(tmp_path, "train.sbatch", {**env, "IMAGE": "/shared/sidgr.sqsh"})
    assert all(build_parser("train")[0].parse_args(argv[1:]).resume for argv in calls)
    assert "--container-image=/shared/sidgr.sqsh" in srun_opts and f"--container-mounts={run}:{run}" in srun_opts


def test_retrieve_recipe_shards_users_over_every_process_of_every_node(tmp_path):
    env = {"ENGINE": "/shared/engine", "SEQUENCES": "/shared/test.parquet", "OUT": "/shared/cands.parquet",
           "SLURM_CPUS_PER_TASK": "32", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "cpu-[3-4]", "SLURM_JOB_ID": "77"}
    calls, srun_opts = render(tmp_path, "retrieve.sbatch", env, "--k", "500", "--beam-width", "1024")
    assert len(calls) == 2 and "--kill-on-bad-exit=1" in srun_opts
    for node, argv in enumerate(calls):
        assert argv[0] == "retrieve"
        args = build_parser("retrieve")[0].parse_args(argv[1:])
        assert (args.nproc, args.nnodes, args.node_rank, args.rdzv_endpoint, args.rdzv_id) == (32, 2, node,
                                                                                               "cpu-3:29501", "77")
        assert (args.engine, args.sequences, args.out, args.k, args.beam_width) == (
            "/shared/engine", "/shared/test.parquet", "/shared/cands.parquet", 500, 1024)


def test_train_recipe_says_what_is_missing(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "train.sbatch")], cwd=ROOT, capture_output=True,
                          text=True, env={k: v for k, v in os.environ.items() if k not in ("CONFIG", "RUN_DIR")})
    assert proc.returncode != 0 and "CONFIG" in proc.stderr.strip().splitlines()[-1]
