"""Streaming SID loader: sharding, TP peers, truncation, shuffling, exact resume, bad input."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from launch import run_torchrun

from sidgr.errors import InputError
from sidgr.sid.mapping import SIDMapping
from sidgr.training.loader import DataConfig, SequenceLoader

N_ITEMS = 64  # SID of pid p is (p // 16, (p // 4) % 4, p % 4): invertible, so tests can decode batches


def make_mapping() -> SIDMapping:
    p = torch.arange(N_ITEMS)
    return SIDMapping(torch.stack([p // 16, (p // 4) % 4, p % 4]), [4, 4, 4])


def decode(sids: torch.Tensor) -> torch.Tensor:
    return sids[..., 0] * 16 + sids[..., 1] * 4 + sids[..., 2]


def user_items(u: int) -> list[int]:
    """User u has 1 + u % 9 items (so some have 1 item), deterministic PIDs."""
    return [(u * 7 + 3 * i) % N_ITEMS for i in range(1 + u % 9)]


def write_sequences(path, users, target: bool = False, row_group_size: int = 16, items=user_items):
    cols = {"user_id": pa.array(users, pa.int64()),
            "item_ids": pa.array([items(u) for u in users], pa.list_(pa.int64())),
            "timestamps": pa.array([list(range(len(items(u)))) for u in users], pa.list_(pa.int64()))}
    if target:
        cols["target"] = pa.array([(u * 5 + 1) % N_ITEMS for u in users], pa.int64())
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)
    return path


def cfg(**kw) -> DataConfig:
    base = dict(max_items=6, min_items=2, global_batch_size=12, record_batch_rows=5, shuffle_window_rows=20)
    base.update(kw)
    return DataConfig(**base)


def eligible(users, min_items=2, extra=0):
    return [u for u in users if len(user_items(u)) + extra >= min_items]


def epoch(loader) -> list:
    return list(iter(loader))


def real_uids(batch) -> list[int]:
    return batch.user_ids[:batch.real_size].tolist()


@pytest.fixture
def train_file(tmp_path):
    return write_sequences(tmp_path / "train.parquet", list(range(100)))


@pytest.mark.parametrize("dp_size", [2, 3])
def test_dp_shards_disjoint_complete_and_contiguous_slices(train_file, dp_size):
    mapping, c = make_mapping(), cfg()
    want = eligible(range(100))  # 88 users -> 8 global batches of 12, the last one holds 4
    whole = epoch(SequenceLoader(train_file, mapping, c, 0, 1, training=True))
    ranks = [epoch(SequenceLoader(train_file, mapping, c, r, dp_size, training=True)) for r in range(dp_size)]
    b = 12 // dp_size
    assert len(whole) == 8 and all(len(rb) == 8 for rb in ranks)
    seen = []
    for i in range(8):
        parts = [rb[i] for rb in ranks]
        for part in parts:
            assert part.sids.shape == (b, 6, 3) and part.lengths.shape == (b,)
            assert (part.lengths[part.real_size:] == 0).all() and (part.user_ids[part.real_size:] == -1).all()
            assert (part.sids[part.real_size:] == 0).all() and (part.lengths[:part.real_size] > 0).all()
        # the global batch is the same contiguous slice of the order, split across ranks in rank order
        assert sum((real_uids(p) for p in parts), []) == real_uids(whole[i])
        seen += sum((real_uids(p) for p in parts), [])
    assert sorted(seen) == want and len(seen) == len(set(seen))
    expected_real = [min(b, max(0, 4 - r * b)) for r in range(dp_size)]  # short last global batch of 4 users
    assert [rb[-1].real_size for rb in ranks] == expected_real
    assert SequenceLoader(train_file, mapping, c, 0, dp_size, training=True).skipped_users == 12


def test_tp_peers_identical(train_file):
    mapping, c = make_mapping(), cfg()
    a = epoch(SequenceLoader(train_file, mapping, c, 1, 2, training=True))
    b = epoch(SequenceLoader(train_file, mapping, c, 1, 2, training=True))
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.sids, y.sids) and torch.equal(x.lengths, y.lengths)
        assert torch.equal(x.user_ids, y.user_ids) and x.real_size == y.real_size


def test_rows_hold_most_recent_items_as_sids(tmp_path):
    path = write_sequences(tmp_path / "t.parquet", list(range(40)))
    loader = SequenceLoader(path, make_mapping(), cfg(max_items=4, min_items=1), 0, 1, training=True)
    rows = 0
    for batch in epoch(loader):
        for i in range(batch.real_size):
            u, n = int(batch.user_ids[i]), int(batch.lengths[i])
            assert decode(batch.sids[i, :n]).tolist() == user_items(u)[-4:]
            assert (batch.sids[i, n:] == 0).all()
            rows += 1
    assert rows == 40 and loader.skipped_users == 0


def test_valid_mode_appends_target_and_keeps_file_order(tmp_path):
    users = list(range(30))
    path = write_sequences(tmp_path / "valid.parquet", users, target=True)
    c = cfg(max_items=5, min_items=3, shuffle=True)
    loader = SequenceLoader(path, make_mapping(), c, 0, 1, training=False, append_target=True)
    want = [u for u in users if len(user_items(u)) + 1 >= 3]
    assert loader.skipped_users == len(users) - len(want)
    got = []
    for batch in epoch(loader):
        for i in range(batch.real_size):
            u, n = int(batch.user_ids[i]), int(batch.lengths[i])
            assert decode(batch.sids[i, :n]).tolist() == (user_items(u) + [(u * 5 + 1) % N_ITEMS])[-5:]
            got.append(u)
    assert got == want  # no shuffle in validation, every user exactly once
    assert [real_uids(b) for b in epoch(loader)] == [real_uids(b) for b in epoch(loader)]  # every pass the same


def test_shuffle_differs_by_epoch_and_is_reproducible_by_seed(train_file):
    mapping = make_mapping()

    def orders(seed, shuffle=True, n_epochs=2):
        loader = SequenceLoader(train_file, mapping, cfg(seed=seed, shuffle=shuffle), 0, 1, training=True)
        return [sum((real_uids(b) for b in epoch(loader)), []) for _ in range(n_epochs)]

    e0, e1 = orders(7)
    assert sorted(e0) == sorted(e1) == eligible(range(100))
    assert e0 != e1
    assert orders(7) == [e0, e1]
    assert orders(8)[0] != e0
    assert orders(7, shuffle=False) == [eligible(range(100))] * 2


def _stream(loader, n):
    """The next n batches as plain lists, continuing across epochs."""
    out, it = [], iter(loader)
    while len(out) < n:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        out.append((b.user_ids.tolist(), b.lengths.tolist(), b.sids.tolist(), b.real_size))
    return out


@pytest.mark.parametrize("cut", [3, 8, 11])  # mid-epoch, exactly at the end of epoch 0, mid-epoch 1
def test_resume_gives_the_same_batch_sequence(train_file, cut):
    mapping, c = make_mapping(), cfg()
    straight = _stream(SequenceLoader(train_file, mapping, c, 1, 2, training=True), 20)
    first = SequenceLoader(train_file, mapping, c, 1, 2, training=True)
    assert _stream(first, cut) == straight[:cut]
    state = first.state_dict()
    resumed = SequenceLoader(train_file, mapping, c, 1, 2, training=True)
    resumed.load_state_dict(state)
    assert _stream(resumed, 20 - cut) == straight[cut:]


def test_resume_with_another_dp_layout_continues_the_same_global_batches(train_file):
    mapping, c = make_mapping(), cfg()
    straight = [real_uids(b) for b in epoch(SequenceLoader(train_file, mapping, c, 0, 1, training=True))]
    first = SequenceLoader(train_file, mapping, c, 0, 1, training=True)
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    ranks = []
    for r in range(3):
        loader = SequenceLoader(train_file, mapping, c, r, 3, training=True)
        loader.load_state_dict(state)
        ranks.append([real_uids(b) for b in epoch(loader)])
    assert [sum(parts, []) for parts in zip(*ranks)] == straight[3:]


def test_resume_refuses_a_state_with_another_order(train_file):
    mapping = make_mapping()
    state = SequenceLoader(train_file, mapping, cfg(seed=1), 0, 1, training=True).state_dict()
    with pytest.raises(ValueError, match="seed"):
        SequenceLoader(train_file, mapping, cfg(seed=2), 0, 1, training=True).load_state_dict(state)


def test_workers_give_the_same_batches(train_file):
    mapping = make_mapping()
    inline = _stream(SequenceLoader(train_file, mapping, cfg(), 1, 2, training=True), 10)
    workers = SequenceLoader(train_file, mapping, cfg(num_workers=2), 1, 2, training=True)
    assert _stream(workers, 10) == inline


def test_out_of_range_pid_names_file_user_and_value(tmp_path):
    path = write_sequences(tmp_path / "bad.parquet", list(range(20)),
                           items=lambda u: [1, 2, 99] if u == 13 else [1, 2])
    with pytest.raises(InputError) as err:
        SequenceLoader(path, make_mapping(), cfg(), 0, 1, training=True)
    msg = str(err.value)
    assert "bad.parquet" in msg and "user_id=13" in msg and "99" in msg


def test_out_of_range_target_is_reported(tmp_path):
    path = write_sequences(tmp_path / "v.parquet", list(range(5)), target=True)
    table = pq.read_table(path)
    table = table.set_column(3, "target", pa.array([1, 2, -4, 3, 5], pa.int64()))
    pq.write_table(table, path)
    with pytest.raises(InputError, match=r"user_id=2 target=-4"):
        SequenceLoader(path, make_mapping(), cfg(), 0, 1, training=False, append_target=True)


def test_bad_settings_are_refused(train_file, tmp_path):
    with pytest.raises(ValueError, match="divisible"):
        SequenceLoader(train_file, make_mapping(), cfg(global_batch_size=10), 0, 3, training=True)
    with pytest.raises(InputError, match="target"):
        SequenceLoader(train_file, make_mapping(), cfg(), 0, 1, training=False, append_target=True)
    with pytest.raises(InputError, match="no user"):
        SequenceLoader(train_file, make_mapping(), cfg(min_items=100), 0, 1, training=True)


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("windows", ["recent", "strided", "random"])
def test_torchrun_tp_peers_and_dp_shards(train_file, windows):
    """4 processes, TP=2 x DP=2: peers identical, shards = the single-process global batches (2 epochs)."""
    proc = run_torchrun("tests/dist/loader_check.py", 4, train_file, 2, windows, timeout=300)
    assert "OK: 4 ranks, tp=2" in proc.stdout and f"global batches checked ({windows})" in proc.stdout
    if windows == "recent":
        assert "OK: 4 ranks, tp=2, 16 global batches checked" in proc.stdout


# ---- training windows (DataConfig.windows) ----------------------------------------------------------------------
def _windows_by_user(batches) -> dict[int, list[list[int]]]:
    out: dict[int, list[list[int]]] = {}
    for b in batches:
        for i in range(b.real_size):
            n = int(b.lengths[i])
            assert (b.sids[i, n:] == 0).all()
            out.setdefault(int(b.user_ids[i]), []).append(decode(b.sids[i, :n]).tolist())
    return out


def _position(items: list[int], window: list[int]) -> int:
    """Where `window` sits inside `items` (PIDs of a user are distinct in these fixtures)."""
    start = items.index(window[0])
    assert items[start:start + len(window)] == window
    return start


@pytest.mark.parametrize("max_items,targets", [(2, 0), (4, 0), (6, 0), (6, 1), (6, 2), (4, 3), (9, 4)])
def test_strided_windows_make_every_item_after_the_first_a_target_once(train_file, max_items, targets):
    """Windows of up to max_items items end at n, n-m, … (m = DataConfig.targets_per_window, by default
    max_items - 1); their last m items (the earliest window: every item after its first) are each user's items
    after the first, once each."""
    m = targets or max_items - 1
    c = cfg(windows="strided", max_items=max_items, targets_per_window=targets)
    loader = SequenceLoader(train_file, make_mapping(), c, 0, 1, training=True)
    got = _windows_by_user(epoch(loader))
    assert sorted(got) == eligible(range(100))
    rows = 0
    for u, windows in got.items():
        items = user_items(u)
        targets_seen = []
        for w in windows:
            start = _position(items, w)
            assert len(w) == max_items or start == 0  # only the earliest window may be short
            targets_seen += list(range(max(start + 1, start + len(w) - m), start + len(w)))
        assert sorted(targets_seen) == list(range(1, len(items)))  # each item after the first exactly once
        assert max(_position(items, w) + len(w) for w in windows) == len(items)  # the most recent window is there
        assert len(windows) == -(-(len(items) - 1) // m)
        rows += len(windows)
    assert loader.num_users == rows and loader.num_batches == -(-rows // 12)


def test_targets_per_window_is_refused_outside_strided_windows_and_on_resume(train_file):
    mapping = make_mapping()
    for bad in (dict(targets_per_window=2), dict(windows="strided", max_items=4, targets_per_window=4),
                dict(windows="strided", targets_per_window=-1)):
        with pytest.raises(ValueError, match="targets_per_window"):
            SequenceLoader(train_file, mapping, cfg(**bad), 0, 1, training=True)
    state = SequenceLoader(train_file, mapping, cfg(windows="strided", max_items=6), 0, 1, training=True).state_dict()
    with pytest.raises(ValueError, match="would not reproduce the same batches"):
        SequenceLoader(train_file, mapping, cfg(windows="strided", max_items=6, targets_per_window=2), 0, 1,
                       training=True).load_state_dict(state)
    state["window_step"] = 2  # a state that differs only in the step (same row count here or not) is refused too
    with pytest.raises(ValueError, match="window_step"):
        SequenceLoader(train_file, mapping, cfg(windows="strided", max_items=6), 0, 1,
                       training=True).load_state_dict(state)
    state.pop("window_step")  # a state written before the switch: windows stepped back by max_items - 1
    SequenceLoader(train_file, mapping, cfg(windows="strided", max_items=6), 0, 1, training=True).load_state_dict(state)


def test_recent_is_the_default_and_strided_equals_recent_when_histories_fit(train_file):
    mapping = make_mapping()
    assert DataConfig().windows == "recent"
    a = _stream(SequenceLoader(train_file, mapping, cfg(max_items=9), 0, 1, training=True), 10)
    b = _stream(SequenceLoader(train_file, mapping, cfg(max_items=9, windows="strided"), 0, 1, training=True), 10)
    assert a == b


@pytest.mark.parametrize("windows", ["strided", "random"])
@pytest.mark.parametrize("dp_size", [2, 3])
def test_windowed_dp_shards_are_the_single_process_global_batches(train_file, windows, dp_size):
    mapping, c = make_mapping(), cfg(windows=windows, max_items=3)
    whole = epoch(SequenceLoader(train_file, mapping, c, 0, 1, training=True))
    ranks = [epoch(SequenceLoader(train_file, mapping, c, r, dp_size, training=True)) for r in range(dp_size)]
    peer = epoch(SequenceLoader(train_file, mapping, c, dp_size - 1, dp_size, training=True))  # a TP peer
    for x, y in zip(ranks[-1], peer, strict=True):
        assert torch.equal(x.sids, y.sids) and torch.equal(x.lengths, y.lengths) and x.real_size == y.real_size
    for i, full in enumerate(whole):
        parts = [rb[i] for rb in ranks]
        assert torch.equal(torch.cat([p.sids[:p.real_size] for p in parts]), full.sids[:full.real_size])
        assert sum((real_uids(p) for p in parts), []) == real_uids(full)


def test_random_windows_one_per_user_seeded_and_new_each_epoch(train_file):
    mapping = make_mapping()

    def two_epochs(seed):
        loader = SequenceLoader(train_file, mapping, cfg(windows="random", max_items=3, seed=seed), 0, 1,
                                training=True)
        return [_windows_by_user(epoch(loader)) for _ in range(2)]

    e0, e1 = two_epochs(5)
    for got in (e0, e1):
        assert sorted(got) == eligible(range(100))
        for u, windows in got.items():
            assert len(windows) == 1 and 2 <= len(windows[0]) <= 3
            _position(user_items(u), windows[0])
    assert e0 != e1 and two_epochs(5) == [e0, e1] and two_epochs(6)[0] != e0
    ends = {_position(user_items(u), w[0]) + len(w[0]) for u, w in e0.items() if len(user_items(u)) == 9}
    assert len(ends) > 1  # not always the most recent window


@pytest.mark.parametrize("windows", ["strided", "random"])
@pytest.mark.parametrize("cut", [3, 11, 25])
def test_windowed_resume_gives_the_same_batch_sequence(train_file, windows, cut):
    mapping, c = make_mapping(), cfg(windows=windows, max_items=3)
    straight = _stream(SequenceLoader(train_file, mapping, c, 1, 2, training=True), 40)
    first = SequenceLoader(train_file, mapping, c, 1, 2, training=True)
    assert _stream(first, cut) == straight[:cut]
    resumed = SequenceLoader(train_file, mapping, c, 1, 2, training=True)
    resumed.load_state_dict(first.state_dict())
    assert _stream(resumed, 40 - cut) == straight[cut:]


def test_windowed_workers_give_the_same_batches(train_file):
    mapping = make_mapping()
    c = cfg(windows="strided", max_items=3)
    inline = _stream(SequenceLoader(train_file, mapping, c, 1, 2, training=True), 10)
    workers = SequenceLoader(train_file, mapping, cfg(windows="strided", max_items=3, num_workers=2), 1, 2,
                             training=True)
    assert _stream(workers, 10) == inline


def test_resume_refuses_a_state_with_other_windows(train_file):
    mapping = make_mapping()
    state = SequenceLoader(train_file, mapping, cfg(), 0, 1, training=True).state_dict()
    state.pop("windows"), state.pop("max_items")  # a state written before the switch existed resumes as "recent"
    SequenceLoader(train_file, mapping, cfg(), 0, 1, training=True).load_state_dict(state)
    with pytest.raises(ValueError, match="windows"):
        SequenceLoader(train_file, mapping, cfg(windows="random"), 0, 1, training=True).load_state_dict(state)


def test_validation_ignores_windows_and_bad_windows_are_refused(tmp_path, train_file):
    path = write_sequences(tmp_path / "valid.parquet", list(range(30)), target=True)
    a = epoch(SequenceLoader(path, make_mapping(), cfg(max_items=3), 0, 1, training=False, append_target=True))
    b = epoch(SequenceLoader(path, make_mapping(), cfg(max_items=3, windows="strided"), 0, 1, training=False,
                             append_target=True))
    assert [(x.sids.tolist(), x.user_ids.tolist()) for x in a] == [(x.sids.tolist(), x.user_ids.tolist()) for x in b]
    with pytest.raises(ValueError, match="windows"):
        SequenceLoader(train_file, make_mapping(), cfg(windows="tiled"), 0, 1, training=True)
    with pytest.raises(ValueError, match="max_items >= 2"):
        SequenceLoader(train_file, make_mapping(), cfg(windows="strided", max_items=1), 0, 1, training=True)
