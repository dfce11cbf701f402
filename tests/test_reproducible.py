"""Every stage gives the same bytes twice from the same inputs, seeds and thread count: the SIDs of each tokenizer,
the trained losses and weights, the candidates and the metrics (README: "Reproducibility")."""
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from safetensors.torch import load_file

from train_fixtures import REPO, train, write_dataset

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def sidgr(*args):
    proc = subprocess.run([sys.executable, "-m", "sidgr.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    sidgr("synth", "--items", 400, "--users", 60, "--dim", 16, "--clusters", 12, "--out", out, "--no-progress")
    return out


@pytest.mark.parametrize("method", ["rqkmeans", "balanced", "rqvae"])
def test_tokenize_twice_gives_the_same_sids(catalog, tmp_path, method):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        # 300 RQ-VAE steps (default 1,500) pass the dead-code re-seeding (every 100) and every other code path
        short = ["--gin", "RQVAEConfig.steps = 300"] if method == "rqvae" else []
        sidgr("tokenize", "--items", catalog / "items.parquet", "--embeddings", catalog / "embeddings.npy",
              "--method", method, "--codebook-sizes", "8,8", "--seed", 3, "--threads", 1, "--no-progress",
              *short, "--out", out)
        runs.append(out)
    a, b = runs
    assert (a / "sids.json").read_bytes() == (b / "sids.json").read_bytes()
    diag = [json.loads((run / "diagnostics.json").read_text()) for run in runs]
    for d in diag:
        d.pop("seconds", None)  # wall-clock timings
    assert diag[0] == diag[1]


def losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r.get("loss"), r.get("valid_loss")) for r in lines if "loss" in r or "valid_loss" in r]


def test_training_retrieval_and_metrics_twice_are_identical(tmp_path):
    paths = write_dataset(tmp_path / "data")
    outputs = []
    for name in ("a", "b"):
        run = tmp_path / f"run_{name}"
        train(1, run, paths)
        sidgr("export", "--checkpoint", run, "--out", run / "engine")
        sidgr("retrieve", "--engine", run / "engine", "--sequences", paths["valid"], "--k", 10, "--beam-width", 16,
              "--threads", 1, "--out", run / "cand.parquet")
        sidgr("evaluate", "--candidates", run / "cand.parquet", "--targets", paths["valid"], "--items", 48,
              "--out", run / "eval")
        outputs.append(run)
    a, b = outputs
    assert losses(a) == losses(b) and len(losses(a)) >= 6
    wa, wb = load_file(a / "engine" / "model.safetensors"), load_file(b / "engine" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)
    assert pq.read_table(a / "cand.parquet").equals(pq.read_table(b / "cand.parquet"))
    ma, mb = (json.loads((run / "eval" / "metrics.json").read_text()) for run in (a, b))
    ma["inputs"].pop("candidates"), mb["inputs"].pop("candidates")  # the two runs' own paths
    assert ma == mb and ma["metrics"]["recall@10"]["mean"] > 0
