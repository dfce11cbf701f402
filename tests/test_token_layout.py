"""Token layout and attention masks shared by training and the engine (sidgr/token_layout.py)."""
import pytest
import torch

from sidgr.token_layout import IGNORE, decode_position, prefill_layout, training_layout

OFFSETS = (0, 10, 20)  # three levels of 10 codes each
SIDS = torch.tensor([
    [[1, 2, 3], [4, 5, 6], [7, 8, 9]],
    [[9, 8, 7], [6, 5, 4], [0, 0, 0]],  # padded third item
])
LENS = torch.tensor([3, 2])


def test_last_mode_places_one_bos_before_the_last_item():
    tb = training_layout(SIDS, LENS, "last", OFFSETS)
    # user 0: codes of items 0 and 1, BOS, codes of item 2 (global ids = code + level offset)
    assert tb.tokens[0].tolist() == [1, 12, 23, 4, 15, 26, 0, 7, 18, 29]
    assert tb.is_bos[0].nonzero().flatten().tolist() == [6]
    # positions are item slots: item k level h at k*(H+1)+1+h, its BOS at k*(H+1)
    assert tb.positions[0].tolist() == [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]
    # BOS predicts level 0 of the last item, then level h predicts level h+1; nothing else carries loss
    assert tb.labels[0].tolist() == [IGNORE] * 6 + [7, 18, 29, IGNORE]
    assert tb.label_levels[0].tolist() == [IGNORE] * 6 + [0, 1, 2, IGNORE]
    # user 1 is right-padded
    assert tb.valid[1].tolist() == [True] * 7 + [False] * 3
    assert tb.labels[1].tolist() == [IGNORE] * 3 + [6, 15, 24] + [IGNORE] * 4


def test_all_mode_has_a_bos_before_every_item_after_the_first():
    tb = training_layout(SIDS, LENS, "all", OFFSETS)
    assert tb.tokens[0].tolist() == [1, 12, 23, 0, 4, 15, 26, 0, 7, 18, 29]
    assert tb.is_bos[0].nonzero().flatten().tolist() == [3, 7]
    assert tb.positions[0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert tb.labels[0].tolist() == [IGNORE] * 3 + [4, 15, 26, IGNORE, 7, 18, 29, IGNORE]
    assert int(tb.loss_mask[1].sum()) == 3


def test_a_bos_is_seen_by_no_token_but_itself_and_mask_is_causal():
    tb = training_layout(SIDS, LENS, "all", OFFSETS)
    visible = ~tb.attention_mask[0, 0]
    S = visible.shape[0]
    assert not visible.triu(1).any(), "future keys must be masked"
    for bos in (3, 7):
        assert visible[:, bos].nonzero().flatten().tolist() == [bos]
    # every earlier code token stays visible
    for q in range(S):
        for k in range(q + 1):
            if not tb.is_bos[0, k]:
                assert visible[q, k]


def test_padding_keys_are_masked_and_padding_rows_see_themselves():
    tb = training_layout(SIDS, LENS, "last", OFFSETS)
    visible = ~tb.attention_mask[1, 0]
    valid = tb.valid[1]
    off_diag = visible & ~torch.eye(visible.shape[0], dtype=torch.bool)
    assert not off_diag[:, ~valid].any()
    assert visible.diagonal().all()


def test_all_mode_item_view_equals_last_mode_on_its_prefix():
    """What item 2 attends to in 'all' mode (tokens and positions) is exactly 'last' mode's view of it."""
    all_tb = training_layout(SIDS[:1], LENS[:1], "all", OFFSETS)
    last_tb = training_layout(SIDS[:1], LENS[:1], "last", OFFSETS)
    q_all = 7  # BOS of item 2 in 'all' mode
    q_last = 6  # BOS of item 2 in 'last' mode
    seen_all = (~all_tb.attention_mask[0, 0, q_all]).nonzero().flatten()
    seen_last = (~last_tb.attention_mask[0, 0, q_last]).nonzero().flatten()
    assert all_tb.tokens[0, seen_all].tolist() == last_tb.tokens[0, seen_last].tolist()
    assert all_tb.positions[0, seen_all].tolist() == last_tb.positions[0, seen_last].tolist()
    assert all_tb.is_bos[0, seen_all].tolist() == last_tb.is_bos[0, seen_last].tolist()


def test_prefill_ends_with_bos_at_the_next_items_slot():
    tb = prefill_layout(SIDS, LENS, OFFSETS)
    n = tb.valid.sum(1)
    assert n.tolist() == [10, 7]
    for b in range(2):
        last = int(n[b]) - 1
        assert bool(tb.is_bos[b, last])
        assert int(tb.positions[b, last]) == int(LENS[b]) * 4
        assert not tb.is_bos[b, :last].any()
        assert (tb.labels[b] == IGNORE).all()
    assert decode_position(LENS, 0, 3).tolist() == [13, 9]
    assert decode_position(LENS, 2, 3).tolist() == [15, 11]


# ---- "items" history: one ITEM token per history item, chain codes private to their item --------------------
def test_items_history_last_mode_layout():
    tb = training_layout(SIDS, LENS, "last", OFFSETS, "rqsum")
    # user 0: ITEM(0), ITEM(1), BOS, codes 0..H-2 of item 2, ITEM(2)
    assert tb.is_item[0].nonzero().flatten().tolist() == [0, 1, 5]
    assert tb.item_codes[0, 0].tolist() == [1, 12, 23]
    assert tb.item_codes[0, 1].tolist() == [4, 15, 26]
    assert tb.tokens[0].tolist() == [0, 0, 0, 7, 18, 0]
    assert tb.is_bos[0].nonzero().flatten().tolist() == [2]
    # the ITEM token takes its item's last slot; BOS and codes keep theirs
    assert tb.positions[0].tolist() == [3, 7, 8, 9, 10, 11]
    assert tb.labels[0].tolist() == [IGNORE, IGNORE, 7, 18, 29, IGNORE]
    assert tb.label_levels[0].tolist() == [IGNORE, IGNORE, 0, 1, 2, IGNORE]
    assert tb.history[0].tolist() == [True, True, False, False, False, True]
    assert tb.valid[1].tolist() == [True] * 5 + [False]


def test_items_history_chain_codes_are_seen_only_by_their_own_item():
    tb = training_layout(SIDS, LENS, "all", OFFSETS, "rqsum")
    visible = ~tb.attention_mask[0, 0]
    # [ITEM0, BOS1, c1_0, c1_1, ITEM1, BOS2, c2_0, c2_1, ITEM2]
    assert tb.is_item[0].nonzero().flatten().tolist() == [0, 4, 8]
    assert not visible.triu(1).any()
    assert visible[6].nonzero().flatten().tolist() == [0, 4, 6]  # c2_0: ITEMs 0 and 1, itself (BOS2 unseen)
    assert visible[7].nonzero().flatten().tolist() == [0, 4, 6, 7]
    assert visible[:, 2].nonzero().flatten().tolist() == [2, 3]  # c1_0: item 1's later chain token only
    assert visible[4].nonzero().flatten().tolist() == [0, 4]  # ITEM1 sees items, never a chain
    assert visible[:, 1].nonzero().flatten().tolist() == [1]  # a BOS: itself only


def reachable(tb, row: int = 0) -> torch.Tensor:
    """[S, S] the row's tokens each query's hidden state depends on through any number of layers."""
    r = (~tb.attention_mask[row, 0]).int()
    for _ in range(r.shape[0]):
        r = ((r @ r) > 0).int()
    return r.bool()


@pytest.mark.parametrize("history", ["codes", "rqsum"])
def test_all_mode_predicts_each_item_as_last_mode_does(history):
    """Every labelled token of item 2 in 'all' mode depends on exactly what 'last' mode's corresponding token
    depends on (the transitive closure of attention: what it sees, what those saw, …)."""
    all_tb = training_layout(SIDS[:1], LENS[:1], "all", OFFSETS, history)
    last_tb = training_layout(SIDS[:1], LENS[:1], "last", OFFSETS, history)
    q_all = (all_tb.item_index[0] == 2) & all_tb.loss_mask[0]
    q_last = (last_tb.item_index[0] == 2) & last_tb.loss_mask[0]
    assert all_tb.labels[0, q_all].tolist() == last_tb.labels[0, q_last].tolist()
    reach_all, reach_last = reachable(all_tb), reachable(last_tb)
    for qa, ql in zip(q_all.nonzero().flatten(), q_last.nonzero().flatten()):
        seen_all = reach_all[qa].nonzero().flatten()
        seen_last = reach_last[ql].nonzero().flatten()
        for field in ("tokens", "positions", "is_bos", "is_item", "item_codes"):
            a, b = getattr(all_tb, field)[0, seen_all], getattr(last_tb, field)[0, seen_last]
            assert torch.equal(a, b), field


@pytest.mark.parametrize("history", ["codes", "rqsum", "prefixn+id"])
def test_last_targets_predict_those_items_exactly_as_all_mode_does(history):
    """targets=1 (DataConfig.targets_per_window): only the last item of each row carries a loss, and each of its
    labelled tokens depends on exactly what 'all' mode's does; earlier items are history only (with ITEM-token
    history one token each, so context is cheap)."""
    pids = torch.tensor([[3, 5, 7], [2, 4, 0]])
    one = training_layout(SIDS, LENS, "all", OFFSETS, history, pids, targets=1)
    every = training_layout(SIDS, LENS, "all", OFFSETS, history, pids)
    for row, n in enumerate(LENS.tolist()):
        assert set(one.item_index[row, one.loss_mask[row]].tolist()) == {n - 1}
        q_one = (one.item_index[row] == n - 1) & one.loss_mask[row]
        q_all = (every.item_index[row] == n - 1) & every.loss_mask[row]
        assert one.labels[row, q_one].tolist() == every.labels[row, q_all].tolist()
        assert torch.equal(one.label_items[row, q_one], every.label_items[row, q_all])
        reach_one, reach_all = reachable(one, row), reachable(every, row)
        for qo, qa in zip(q_one.nonzero().flatten(), q_all.nonzero().flatten(), strict=True):
            seen_one, seen_all = reach_one[qo].nonzero().flatten(), reach_all[qa].nonzero().flatten()
            for field in ("tokens", "positions", "is_bos", "is_item", "item_codes", "item_pids"):
                assert torch.equal(getattr(one, field)[row, seen_one], getattr(every, field)[row, seen_all]), field
    if history != "codes":  # an item that is only history is one ITEM token
        assert int(one.valid[0].sum()) == 2 + (len(OFFSETS) + 1)
    wide = training_layout(SIDS, LENS, "all", OFFSETS, history, pids, targets=5)
    assert torch.equal(wide.labels, every.labels)


def test_items_prefill_is_one_item_token_per_history_item_then_bos():
    tb = prefill_layout(SIDS, LENS, OFFSETS, "rqsum")
    assert tb.valid.sum(1).tolist() == [4, 3]
    assert tb.is_item[0].tolist() == [True, True, True, False]
    assert tb.is_bos[1].tolist() == [False, False, True, False]
    assert tb.positions[0].tolist() == [3, 7, 11, 12]
    assert tb.history[0].tolist() == [True, True, True, False]
    assert (tb.labels == IGNORE).all()


@pytest.mark.parametrize("history", ["codes", "prefixn+id"])
def test_label_items_name_the_predicted_item_at_its_bos_only(history):
    pids = torch.tensor([[11, 12, 13], [21, 22, -1]])
    for mode, expect in (("last", [[13], [22]]), ("all", [[12, 13], [22]])):
        tb = training_layout(SIDS, LENS, mode, OFFSETS, history, pids)
        for row in range(2):
            at = tb.label_items[row] != IGNORE
            assert at.tolist() == (tb.is_bos[row] & tb.valid[row]).tolist(), (mode, row)
            assert tb.label_items[row][at].tolist() == expect[row], (mode, row)
    assert bool((training_layout(SIDS, LENS, "all", OFFSETS, history).label_items == IGNORE).all())  # no pids


@pytest.mark.parametrize("history", ["codes", "prefixn+id"])
@pytest.mark.parametrize("loss_mode", ["all", "last"])
def test_packing_moves_every_token_with_its_fields_and_exactly_its_visible_keys(history, loss_mode):
    from sidgr.token_layout import TokenBatch, packed

    gen = torch.Generator().manual_seed(7)
    B, L = 12, 6
    sids = torch.randint(0, 10, (B, L, 3), generator=gen)
    lengths = torch.randint(2, L + 1, (B,), generator=gen)
    lengths[3] = 0  # a DP padding row
    pids = torch.randint(0, 40, (B, L), generator=gen)
    tb = training_layout(sids, lengths, loss_mode, OFFSETS, history, pids)
    pk = packed(tb)
    assert pk.tokens.shape[1] == tb.tokens.shape[1] and pk.tokens.shape[0] < B
    assert int(pk.valid.sum()) == int(tb.valid.sum()) and int(pk.loss_mask.sum()) == int(tb.loss_mask.sum())
    where = {}  # (row, col) in tb -> (row, col) in pk, recovered from the packed rows' contents
    n = tb.valid.sum(1)
    used = torch.zeros_like(pk.valid)
    for b in range(B):
        if n[b] == 0:
            continue
        hits = [(r, o) for r in range(pk.tokens.shape[0]) for o in range(pk.tokens.shape[1] - int(n[b]) + 1)
                if not used[r, o:o + n[b]].any()
                and all(torch.equal(getattr(pk, f)[r, o:o + n[b]], getattr(tb, f)[b, :n[b]])
                        for f in TokenBatch.__dataclass_fields__ if f != "attention_mask")]
        assert hits, f"row {b} is not found whole in the packed batch"
        r, o = hits[0]
        used[r, o:o + n[b]] = True
        where.update({(b, s): (r, o + s) for s in range(int(n[b]))})
    assert used.sum() == pk.valid.sum()
    for (b, q), (r, pq) in where.items():
        seen = {where[(b, k)] for k in range(int(n[b])) if not tb.attention_mask[b, 0, q, k]}
        assert {(r, k) for k in range(pk.tokens.shape[1]) if not pk.attention_mask[r, 0, pq, k]} == seen
    pad_rows, pad_cols = (~pk.valid).nonzero(as_tuple=True)
    assert not pk.attention_mask[pad_rows, 0, pad_cols, pad_cols].any()  # padding queries see themselves


def test_first_fit_decreasing_places_rows_without_overlap_or_overflow():
    from sidgr.token_layout import first_fit_decreasing

    lengths = [9, 3, 0, 7, 5, 1, 10, 2]
    place = first_fit_decreasing(lengths, 10)
    assert place[2] == (-1, 0)
    spans = {}
    for (r, o), n in zip(place, lengths):
        if n:
            assert o + n <= 10
            spans.setdefault(r, []).append((o, o + n))
    for r, s in spans.items():
        s.sort()
        assert all(a[1] <= b[0] for a, b in zip(s, s[1:])), r
    assert len(spans) == 4  # 37 tokens in rows of 10: FFD reaches the bound
