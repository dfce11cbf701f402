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
    two = next_item_layout(pids, lengths, "all", targets=2)  # DataConfig.targets_per_window: the last 2 items
    assert two.labels.tolist() == [[IGNORE, 7, 8], [3, IGNORE, IGNORE]]
    assert torch.equal(two.pids, ib.pids) and torch.equal(two.attention_mask, ib.attention_mask)
    hist = history_layout(pids, lengths)
    assert hist.pids.tolist() == [[5, 6, 7, 8], [9, 3, 0, 0]] and hist.query.tolist() == [3, 1]
    assert (hist.labels == IGNORE).all()


# ---- trained models on a planted synthetic catalog -------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("items")
    return tmp, write_synth(tmp / "data")


def _train(synth, item_input: str, save: bool, steps: str = STEPS, tp: int = 1, env: dict | None = None) -> dict:
    tmp, paths = synth
    name = f"{item_input.replace(':', '_')}_{steps}_tp{tp}"
    out = tmp / f"{name}.json"
    args = [str(Path(paths["train"]).parent), str(out), item_input, steps, str(tp)]
    run_torchrun("tests/dist/item_train.py", tp, *args, *([str(tmp / f"run_{name}")] if save else []), env=env,
                 timeout=240)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def sasrec(synth):
    return _train(synth, "id", save=True)


@pytest.fixture(scope="module")
def sid_input(synth):
    return _train(synth, "prefixn+id", save=False)


@pytest.fixture(scope="module")
def tied_code_sum(synth):
    """SIDs as input with the output tied to the input vectors: no per-item parameter at all."""
    return _train(synth, "rqsum:tied", save=True)


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
@pytest.mark.parametrize("which", ["sasrec", "sid_input", "tied_code_sum"])
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
    run_torchrun("sidgr.training.item_scoring", nproc, "--checkpoint", str(tmp / f"run_id_{STEPS}_tp1"), "--sequences",
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
    run_torchrun("sidgr.training.item_scoring", 1, "--checkpoint", str(tmp / f"run_id_{STEPS}_tp1"), "--sequences",
                 paths["valid"], "--out", str(cands), "--k", "10", timeout=240)
    report, _, _ = evaluate(cands, paths["valid"], paths["items"], exclude_history=True, ks=(10,), bootstrap=0)
    assert report["metrics"]["recall@10"]["mean"] == pytest.approx(sasrec["valid_recall@10"], abs=1e-12)
    assert report["metrics"]["ndcg@10"]["mean"] == pytest.approx(sasrec["valid_ndcg@10"], abs=1e-12)
    assert 0 < sasrec["valid_recall@10"] < 1


@pytest.mark.dist
@pytest.mark.slow
def test_tied_head_trains_the_same_under_tp2(synth):
    """The tied head's logits are computed whole on every TP rank from all-reduced input vectors: TP 2 must
    follow TP 1's losses."""
    no_dropout = {"ITEM_TRAIN_DROPOUT": "0"}
    one, two = (_train(synth, "rqsum:tied", False, "12", tp, no_dropout) for tp in (1, 2))
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    assert one["losses"][-1] < one["losses"][0]


@pytest.mark.dist
@pytest.mark.slow
def test_cosine_scoring_trains_the_same_under_tp2(synth):
    """`ModelConfig.item_temperature`: the vocab-parallel head scores cosine similarity / temperature; the query's
    gradient must be all-reduced over TP ranks as ColumnParallelLinear does, so TP 2 follows TP 1's losses; the
    losses differ from dot-product scoring and fall."""
    env = {"ITEM_TRAIN_DROPOUT": "0", "ITEM_TRAIN_TEMPERATURE": "0.1", "ITEM_TRAIN_PAD_MULTIPLE": "14"}
    one, two = (_train(synth, "id", False, "12", tp, env) for tp in (1, 2))
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    assert one["losses"][-1] < one["losses"][0]
    for run in (one, two):  # the padding of the cosine logits (TP 2: on the second rank's slice)
        assert run["padding"]["columns"] > 0 and run["padding"]["unmasked"] == 0, run["padding"]
        assert run["padding"]["ce_max_abs_diff"] < 1e-5, run["padding"]
    # At init a dot product with the small item table scores every item nearly alike (first loss within ~0.02 of
    # log N); cosine / 0.1 spreads the logits (std ~ 10 / sqrt(hidden)), which lifts the first loss well above it.
    n_items = pq.read_metadata(synth[1]["items"]).num_rows
    assert one["losses"][0] - np.log(n_items) > 0.2, (one["losses"][0], np.log(n_items))


@pytest.mark.dist
@pytest.mark.slow
def test_vocab_padding_gets_no_probability(synth):
    """An item table padded past the catalog (to a multiple of 14 rows here: the same shapes at TP 1 and 2):
    those columns of every rank's logits slice sit at the fp32 minimum, so the trainer's vocab-parallel
    cross-entropy is torch's over the real items alone (the dot-product head; cosine scoring: its TP test)."""
    n_items = pq.read_metadata(synth[1]["items"]).num_rows
    pad = _train(synth, "id", False, "4", 2, {"ITEM_TRAIN_DROPOUT": "0", "ITEM_TRAIN_PAD_MULTIPLE": "14"})["padding"]
    assert pad["columns"] == -n_items % 14 > 0 and pad["unmasked"] == 0, (n_items, pad)
    assert pad["ce_max_abs_diff"] < 1e-5, pad


def _grown_mapping(path: str, out: Path, new_items: int = 6) -> SIDMapping:
    """The catalog plus `new_items` items on free SIDs under existing prefixes (what `tokenize --extend` does)."""
    m = SIDMapping.load(path)
    used = {tuple(c) for c in m.codes.t().tolist()}
    free = [(a, b, c) for a, b in sorted({(a, b) for a, b, _ in used}) for c in range(int(m.codebook_sizes[2]))
            if (a, b, c) not in used][:new_items]
    assert len(free) == new_items
    codes = torch.cat([m.codes, torch.tensor(free, dtype=m.codes.dtype).t()], 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"method": "planted", "extended": {"from_items": m.num_items}}
    return SIDMapping.load(SIDMapping(codes, list(m.codebook_sizes), meta).save(out))


@pytest.mark.dist
@pytest.mark.slow
def test_a_tied_code_sum_model_scores_a_grown_catalog(synth, tied_code_sum, sasrec, tmp_path):
    """New items get scores from their codes; every trained item keeps exactly the score it had."""
    tmp, paths = synth
    grown = _grown_mapping(paths["mapping"], tmp_path / "grown" / "sids")
    run = str(tmp / f"run_rqsum_tied_{STEPS}_tp1")
    outs = {}
    for name, mapping in (("trained", []), ("grown", ["--mapping", str(tmp_path / "grown" / "sids.json")])):
        outs[name] = tmp_path / f"{name}.parquet"
        run_torchrun("sidgr.training.item_scoring", 1, "--checkpoint", run, "--sequences", paths["test"], "--out",
                     str(outs[name]), "--k", str(grown.num_items), "--include-history", *mapping, timeout=240)
    trained, after = (pq.read_table(outs[n]).to_pydict() for n in ("trained", "grown"))
    new = set(range(240, grown.num_items))
    for items0, scores0, items1, scores1 in zip(trained["item_ids"], trained["scores"], after["item_ids"],
                                                after["scores"]):
        assert set(items1) == set(range(grown.num_items)) and set(items0) == set(range(240))
        before = dict(zip(items0, scores0))
        now = {i: s for i, s in zip(items1, scores1) if i not in new}
        assert now.keys() == before.keys()
        np.testing.assert_allclose([now[i] for i in items0], scores0, rtol=1e-5, atol=1e-5)
    ranks = [min(r.index(i) for i in new) for r in after["item_ids"]]
    assert min(ranks) < 120, "new items are scored, not pushed to the bottom"
    # a model with a row per item cannot
    proc = run_torchrun("sidgr.training.item_scoring", 1, "--checkpoint", str(tmp / f"run_id_{STEPS}_tp1"),
                        "--sequences", paths["test"], "--out", str(tmp_path / "x.parquet"), "--mapping",
                        str(tmp_path / "grown" / "sids.json"), timeout=240, check=False)
    assert proc.returncode != 0 and "num_items" in proc.stderr and "has a row per item" in proc.stderr, proc.stderr
    assert not (tmp_path / "x.parquet").exists()


def test_packed_item_rows_keep_each_tokens_fields_and_causal_keys():
    from sidgr.training.item_model import next_item_layout, packed_items

    gen = torch.Generator().manual_seed(3)
    B, L = 10, 9
    pids = torch.randint(0, 50, (B, L), generator=gen)
    lengths = torch.randint(2, L + 1, (B,), generator=gen)
    lengths[4] = 0
    ib = next_item_layout(pids, lengths)
    pk = packed_items(ib)
    assert pk.pids.shape[1] == ib.pids.shape[1] and pk.pids.shape[0] < B
    assert int(pk.loss_mask.sum()) == int(ib.loss_mask.sum()) and (pk.query == -1).all()
    used = torch.zeros_like(pk.valid)
    for b in range(B):
        n = int(ib.valid[b].sum())
        if not n:
            continue
        hits = [(r, o) for r in range(pk.pids.shape[0]) for o in range(pk.pids.shape[1] - n + 1)
                if not used[r, o:o + n].any() and pk.valid[r, o:o + n].all()
                and all(torch.equal(getattr(pk, f)[r, o:o + n], getattr(ib, f)[b, :n])
                        for f in ("pids", "positions", "labels"))
                and torch.equal(pk.attention_mask[r, 0, o:o + n, o:o + n], ib.attention_mask[b, 0, :n, :n])]
        assert hits, b
        r, o = hits[0]
        used[r, o:o + n] = True
        outside = torch.ones(pk.pids.shape[1], dtype=torch.bool)
        outside[o:o + n] = False
        assert pk.attention_mask[r, 0, o:o + n][:, outside].all()  # nothing visible across rows
    assert torch.equal(used, pk.valid)


@pytest.mark.dist
@pytest.mark.slow
def test_scoring_several_checkpoints_averages_their_weights(synth, sasrec, full_ranking):
    """`sidgr score-items --checkpoint A B`: one model with the mean of A's and B's weights. A averaged with itself
    is A to the bit; A with the half-way checkpoint B ranks otherwise, and the same under TP 2 (each rank averages
    its own shard)."""
    from sidgr.cli import main

    tmp, paths = synth
    a, b = (str(tmp / f"run_id_{STEPS}_tp1" / "checkpoints" / f"iter_{s:07d}") for s in (int(STEPS), int(STEPS) // 2))

    def score(ckpts, nproc, *flags):
        out = tmp / f"avg_{len(ckpts)}_{ckpts[-1][-2:]}_{nproc}.parquet"
        run_torchrun("sidgr.training.item_scoring", nproc, "--checkpoint", *ckpts, "--sequences", paths["test"],
                     "--out", str(out), *flags, timeout=240)
        return pq.read_table(out).to_pydict()

    same = score([a, a], 1, "--k", "240", "--include-history")
    assert same["item_ids"] == full_ranking["item_ids"] and same["scores"] == full_ranking["scores"]
    one, two = score([a, b], 1, "--k", "20"), score([a, b], 2, "--k", "20")
    assert one["item_ids"] == two["item_ids"]
    np.testing.assert_allclose(two["scores"], one["scores"], rtol=1e-5)
    alone = [[i for i in ranked if i not in set(h)][:20]
             for ranked, h in zip(full_ranking["item_ids"], pq.read_table(paths["test"]).to_pydict()["item_ids"])]
    assert one["item_ids"] != alone  # the half-way weights moved the ranking
    # a run directory among the checkpoints is refused in one line, before anything is loaded or written
    bad = tmp / "never.parquet"
    assert main(["score-items", "--checkpoint", a, str(tmp / f"run_id_{STEPS}_tp1"), "--sequences", paths["test"],
                 "--out", str(bad)]) == 1
    assert not bad.exists()
