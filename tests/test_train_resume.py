"""End-to-end trainer runs (`python -m sidgr.training.train` / torchrun): exact resume, TP=2 -> TP=1 resume,
overfitting a tiny dataset, and a model-shape mismatch on resume."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from train_fixtures import flat, read_checkpoint, train, write_dataset

pytestmark = [pytest.mark.dist, pytest.mark.slow]


DIST_OPT = ("OptimizerConfig.use_distributed_optimizer=True",)


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in metrics(run_dir) if "loss" in r}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("train") / "data")


@pytest.fixture(scope="module")
def straight_then_resumed(tmp_path_factory, data):
    """DP=2 with the distributed optimizer, 6 steps straight (checkpoints at 2, 4, 6; keep 2); then drop iter 6
    and --resume from iter 4 to 6. Dropout is on: every rank's RNG states must be restored too."""
    run = tmp_path_factory.mktemp("resume") / "run"
    train(2, run, data, *DIST_OPT, "TrainerConfig.save_interval=2")
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["iter_0000004", "iter_0000006"]  # iter 2 pruned
    straight = read_checkpoint(ckpts / "iter_0000006")
    straight_losses = train_losses(run)
    shutil.rmtree(ckpts / "iter_0000006")
    train(2, run, data, *DIST_OPT, "TrainerConfig.save_interval=2", resume=True)
    return run, straight, straight_losses, read_checkpoint(ckpts / "iter_0000006")


def test_resume_is_bit_exact(straight_then_resumed):
    run, straight, straight_losses, resumed = straight_then_resumed
    a, b = dict(flat(straight)), dict(flat(resumed))
    assert a.keys() == b.keys() and any(k.endswith("exp_avg") for k in a)
    model_keys = [k for k in a if not k.startswith("optimizer.")]
    assert len(model_keys) > 10
    # Weights after 3 more Adam steps are bit-identical only if the optimizer state came back exactly too.
    # (The distributed optimizer's flat buffers also hold uninitialized padding, so they are not compared.)
    for key in model_keys:
        assert torch.equal(a[key], b[key]), key
    assert train_losses(run) == straight_losses  # steps 5, 6 reproduced exactly, 1..4 kept from the first run
    assert sorted(straight_losses) == [1, 2, 3, 4, 5, 6]


def test_checkpoint_layout(straight_then_resumed):
    run = straight_then_resumed[0]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == ["iter_0000004", "iter_0000006"]  # keep_last = 2, no temporaries left behind
    last = run / "checkpoints" / "iter_0000006"
    for name in ("trainer_state.pt", "config.gin", "arch.json", "mapping.json", "manifest.json"):
        assert (last / name).is_file(), name
    from sidgr.run_layout import checkpoint_damage
    manifest = json.loads((last / "manifest.json").read_text())
    assert {"trainer_state.pt", "arch.json", ".metadata"} <= set(manifest) and checkpoint_damage(last) is None
    assert json.loads((last / "arch.json").read_text())["codebook_sizes"] == [8, 8, 4]
    assert Path(json.loads((last / "mapping.json").read_text())["path"]).is_absolute()
    assert "ModelConfig.hidden_size = 32" in (last / "config.gin").read_text()
    state = torch.load(last / "trainer_state.pt", weights_only=False)
    assert state["iteration"] == 6 and state["layout"] == {"tp": 1, "dp": 2} and state["distributed_optimizer"]
    assert [r["loader"]["batches_consumed"] for r in state["ranks"]] == [1, 1]  # 6 steps = 5 per epoch + 1
    assert [r["loader"]["dp_rank"] for r in state["ranks"]] == [0, 1]
    assert (run / "loss_curves.png").stat().st_size > 1000
    valid = [r for r in metrics(run) if "valid_loss" in r]
    assert [r["step"] for r in valid] == [3, 6]  # eval_interval = 3, and at the end


def test_a_damaged_checkpoint_is_skipped_on_resume_and_refused_by_export(straight_then_resumed, tmp_path, capsys):
    from sidgr.cli import main
    from sidgr.training.checkpoint import latest_checkpoint

    run = tmp_path / "run"
    shutil.copytree(straight_then_resumed[0], run)
    last = run / "checkpoints" / "iter_0000006"
    shard = next(p for p in sorted(last.iterdir()) if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:-7])  # truncated after the save completed
    assert latest_checkpoint(run) == run / "checkpoints" / "iter_0000004"
    assert main(["export", "--checkpoint", str(last), "--out", str(tmp_path / "engine")]) == 1
    assert f"corrupt checkpoint: {shard.name} has" in capsys.readouterr().err
    assert not (tmp_path / "engine").exists()
    flipped = bytearray((run / "checkpoints" / "iter_0000004" / "trainer_state.pt").read_bytes())
    flipped[-3] ^= 1  # same size, other content
    (run / "checkpoints" / "iter_0000004" / "trainer_state.pt").write_bytes(bytes(flipped))
    assert latest_checkpoint(run) is None


def test_resume_with_another_model_shape_names_the_tensor(straight_then_resumed, data):
    run = straight_then_resumed[0]
    proc = train(1, run, data, "ModelConfig.ffn_hidden_size=48", *DIST_OPT, resume=True, check=False)
    assert proc.returncode != 0
    line = [x for x in proc.stderr.splitlines() if "sidgr train: error" in x]
    assert line, proc.stderr[-3000:]
    assert "tensor decoder.layers.mlp.linear_fc1.weight shape" in line[0] and "(2, 48, 32)" in line[0]


def test_tp2_checkpoint_resumes_at_tp1(tmp_path, data):
    """TP=2 for 6 steps (checkpoints at 3, 6); then TP=1 resumes from iter 3: steps 4..6 give the same losses."""
    run = tmp_path / "run"
    no_dropout = ["ModelConfig.dropout=0.0"]
    train(2, run, data, "ParallelConfig.tensor_parallel=2", *no_dropout)
    tp2 = train_losses(run)
    tp2_final = dict(flat(read_checkpoint(run / "checkpoints" / "iter_0000006")))
    shutil.rmtree(run / "checkpoints" / "iter_0000006")
    train(1, run, data, "ParallelConfig.tensor_parallel=1", *no_dropout, resume=True)
    tp1 = train_losses(run)
    assert sorted(tp1) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert abs(tp1[step] - tp2[step]) < 1e-4, (step, tp1[step], tp2[step])
    tp1_final = dict(flat(read_checkpoint(run / "checkpoints" / "iter_0000006")))
    for key, value in tp2_final.items():
        if not key.startswith("optimizer."):
            torch.testing.assert_close(tp1_final[key], value, atol=1e-4, rtol=0, msg=key)


def test_fresh_run_over_an_earlier_run_is_refused_and_changes_nothing(straight_then_resumed, data):
    run = straight_then_resumed[0]
    before = (run / "metrics.jsonl").read_bytes(), sorted(p.name for p in (run / "checkpoints").iterdir())
    proc = train(1, run, data, *DIST_OPT, check=False)
    assert proc.returncode != 0
    line = [x for x in proc.stderr.splitlines() if "sidgr train: error" in x]
    assert line and "holds an earlier run" in line[0] and "--resume" in line[0], proc.stderr[-2000:]
    assert ((run / "metrics.jsonl").read_bytes(), sorted(p.name for p in (run / "checkpoints").iterdir())) == before


def test_resume_of_a_finished_run_says_so_and_adds_nothing(straight_then_resumed, data):
    run = straight_then_resumed[0]
    before = (run / "metrics.jsonl").read_bytes()
    proc = train(1, run, data, *DIST_OPT, "TrainerConfig.save_interval=2", resume=True)
    assert "finished at step 6" in proc.stderr
    assert (run / "metrics.jsonl").read_bytes() == before
    for line in before.decode().splitlines():  # strict JSON: no NaN or Infinity tokens
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in metrics.jsonl"))
