"""Constrained wide beam search vs the exact scorer, on random-weight engines and small random catalogs."""
import pytest
import torch

from sidgr.arch import ModelArch
from sidgr.errors import InputError
from sidgr.inference.random_engine import random_mapping, random_state_dict
from sidgr.inference.engine import Engine
from sidgr.inference.weights import EngineFiles

SIZES = (8, 6, 5, 8)


def make_engine(head_mode="shared", num_items=150, unique=True, seed=0):
    arch = ModelArch(codebook_sizes=SIZES, hidden_size=32, num_layers=2, num_attention_heads=4,
                     ffn_hidden_size=64, max_items=6, head_mode=head_mode)
    mapping = random_mapping(num_items, list(SIZES), seed=seed, unique=unique)
    return Engine(EngineFiles(arch, random_state_dict(arch, seed), mapping, "test"))


def histories(num_users, num_items, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(num_items, (int(n),), generator=g)
            for n in torch.randint(1, 9, (num_users,), generator=g)]  # some longer than max_items


@pytest.mark.parametrize("head_mode", ["shared", "per_level"])
@pytest.mark.parametrize("exclude", [False, True])
def test_full_width_beam_equals_exact_top_k(head_mode, exclude):
    eng = make_engine(head_mode)
    hist = histories(5, 150)
    k = 40
    beam = eng.retrieve(hist, k=k, widths=4096, exclude_history=exclude)
    exact = eng.retrieve(hist, k=k, widths=4096, exclude_history=exclude, exact=True)
    assert torch.equal(beam.items, exact.items)
    assert torch.allclose(beam.scores, exact.scores, atol=1e-5)
    if exclude:
        for h, row in zip(hist, beam.items):
            assert not set(h.tolist()) & set(row.tolist())


@pytest.mark.parametrize("widths", [1, 3, 7, 50, 4096, [4, 16, 64, 32], [4096, 2, 300, 10], [1, 1, 1, 1]])
def test_every_candidate_is_a_real_item_at_every_width(widths):
    eng = make_engine("per_level")
    hist = histories(6, 150, seed=3)
    final = widths if isinstance(widths, int) else widths[-1]
    k = min(final, 10)
    got = eng.retrieve(hist, k=k, widths=widths)
    exact_all = eng.retrieve(hist, k=150, widths=1, exact=True)
    for b in range(len(hist)):
        items = got.items[b][got.items[b] >= 0]
        if isinstance(widths, int) or widths == sorted(widths) or widths[1] > 2:
            assert len(items) == k  # enough prefixes survive for k items
        else:
            assert 1 <= len(items) <= k  # a width-2 step keeps 2 subtrees: maybe fewer than k leaves
        assert len(set(items.tolist())) == len(items)
        assert int(items.min()) >= 0 and int(items.max()) < 150
        # its score is the item's exact log-likelihood, and scores come best first
        ref = dict(zip(exact_all.items[b].tolist(), exact_all.scores[b].tolist()))
        assert torch.allclose(got.scores[b][:len(items)], torch.tensor([ref[i] for i in items.tolist()]), atol=1e-5)
        s = got.scores[b][:len(items)]
        assert bool((s[:-1] >= s[1:]).all())


def test_beam_count_is_bounded_by_existing_prefixes():
    eng = make_engine(num_items=12)  # fewer leaves than the width: fewer beams, never invalid ones
    got = eng.retrieve(histories(3, 12), k=100, widths=100)
    for row in got.items:
        live = row[row >= 0]
        assert sorted(live.tolist()) == list(range(12))


def test_collisions_expand_to_all_items_lower_id_first():
    eng = make_engine(num_items=120, unique=False, seed=4)
    codes = eng.mapping.codes
    assert eng.index.leaf_offsets.numel() - 1 < 120  # there are collisions
    hist = histories(4, 120, seed=5)
    beam = eng.retrieve(hist, k=120, widths=4096)
    exact = eng.retrieve(hist, k=120, widths=4096, exact=True)
    assert torch.equal(beam.items, exact.items)
    for row, sc in zip(beam.items, beam.scores):
        assert sorted(row.tolist()) == list(range(120))
        for a in range(119):  # equal SIDs -> equal scores, lower item id first
            i, j = int(row[a]), int(row[a + 1])
            if torch.equal(codes[:, i], codes[:, j]):
                assert sc[a] == sc[a + 1] and i < j


def test_deterministic_output():
    eng = make_engine()
    hist = histories(6, 150, seed=7)
    a = eng.retrieve(hist, k=20, widths=[4, 8, 16, 32])
    b = make_engine().retrieve(hist, k=20, widths=[4, 8, 16, 32])
    assert torch.equal(a.items, b.items) and torch.equal(a.scores, b.scores)


def test_bad_widths_and_k():
    eng = make_engine()
    hist = histories(2, 150)
    with pytest.raises(InputError, match="beam width=0"):
        eng.retrieve(hist, k=1, widths=0)
    with pytest.raises(InputError, match="one width per level"):
        eng.retrieve(hist, k=1, widths=[4, 4])
    with pytest.raises(InputError, match="k=9: larger than the final beam width 8"):
        eng.retrieve(hist, k=9, widths=[8, 8, 8, 8])
    with pytest.raises(InputError, match="empty history"):
        eng.retrieve([torch.tensor([1]), torch.tensor([], dtype=torch.int64)], k=1, widths=4)
    with pytest.raises(InputError, match="item_ids=150: outside the catalog"):
        eng.retrieve([torch.tensor([1, 150])], k=1, widths=4)


def test_exact_scorer_chunks_agree_with_one_pass():
    from sidgr.inference.exact import exact_top_leaves
    eng = make_engine("per_level", seed=9)
    bos, cache = eng.prefill(histories(4, 150, seed=9))
    n = eng.index.num_nodes(len(SIZES))
    one_l, one_s = exact_top_leaves(eng.model, eng.index, bos, cache, keep=n, max_tokens=1 << 20)
    many_l, many_s = exact_top_leaves(eng.model, eng.index, bos, cache, keep=n, max_tokens=4 * 7)  # 7 leaves
    assert one_l.shape == (4, n) and torch.equal(one_l, many_l)
    assert torch.allclose(one_s, many_s, atol=1e-5)
    # a probability distribution over full SIDs that all exist: the catalog's mass is <= 1
    assert bool((one_s.exp().sum(1) <= 1 + 1e-5).all())


def adversarial_histories(eng, k: int) -> dict[str, list[torch.Tensor]]:
    """Histories built to starve a beam that excludes seen items only at the last level."""
    n = eng.mapping.num_items
    users = histories(4, n, seed=11)
    exact = eng.retrieve(users, k=n, widths=1, exact=True).items
    level0 = eng.mapping.codes[0]
    out = {"exact top-100 + 5 random": [torch.cat([row[:100], h[:5]]) for row, h in zip(exact, users)],
           "whole subtrees": [(level0 != level0[int(row[0])]).logical_not().nonzero().squeeze(1)
                              for row in exact],  # every item under each user's best level-0 code
           "all but k": [row[-(n - k):] for row in exact],  # only the k worst items are unseen
           "all but k - 3": [row[-(n - k + 3):] for row in exact],
           "everything": [torch.arange(n)] * 2}
    return out


@pytest.mark.parametrize("head_mode", ["shared", "per_level"])
@pytest.mark.parametrize("case", ["exact top-100 + 5 random", "whole subtrees", "all but k", "all but k - 3",
                                  "everything"])
def test_history_exclusion_keeps_k_unseen_items_at_width_k(head_mode, case):
    """With every width >= k each user gets min(k, unseen catalog items) distinct unseen items, and they are the
    exact scorer's top-k when the beam is wide enough to be exact."""
    eng = make_engine(head_mode, num_items=150)
    k = 20
    hist = adversarial_histories(eng, k)[case]
    got = eng.retrieve(hist, k=k, widths=k, exclude_history=True)
    full = eng.retrieve(hist, k=k, widths=4096, exclude_history=True)
    exact = eng.retrieve(hist, k=k, widths=1, exclude_history=True, exact=True)
    assert torch.equal(full.items, exact.items)
    for h, row in zip(hist, got.items):
        items = row[row >= 0].tolist()
        unseen = 150 - len(set(h.tolist()))
        assert len(items) == min(k, unseen), (case, len(items), unseen)
        assert len(set(items)) == len(items) and not set(items) & set(h.tolist())


def test_sorted_topk_keeps_lower_index_among_ties_at_the_cut():
    from sidgr.inference.beam import sorted_topk
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 37), generator=g).float()
    scores[:, 5] = float("-inf")
    for k in (1, 3, 10, 36, 37):
        vals, idx = sorted_topk(scores, k)
        for row, v, i in zip(scores, vals, idx):  # reference: a full sort by (score desc, index asc)
            ref = sorted(range(37), key=lambda j: (-row[j].item(), j))[:k]
            assert i.tolist() == ref and v.tolist() == row[ref].tolist()
    vals, idx = sorted_topk(torch.zeros(3, 1000), 7)
    assert idx.tolist() == [list(range(7))] * 3


@pytest.mark.parametrize("exclude", [False, True])
def test_all_equal_logits_tie_the_same_way_in_beam_and_exact(exclude):
    """Zero output head: every item has the same likelihood. Beam and exact keep the items with the smallest
    SIDs and list them by SID, then item id, at every width."""
    arch = ModelArch(codebook_sizes=SIZES, hidden_size=32, num_layers=2, num_attention_heads=4,
                     ffn_hidden_size=64, max_items=6, head_mode="shared")
    state = random_state_dict(arch, 0)
    state["heads.0.weight"].zero_()
    mapping = random_mapping(150, list(SIZES), seed=4, unique=False)
    eng = Engine(EngineFiles(arch, state, mapping, "test"))
    hist = histories(5, 150, seed=12)
    sid_order = sorted(range(150), key=lambda i: (mapping.codes[:, i].tolist(), i))
    exact = eng.retrieve(hist, k=30, widths=1, exclude_history=exclude, exact=True)
    for widths in (30, 64, [30, 30, 30, 30], 4096):
        beam = eng.retrieve(hist, k=30, widths=widths, exclude_history=exclude)
        assert torch.equal(beam.items, exact.items), widths
    for h, row in zip(hist, exact.items):
        seen = set(h.tolist()) if exclude else set()
        assert row.tolist() == [i for i in sid_order if i not in seen][:30]


# ---- items added after training (sidgr tokenize --extend) ------------------------------------------------------
def extended_engine(num_old=40, num_new=12, sizes=(4, 5), seed=3):
    arch = ModelArch(codebook_sizes=sizes, hidden_size=32, num_layers=2, num_attention_heads=4,
                     ffn_hidden_size=64, max_items=6)
    full = random_mapping(num_old + num_new, list(sizes), seed=seed, unique=False)
    full.meta = {"extended": {"from_items": num_old}}  # items num_old.. were added after training
    return Engine(EngineFiles(arch, random_state_dict(arch, seed), full, "test"))


def test_backoff_ranks_new_items_as_the_average_item_of_their_prefix():
    eng = extended_engine()
    hist = [torch.tensor([0, 41]), torch.tensor([5, 6, 7])]
    assert eng.backoff_depth == 1  # two levels, no dedup level: new items are scored at their first code
    model_only = eng.retrieve(hist, k=52, widths=64, exclude_history=True)
    ranked = eng.retrieve(hist, k=52, widths=64, exclude_history=True, new_items="backoff")
    bos, _ = eng.prefill(hist)
    logp0 = eng.model.level_log_probs(bos, 0)  # [B, C0]: the depth-1 prefix log-probabilities
    codes = eng.mapping.codes
    for b, h in enumerate(hist):
        keep = ranked.items[b] >= 0
        items, scores = ranked.items[b][keep].tolist(), ranked.scores[b][keep].tolist()
        got = dict(zip(items, scores))
        assert len(items) == 52 - len(h)  # every unseen item once (k >= catalog)
        assert len(set(items)) == len(items) and not set(h.tolist()) & set(items)
        model_scores = dict(zip(model_only.items[b].tolist(), model_only.scores[b].tolist()))
        for item in range(40, 52):
            if item in h.tolist():
                continue
            c0 = int(codes[0, item])
            backoff = float(logp0[b, c0]) - float(torch.tensor(float((codes[0] == c0).sum())).log())
            # the better of its two scores: the model's own full-SID likelihood, or the prefix back-off
            assert got[item] == pytest.approx(max(backoff, model_scores[item]), abs=1e-5), item
        for item in range(40):  # trained items keep the model's score
            if item in got:
                assert got[item] == pytest.approx(model_scores[item], abs=1e-6)
        assert scores == sorted(scores, reverse=True)
    with pytest.raises(InputError, match="needs beam search"):
        eng.retrieve(hist, k=5, widths=64, exact=True, new_items="backoff")
