"""SID-GR checkpoints scored on the validation target through the engine, as the results table scores them.

The trainer never imports the engine (`inference/`): rank 0 runs `sidgr export`, `sidgr retrieve` (beam search,
history excluded) and `sidgr evaluate` on the checkpoint just saved, in one child process outside torchrun's
environment (one interpreter start, not three), and reads back Recall@10 and NDCG@10. Outputs stay in
RUN/selection/ (engine, candidates, metrics).

    python -m sidgr.training.engine_scoring '[["export", ...], ["retrieve", ...], ...]'   # the child
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sidgr.errors import input_error
from sidgr.process import die_with_parent

TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")


def child_env() -> dict:
    """This environment without torchrun's worker variables, so a child `sidgr` is a plain process."""
    return {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV and not k.startswith("TORCHELASTIC_")}


def run_sidgr_commands(ckpt: Path, commands: list[list]) -> None:
    """`sidgr` commands run in order in one child process; the first failure is a one-line error."""
    argv = json.dumps([[str(a) for a in c] for c in commands])
    proc = subprocess.run([sys.executable, "-m", "sidgr.training.engine_scoring", argv], env=child_env(),
                          capture_output=True, text=True, preexec_fn=die_with_parent)
    if proc.returncode:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise input_error(ckpt, "checkpoint scoring", ", ".join(c[0] for c in commands), f"failed: {last}")


def valid_scoring_commands(ckpts: list, engine: Path, cands: Path, report: Path, valid_path, items,
                           beam_width: int) -> list[list]:
    """The `sidgr` commands that score checkpoint(s) on valid: export (several: their averaged weights), beam
    retrieval of each user's top 10 (history excluded) on every core, evaluate Recall/NDCG@10. The trainer runs them
    per checkpoint, the demo for the average of them: one definition of "scored on valid"."""
    return [["export", "--checkpoint", *ckpts, "--out", engine],
            # every core: during training the other ranks wait in a broadcast (OMP_NUM_THREADS is cores / ranks)
            ["retrieve", "--engine", engine, "--sequences", valid_path, "--out", cands, "--k", 10,
             "--beam-width", max(beam_width, 10), "--threads", len(os.sched_getaffinity(0))],
            ["evaluate", "--candidates", cands, "--targets", valid_path, "--items", items, "--out", report,
             "--ks", "10", "--bootstrap", 0]]


def score_checkpoint(ckpt: Path, valid_path: str, items: int, out_dir: Path, beam_width: int) -> dict:
    """valid_recall@10 and valid_ndcg@10 of `ckpt` (the whole history excluded, beam `beam_width`)."""
    report = out_dir / ckpt.name
    run_sidgr_commands(ckpt, valid_scoring_commands([ckpt], out_dir / "engines" / ckpt.name,
                                                    out_dir / f"{ckpt.name}.parquet", report, valid_path, items,
                                                    beam_width))
    metrics = json.loads((report / "metrics.json").read_text())["metrics"]
    return {"valid_recall@10": metrics["recall@10"]["mean"], "valid_ndcg@10": metrics["ndcg@10"]["mean"]}


def main(argv: list[str]) -> int:
    """The child: each `sidgr` command of the JSON list in this interpreter, stopping at the first failure."""
    from sidgr.cli import main as sidgr_main

    for command in json.loads(argv[0]):
        if rc := sidgr_main(command):
            return rc
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
