"""`sidgr train --nproc N --config configs/X.gin [--resume] [gin overrides ...]`: execs torchrun."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sidgr.errors import input_error


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, default=1, help="processes on this machine (TP x DP)")
    parser.add_argument("--config", required=True, help="gin file, e.g. configs/ml100k.gin")
    parser.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective gin config (file + overrides, every value) and exit")
    parser.add_argument("overrides", nargs="*", help="gin bindings, e.g. TrainerConfig.train_steps=10")


def torchrun_command(args: argparse.Namespace) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "sidgr.training.train", "--config", args.config]
    return cmd + (["--resume"] if args.resume else []) + list(args.overrides)


def run(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise input_error("sidgr train", "--nproc", args.nproc, "must be >= 1")
    if not Path(args.config).is_file():
        raise input_error(args.config, "--config", args.config, "gin file does not exist")
    # Check the config and the data in this process first: a bad input is one line, not a torchrun traceback.
    from sidgr.training.config import load_configs
    from sidgr.training.run_dir import check_start, take_lock
    from sidgr.training.task import preflight
    cfgs = load_configs(args.config, args.overrides)
    if args.print_config:
        print(cfgs["config_str"], end="")
        return 0
    preflight(cfgs)
    check_start(cfgs["trainer"].run_dir, args.resume)
    take_lock(cfgs["trainer"].run_dir)  # this pid becomes torchrun's: the lock holds while the job runs
    os.environ.setdefault("WANDB_MODE", "offline")
    cmd = torchrun_command(args)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
    return 0  # not reached
