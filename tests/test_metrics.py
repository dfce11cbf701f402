"""Metrics against hand-computed cases and a plain-Python reference; bootstrap reproducibility."""
import math

import numpy as np
import pytest

from sidgr import metrics as M


def compute(cands, targets, n, ks=(1, 2, 5, 50)):
    marked = M.mark_candidates(M.Ragged.from_lists(cands), M.Ragged.from_lists(targets), n)
    return marked, M.per_user_metrics(marked, ks)


def test_leave_one_out_hand_cases():
    cands = [
        [3, 1, 2],  # hit at rank 2
        [0, 0, 5, 9],  # the repeated 0 keeps its slot: hit at rank 3
        [],  # empty list
        [12, -1, 4],  # invalid ids keep their slots: hit at rank 3
        [7, 8],  # no hit
        [7, 7],  # hit at rank 1, its copy never scores again
    ]
    targets = [[1], [5], [2], [4], [9], [7]]
    marked, m = compute(cands, targets, 10)
    np.testing.assert_allclose(m["recall@1"], [0, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(m["recall@2"], [1, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(m["recall@5"], [1, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(m["hit_rate@5"], m["recall@5"])
    third = 1 / math.log2(4)
    np.testing.assert_allclose(m["ndcg@5"], [1 / math.log2(3), third, 0, third, 0, 1])
    np.testing.assert_allclose(m["ndcg@2"], [1 / math.log2(3), 0, 0, 0, 0, 1])
    np.testing.assert_allclose(m["mrr"], [1 / 2, 1 / 3, 0, 1 / 3, 0, 1])
    quality = M.list_quality(marked)
    assert quality["num_candidates"] == 14
    assert quality["num_invalid"] == 2
    assert quality["num_duplicates"] == 2
    assert quality["invalid_rate"] == pytest.approx(2 / 14)


def test_k_larger_than_list_is_not_padded():
    # With N=3, padding [0] to 50 entries would have to include item 2; the list is what it is.
    _, m = compute([[0], [2, 1]], [[2], [1]], 3)
    assert m["recall@50"].tolist() == [0.0, 1.0]
    assert m["ndcg@50"][1] == pytest.approx(1 / math.log2(3))
    assert m["ndcg@50"][0] == 0.0


def test_multiple_targets():
    # targets {1, 2, 3} (2 given twice); hits at ranks 1 and 3, the second 1 is a repeat.
    _, m = compute([[1, 9, 3, 1]], [[2, 1, 3, 2]], 10)
    assert m["recall@1"][0] == pytest.approx(1 / 3)
    assert m["recall@2"][0] == pytest.approx(1 / 3)
    assert m["recall@5"][0] == pytest.approx(2 / 3)
    assert m["hit_rate@1"][0] == 1.0
    assert m["ndcg@2"][0] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert m["ndcg@5"][0] == pytest.approx((1 + 0.5) / (1 + 1 / math.log2(3) + 0.5))
    assert m["mrr"][0] == 1.0


def test_all_targets_found_gives_ndcg_one():
    _, m = compute([[4, 2, 0], [1, 3]], [[0, 2, 4], [1]], 5)
    np.testing.assert_allclose(m["ndcg@5"], [1.0, 1.0])
    np.testing.assert_allclose(m["recall@5"], [1.0, 1.0])


def test_coverage_counts_distinct_valid_items():
    marked, _ = compute([[0, 1, 99], [1, 2, -3]], [[0], [0]], 10)
    cov = M.coverage_at(marked, 10, (1, 2, 3))
    assert cov == {"coverage@1": pytest.approx(0.2), "coverage@2": pytest.approx(0.3), "coverage@3": pytest.approx(0.3)}


def test_target_out_of_catalog_is_rejected():
    with pytest.raises(ValueError, match="outside"):
        compute([[0]], [[10]], 10)


def _reference(cands, targets, n, k):
    """Plain-Python per-user metrics, written independently of the vectorized code."""
    out = {"recall": [], "ndcg": [], "hit": [], "mrr": []}
    for lst, tgt in zip(cands, targets):
        tset, seen, hits = set(tgt), set(), []
        for rank, item in enumerate(lst, start=1):
            if 0 <= item < n and item not in seen and item in tset:
                hits.append(rank)
            if 0 <= item < n:
                seen.add(item)
        top = [r for r in hits if r <= k]
        ideal = sum(1 / math.log2(i + 1) for i in range(1, min(len(tset), k) + 1))
        out["recall"].append(len(top) / len(tset))
        out["ndcg"].append(sum(1 / math.log2(r + 1) for r in top) / ideal)
        out["hit"].append(float(bool(top)))
        out["mrr"].append(1 / hits[0] if hits else 0.0)
    return out


def test_matches_plain_python_reference_on_random_lists():
    rng = np.random.default_rng(3)
    n = 30
    cands = [rng.integers(-3, n + 3, size=rng.integers(0, 25)).tolist() for _ in range(200)]
    targets = [rng.integers(0, n, size=rng.integers(1, 4)).tolist() for _ in range(200)]
    for k in (1, 5, 10, 20):
        _, m = compute(cands, targets, n, (k,))
        ref = _reference(cands, targets, n, k)
        np.testing.assert_allclose(m[f"recall@{k}"], ref["recall"], atol=1e-12)
        np.testing.assert_allclose(m[f"ndcg@{k}"], ref["ndcg"], atol=1e-12)
        np.testing.assert_allclose(m[f"hit_rate@{k}"], ref["hit"], atol=1e-12)
        np.testing.assert_allclose(m["mrr"], ref["mrr"], atol=1e-12)


def test_ragged_take_reorders_and_fills_missing_with_empty_rows():
    r = M.Ragged.from_lists([[1, 2], [], [3, 4, 5]])
    t = r.take(np.array([2, -1, 0, 1]))
    assert t.offsets.tolist() == [0, 3, 3, 5, 5]
    assert t.values.tolist() == [3, 4, 5, 1, 2]


def test_bootstrap_means_equal_direct_resampling():
    rng = np.random.default_rng(0)
    values = rng.random((37, 3))
    got = M.bootstrap_means(values, 50, seed=11)
    idx = np.random.default_rng(11).integers(0, 37, size=(50, 37))
    np.testing.assert_allclose(got, values[idx].mean(axis=1), atol=1e-12)


def test_bootstrap_reproducible_by_seed_and_ci_contains_mean():
    rng = np.random.default_rng(1)
    per_user = {"recall@10": (rng.random(300) < 0.2).astype(float), "ndcg@10": rng.random(300) * 0.3}
    a = M.bootstrap_ci(per_user, 400, seed=5)
    b = M.bootstrap_ci(per_user, 400, seed=5)
    c = M.bootstrap_ci(per_user, 400, seed=6)
    assert a == b
    assert a != c
    for name, stat in a.items():
        assert stat["mean"] == pytest.approx(per_user[name].mean())
        assert stat["ci_low"] < stat["mean"] < stat["ci_high"]
    # a 0/1 metric with p = 0.2 over 300 users: the 95% CI half-width is about 1.96 * sqrt(.2 * .8 / 300) = 0.045
    width = a["recall@10"]["ci_high"] - a["recall@10"]["ci_low"]
    assert 0.06 < width < 0.12


def test_bootstrap_chunking_does_not_change_the_draws():
    values = np.random.default_rng(2).random((11, 2))
    whole = M.bootstrap_means(values, 7, seed=0)
    chunked = M.bootstrap_means(values, 7, seed=0, max_cells=22)  # chunks of 2 resamples
    np.testing.assert_allclose(chunked, whole, atol=1e-12)
