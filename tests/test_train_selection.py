"""TrainerConfig.select_best: every evaluation saves a checkpoint scored on valid Recall@10 (SID-GR through the
engine's export + retrieve + evaluate), best.json names the best, rotation keeps it, `sidgr export --checkpoint RUN`
exports it, and early stopping ends the run after `early_stop_patience` evaluations without improvement."""
import json
import subprocess
import sys

import pytest
import torch

from launch import worker_env
from train_fixtures import data_overrides, write_dataset

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def sidgr(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "sidgr.cli", *map(str, args)], capture_output=True, text=True,
                          env=worker_env(), timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def sidgr_here(*args):
    """A Megatron-free command (export, retrieve, evaluate) in this process: no interpreter start per call."""
    from sidgr import cli

    assert cli.main([str(a) for a in args]) == 0


def train(run, paths, *overrides, resume=False):
    return sidgr("train", "--nproc", "2", "--config", "configs/tiny_ci.gin", *(["--resume"] if resume else []),
                 f'TrainerConfig.run_dir="{run}"', "TrainerConfig.select_best=True", "TrainerConfig.keep_last=1",
                 "TrainerConfig.eval_interval=3", "TrainerConfig.save_interval=0", *data_overrides(paths),
                 *overrides)


def records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_select_best_keeps_and_exports_the_checkpoint_with_the_best_valid_recall(tmp_path):
    paths = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    train(run, paths, "TrainerConfig.train_steps=12", "OptimizerConfig.lr=0.02")
    scored = {r["step"]: r["valid_recall@10"] for r in records(run) if "valid_recall@10" in r}
    assert sorted(scored) == [3, 6, 9, 12]
    best_step = max(scored, key=lambda s: (scored[s], -s))  # ties keep the earlier checkpoint
    best = json.loads((run / "best.json").read_text())
    assert (best["best_step"], best["checkpoint"]) == (best_step, f"iter_{best_step:07d}")
    assert best["best_value"] == scored[best_step]
    kept = sorted(p.name for p in (run / "checkpoints").glob("iter_*"))
    assert kept == sorted({f"iter_{best_step:07d}", "iter_0000012"})  # keep_last=1 plus the best
    # the number the trainer logged is the engine's, re-measured here on the kept checkpoint
    sidgr_here("export", "--checkpoint", run, "--out", tmp_path / "engine")  # the run dir: its best checkpoint
    sidgr_here("export", "--checkpoint", run / "checkpoints" / best["checkpoint"], "--out", tmp_path / "engine_best")
    a = (tmp_path / "engine" / "model.safetensors").read_bytes()
    assert a == (tmp_path / "engine_best" / "model.safetensors").read_bytes()
    sidgr_here("retrieve", "--engine", tmp_path / "engine", "--sequences", paths["valid"], "--out",
               tmp_path / "c.parquet", "--k", 10, "--beam-width", 64)
    sidgr_here("evaluate", "--candidates", tmp_path / "c.parquet", "--targets", paths["valid"], "--items", 48,
               "--out", tmp_path / "eval", "--ks", 10, "--bootstrap", 0)
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["recall@10"]["mean"]
    assert again == pytest.approx(scored[best_step], abs=1e-12)


def test_early_stop_after_patience_evaluations_without_improvement_and_resume_does_nothing(tmp_path):
    paths = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    # a learning rate of ~0 cannot improve the metric: the second evaluation is the first without improvement
    train(run, paths, "TrainerConfig.train_steps=30", "TrainerConfig.early_stop_patience=1",
          "OptimizerConfig.lr=1e-12", "OptimizerConfig.min_lr=0.0")
    best = json.loads((run / "best.json").read_text())
    assert (best["best_step"], best["stopped_at"]) == (3, 6)
    assert max(r["step"] for r in records(run)) == 6
    lines = (run / "metrics.jsonl").read_text()
    proc = train(run, paths, "TrainerConfig.train_steps=30", "TrainerConfig.early_stop_patience=1",
                 "OptimizerConfig.lr=1e-12", "OptimizerConfig.min_lr=0.0", resume=True)
    assert "stopped early at step 6" in proc.stderr
    assert (run / "metrics.jsonl").read_text() == lines
    assert torch.load(run / "checkpoints" / "iter_0000006" / "trainer_state.pt", weights_only=False)[
        "iteration"] == 6
