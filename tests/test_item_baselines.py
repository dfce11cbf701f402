"""Item-level baselines (SASRec-CE, SIDs as input features) on the Megatron decoder.

The Megatron runs each go through their own subprocess (tests/dist/item_train.py, sidgr.training.item_scoring).
"""
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from item_fixtures import write_synth
from launch import run_torchrun

from sidgr.errors import InputError
from sidgr.token_layout import IGNORE
from sidgr.sid.mapping import SIDMapping
from sidgr.sid.prefix_index import PrefixIndex

STEPS = "150"


# ---- pure functions (no process group) -------------------------------------------------------------------------
def test_prefix_node_ids_equal_brute_force():
    rng = np.random.default_rng(0)
    codes = np.stack([rng.integers(0, 3, 60), rng.integers(0, 4, 60), rng.integers(0, 5, 60)]).astype(np.int64)
    nodes = PrefixIndex.build(torch.from_numpy(codes), [3, 4, 5]).prefix_nodes(torch.from_numpy(codes))
    for depth in range(1, 4):
        prefixes = [tuple(codes[:depth, i]) for i in range(codes.shape[1])]
        rank = {p: r for r, p in enumerate(sorted(set(prefixes)))}
        assert nodes[depth - 1].tolist() == [rank[p] for p in prefixes]


def test_catalog_maps_sids_back_to_items_and_rejects_collisions():
    from sidgr.training.item_model import ItemCatalog

    codes = torch.tensor([[0, 0, 1, 1, 2], [0, 1, 0, 1, 0]])
    cat = ItemCatalog.from_mapping(SIDMapping(codes, [3, 2], {}))
    assert cat.prefix_counts == (3, 5)
    pids = torch.tensor([[4, 1, 3], [2, 0, 0]])
    lengths = torch.tensor([3, 1])
    sids = codes.t()[pids]
    assert cat.sids_to_pids(sids, lengths).tolist() == [[4, 1, 3], [2, -1, -1]]
    with pytest.raises(InputError, match="items 0 and 1"):
        ItemCatalog.from_mapping(SIDMapping(torch.tensor([[0, 0, 1], [1, 1, 0]]), [2, 2], {}))


def test_next_item_layout_labels_and_mask():
    from sidgr.training.item_model import history_layout, next_item_layout

    pids = torch.tensor([[5, 6, 7, 8], [9, 3, -1, -1]])
    lengths = torch.tensor([4, 2])
    ib = next_item_layout(pids, lengths, "all")
    assert ib.pids.tolist() == [[5, 6, 7], [9, 0, 0]]
    assert ib.labels.tolist() == [[6, 7, 8], [3, IGNORE, IGNORE]]
    assert ib.positions.tolist() == [[0, 1, 2], [0, 1, 2]]
    assert ib.query.tolist() == [2, 0]
    m = ib.attention_mask[:, 0]
    assert m[0].tolist() == [[False, True, True], [False, False, True], [False, False, False]]
    assert m[1].tolist() == [[False, True, True], [False, False, True], [False, True, False]]  # padding keys unseen
    last = next_item_layout(pids, lengths, "last")
    assert last.labels.tolist() == [[IGNORE, IGNORE, 8], [3, IGNORE, IGNORE]]
    hist = history_layout(pids, lengths)
    assert hist.pids.tolist() == [[5, 6, 7, 8], [9, 3, 0, 0]] and hist.query.tolist() == [3, 1]
    assert (hist.labels == IGNORE).all()


# ---- trained models on a planted synthetic catalog -------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("items")
    return tmp, write_synth(tmp / "data")


def _train(synth, item_input: str, save: bool) -> dict:
    tmp, paths = synth
    out = tmp / f"{item_input}.json"
    args = [str(Path(paths["train"]).parent), str(out), item_input, STEPS, "1"]
    run_torchrun("tests/dist/item_train.py", 1, *args, *([str(tmp / f"run_{item_input}")] if save else []), timeout=240)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def sasrec(synth):
    return _train(synth, "id", save=True)


@pytest.fixture(scope="module")
def sid_input(synth):
    return _train(synth, "prefixn+id", save=False)


def _popularity_recall10(paths) -> float:
    from sidgr.baselines import popularity_candidates
    from sidgr.data.readers import read_sequences, read_targets
    from sidgr.metrics import mark_candidates, per_user_metrics

    n_items = pq.read_metadata(paths["items"]).num_rows
    counts = np.bincount(read_sequences(paths["train"]).item_ids, minlength=n_items)
    test, _ = read_targets(paths["test"], n_items)
    lists, _ = popularity_candidates(counts, test.items, 10, False)
    return float(per_user_metrics(mark_candidates(lists, test.targets, n_items), (10,))["recall@10"].mean())


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("which", ["sasrec", "sid_input"])
def test_item_models_learn_and_beat_popularity(request, synth, which):
    result = request.getfixturevalue(which)
    pop = _popularity_recall10(synth[1])
    assert 0.05 < pop < 0.4  # the planted catalog: global popularity alone is weak
    losses = result["losses"]
    assert np.mean(losses[-20:]) < np.mean(losses[:5]) - 1.0  # from ~log(240)=5.5
    assert result["test_recall@10"] > pop + 0.2, (result["test_recall@10"], pop)
    assert result["valid_recall@10"] > pop + 0.2


def _score(synth, *flags, nproc=1) -> dict:
    tmp, paths = synth
    out = tmp / ("cands" + "".join(flags).replace("-", "_") + f"_{nproc}.parquet")
    run_torchrun("sidgr.training.item_scoring", nproc, "--checkpoint", str(tmp / "run_id"), "--sequences",
                 paths["test"], "--out", str(out), *flags, timeout=240)
    return pq.read_table(out).to_pydict()


@pytest.fixture(scope="module")
def full_ranking(synth, sasrec):
    return _score(synth, "--k", "240", "--include-history")


@pytest.mark.dist
@pytest.mark.slow
def test_scoring_a_checkpoint_reproduces_the_trained_model(sasrec, full_ranking):
    assert [r[:10] for r in full_ranking["item_ids"]] == sasrec["test_top10"]
    assert all(s == sorted(s, reverse=True) for s in full_ranking["scores"])


@pytest.mark.dist
@pytest.mark.slow
def test_scoring_excludes_history_under_tp2(synth, full_ranking):
    full = full_ranking
    excl = _score(synth, "--k", "20", nproc=2)  # the whole history is excluded by default
    test = pq.read_table(synth[1]["test"]).to_pydict()
    assert excl["user_id"] == full["user_id"] == test["user_id"]
    for hist, ranked, got in zip(test["item_ids"], full["item_ids"], excl["item_ids"]):
        assert sorted(ranked) == list(range(240))  # full-catalog protocol: every item ranked once
        assert not set(got) & set(hist)
        assert got == [i for i in ranked if i not in set(hist)][:20]


@pytest.mark.dist
@pytest.mark.slow
def test_validation_during_training_equals_sidgr_evaluate(synth, sasrec, tmp_path):
    """The checkpoint-selecting number is the reported number: the trainer's valid Recall@10/NDCG@10 equal
    `sidgr evaluate` on `sidgr score-items` candidates for valid.parquet (whole history excluded in both)."""
    from sidgr.evaluate import evaluate

    tmp, paths = synth
    cands = tmp_path / "valid_cands.parquet"
    run_torchrun("sidgr.training.item_scoring", 1, "--checkpoint", str(tmp / "run_id"), "--sequences",
                 paths["valid"], "--out", str(cands), "--k", "10", timeout=240)
    report, _, _ = evaluate(cands, paths["valid"], paths["items"], exclude_history=True, ks=(10,), bootstrap=0)
    assert report["metrics"]["recall@10"]["mean"] == pytest.approx(sasrec["valid_recall@10"], abs=1e-12)
    assert report["metrics"]["ndcg@10"]["mean"] == pytest.approx(sasrec["valid_ndcg@10"], abs=1e-12)
    assert 0 < sasrec["valid_recall@10"] < 1
