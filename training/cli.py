"""`sidgr train --nproc N --config configs/X.gin [--resume] [gin overrides ...]`: checks, then runs torchrun.

Several nodes: the same command on each, with `--nnodes M --node-rank R --rdzv-endpoint HOST:PORT` (torchrun's c10d
rendezvous; the run dir on storage every node sees). Node 0 checks and locks the run dir."""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from sidgr.errors import input_error
from sidgr.launch import add_node_arguments, check_nodes, torchrun_prefix


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine (TP x DP)")
    parser.add_argument("--config", required=True, help="gin file, e.g. configs/ml100k.gin")
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective gin config (file + overrides, every value) and exit")
    add_node_arguments(parser)
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="when a worker dies, torchrun restarts the group up to this many times; it resumes "
                             "from the latest complete checkpoint by itself")
    parser.add_argument("overrides", nargs="*", help="gin bindings, e.g. TrainerConfig.train_steps=10")


def torchrun_command(args: argparse.Namespace) -> list[str]:
    cmd = [*torchrun_prefix(args, args.max_restarts), "-m", "sidgr.training.train", "--config", args.config]
    return cmd + (["--resume"] if args.resume else []) + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    check_nodes(args, "sidgr train")
    if args.max_restarts < 0:
        raise input_error("sidgr train", "--max-restarts", args.max_restarts, "must be >= 0")
    if not Path(args.config).is_file():
        raise input_error(args.config, "--config", args.config, "gin file does not exist")
    # Check the config and the data in this process first: a bad input is one line, not a torchrun traceback.
    from sidgr.logs import get_logger
    from sidgr.training.config import check_parallel_layout, load_configs
    from sidgr.training.run_dir import check_resume_config, check_start, take_lock
    from sidgr.training.task import preflight
    cfgs = load_configs(args.config, args.overrides)
    if args.print_config:
        print(cfgs["config_str"], end="")
        return 0
    check_parallel_layout(cfgs["model"], cfgs["parallel"], cfgs["data"].global_batch_size, args.nproc * args.nnodes,
                          args.config)
    first_node = args.node_rank == 0  # the run dir is shared: one node checks and locks it
    if first_node:
        check_start(cfgs["trainer"].run_dir, args.resume)
        if args.resume:
            for change in check_resume_config(cfgs["trainer"].run_dir, cfgs["config_str"]):
                get_logger("sidgr.train").info(f"resume changes {change}")
    preflight(cfgs)
    if first_node:
        take_lock(cfgs["trainer"].run_dir)  # this launcher's pid: it lives exactly as long as the job
    os.environ.setdefault("WANDB_MODE", "offline")
    # Megatron's setting for overlapping TP communication on GPU (it warns per rank without it; harmless on CPU)
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    if args.nproc > 1:  # torchrun would set 1 and print a banner about it; share the cores between the ranks
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
    note_missing_gpu_libraries()
    return run_torchrun(torchrun_command(args))


def note_missing_gpu_libraries() -> None:
    """One line instead of Megatron's per-module, per-rank warnings (silenced by sidgr.logs)."""
    import importlib.util

    from sidgr.logs import get_logger
    missing = [m for m in ("transformer_engine", "apex") if importlib.util.find_spec(m) is None]
    if missing:
        get_logger("sidgr.train").info(f"{' and '.join(missing)} not installed: Megatron-Core uses its local "
                                       "torch implementations (expected on CPU)")


ERROR_MARK = "sidgr train: error:"
# the last line of a worker's Python traceback, e.g. "[rank0]: NameError: name 'x' is not defined"
WORKER_EXCEPTION = re.compile(r"^\[rank(\d+)\]: ([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b.*)$")


def run_torchrun(cmd: list[str]) -> int:
    """Run torchrun as a child that dies with this process (and whose workers die with it), pass its stderr
    through as it comes, and when it fails print the workers' one-line error last, below torchrun's banner (an
    unexpected exception: its last traceback line, with the rank)."""
    import signal
    import subprocess

    from sidgr.process import die_with_parent

    sys.stdout.flush()
    sys.stderr.flush()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, preexec_fn=die_with_parent)
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    last_error, last_exception, pending = None, None, b""
    while chunk := os.read(proc.stderr.fileno(), 1 << 16):
        sys.stderr.buffer.write(chunk)
        sys.stderr.buffer.flush()
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            text = line.decode(errors="replace").strip()
            if ERROR_MARK in text:
                last_error = text[text.index(ERROR_MARK):]
            elif match := WORKER_EXCEPTION.match(text):
                last_exception = f"{ERROR_MARK} rank {match[1]} failed: {match[2]}"
    code = proc.wait()
    if code and (last_error or last_exception):
        print(last_error or last_exception, file=sys.stderr)
    return code
