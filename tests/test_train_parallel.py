"""TP=2 == TP=1, DP=2 == DP=1, 'all' == 'last' over prefixes (real SID batches from the loader), overfitting.

Two subprocesses run tests/dist/train_equivalence.py: one plain process (TP=1 / DP=1 references) and one
`torchrun --standalone --nproc_per_node=2` (TP=2, then re-initialized as DP=2)."""
import pytest
import torch

from launch import run_torchrun
from train_fixtures import write_dataset

SCRIPT = "tests/dist/train_equivalence.py"

pytestmark = [pytest.mark.dist, pytest.mark.slow]  # every test reads the two worker runs of `results`


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("equiv")
    write_dataset(tmp / "data")
    out = {}
    for nproc in (1, 2):
        run_torchrun(SCRIPT, nproc, tmp / "data", tmp / f"n{nproc}.pt", timeout=240)
        out[nproc] = torch.load(tmp / f"n{nproc}.pt", weights_only=False)
    return out


@pytest.mark.parametrize("head_mode", ["shared", "per_level"])
def test_tp2_matches_tp1_loss_and_gradients(results, head_mode):
    one, two = results[1]["tp"][head_mode], results[2]["tp"][head_mode]
    assert abs(one["loss"] - two["loss"]) <= 1e-5
    assert one["weights"].keys() == two["weights"].keys()
    for name in one["weights"]:  # same seed, CPU initialization: identical starting weights
        assert torch.equal(one["weights"][name], two["weights"][name]), name
    for name in one["grads"]:
        assert one["grads"][name].shape == two["grads"][name].shape, name
        torch.testing.assert_close(two["grads"][name], one["grads"][name], atol=1e-5, rtol=0, msg=name)
    # the gradients are not trivially zero
    assert max(g.abs().max().item() for g in one["grads"].values()) > 1e-3


def test_level_softmax_is_the_engines_per_level_softmax(results):
    r = results[1]["level_softmax"]
    assert r["level"].numel() > 50
    torch.testing.assert_close(r["level"], r["reference"], atol=1e-5, rtol=0)


def test_dp2_half_batches_match_dp1_whole_batch(results):
    one, two = results[1]["dp"], results[2]["dp"]
    assert len(one["losses"]) == 2
    for a, b in zip(one["losses"], two["losses"]):
        assert abs(a - b) <= 1e-5
    moved = 0.0
    for name, w in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], w, atol=1e-6, rtol=0, msg=name)
        moved = max(moved, (w - results[1]["tp"]["per_level"]["weights"][name]).abs().max().item())
    assert moved > 1e-3  # two SGD steps really changed the weights


def test_all_mode_equals_last_mode_on_every_prefix_one_layer(results):
    r = results[1]["all_vs_last"][1]
    assert r["all"].numel() > 50  # every predicted code of every item after the first
    torch.testing.assert_close(r["all"], r["last"], atol=1e-5, rtol=0)


def test_all_mode_equals_last_mode_on_every_prefix_two_layers(results):
    r = results[1]["all_vs_last"][2]
    torch.testing.assert_close(r["all"], r["last"], atol=1e-5, rtol=0)


def test_model_overfits_a_tiny_dataset(results):
    """40 users, codebooks 8, 8, 4: 150 Adam steps (lr 1e-2, no dropout) take the train loss from about the
    per-level uniform mean (ln 8 + ln 8 + ln 4) / 3 = 1.85 to < 0.5."""
    losses = results[1]["overfit"]
    assert len(losses) == 150
    assert sum(losses[:5]) / 5 > 1.6
    assert sum(losses[-10:]) / 10 < 0.5, losses[-10:]


@pytest.mark.parametrize("family", ["packed", "item_packed"])  # SID-GR, the item models
def test_packed_rows_give_the_padded_batchs_loss_and_gradients(results, family):
    padded, packed = results[1][family]["padded"], results[1][family]["packed"]
    assert packed["rows"] < padded["rows"]
    assert abs(packed["loss"] - padded["loss"]) <= 1e-5
    for name, g in padded["grads"].items():
        torch.testing.assert_close(packed["grads"][name], g, atol=1e-5, rtol=0, msg=name)
    assert max(g.abs().max().item() for g in padded["grads"].values()) > 1e-3
