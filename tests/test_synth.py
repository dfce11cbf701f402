"""`sidgr synth`: determinism, shapes, id ranges, cluster-following sequences, the split contract."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from sidgr.cli import main as cli_main
from sidgr.data import synth
from sidgr.data.ragged import Ragged
from sidgr.data.readers import iter_sequence_batches, read_sequences
from sidgr.data.sequences import SequenceBatch, split_leave_one_out
from sidgr.data.synth import SynthConfig, synthesize
from sidgr.errors import InputError

CFG = SynthConfig(items=3000, users=700, dim=16, clusters=24, seed=7, min_len=3, max_len=30)
FILES = ("embeddings.npy", "items.parquet", "users.parquet", "sequences.parquet", "train.parquet",
         "valid.parquet", "test.parquet", "stats.json")


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    mp = pytest.MonkeyPatch()
    mp.setattr(synth, "USER_CHUNK", 256)  # several user chunks: ids and streams must continue across them
    mp.setattr(synth, "ITEM_CHUNK", 1000)
    synthesize(CFG, str(out), progress=False)
    mp.undo()
    return out


def test_deterministic_by_seed(out, tmp_path):
    same, other = tmp_path / "same", tmp_path / "other"
    args = ["synth", "--items", "3000", "--users", "700", "--dim", "16", "--clusters", "24",
            "--min-len", "3", "--max-len", "30", "--no-progress"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth, "USER_CHUNK", 256)
        mp.setattr(synth, "ITEM_CHUNK", 1000)
        assert cli_main(args + ["--out", str(same), "--seed", "7"]) == 0
        assert cli_main(args + ["--out", str(other), "--seed", "8"]) == 0
    np.testing.assert_array_equal(np.load(out / "embeddings.npy"), np.load(same / "embeddings.npy"))
    for name in FILES[1:-1]:
        assert pq.read_table(out / name).equals(pq.read_table(same / name)), name
    assert not np.array_equal(np.load(out / "embeddings.npy"), np.load(other / "embeddings.npy"))
    assert not pq.read_table(out / "sequences.parquet").equals(pq.read_table(other / "sequences.parquet"))


def test_shapes_and_ranges(out):
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    emb = np.load(out / "embeddings.npy")
    assert emb.shape == (CFG.items, CFG.dim) and emb.dtype == np.float32 and np.isfinite(emb).all()
    items = pq.read_table(out / "items.parquet")
    assert items["item_id"].to_pylist() == list(range(CFG.items))
    clusters = items["cluster"].to_numpy()
    assert clusters.min() == 0 and clusters.max() == CFG.clusters - 1
    sizes = np.bincount(clusters)
    assert sizes.max() - sizes.min() <= 1  # balanced
    assert items["text"][5].as_py() == f"synthetic item 5 (cluster {clusters[5]})"
    assert pq.read_table(out / "users.parquet")["user_id"].to_pylist() == list(range(CFG.users))
    seq = read_sequences(out / "sequences.parquet")
    assert seq.user_ids.tolist() == list(range(CFG.users))
    assert seq.lengths.min() >= CFG.min_len and seq.lengths.max() <= CFG.max_len
    assert seq.item_ids.min() >= 0 and seq.item_ids.max() < CFG.items
    user_of = np.repeat(np.arange(seq.num_users), seq.lengths)
    same_user = user_of[1:] == user_of[:-1]
    assert (np.diff(seq.timestamps)[same_user] > 0).all()  # strictly time-ordered histories
    stats = json.loads((out / "stats.json").read_text())
    assert stats["interactions"] == int(seq.lengths.sum()) and stats["users"] == CFG.users


def test_embeddings_are_clustered(out):
    emb = np.load(out / "embeddings.npy")
    clusters = pq.read_table(out / "items.parquet")["cluster"].to_numpy()
    centroids = np.stack([emb[clusters == c].mean(0) for c in range(CFG.clusters)])
    nearest = ((emb[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (nearest == clusters).mean() > 0.99


def test_sequences_follow_clusters(out):
    clusters = pq.read_table(out / "items.parquet")["cluster"].to_numpy()
    seq = read_sequences(out / "sequences.parquet")
    c = clusters[seq.item_ids]
    user_of = np.repeat(np.arange(seq.num_users), seq.lengths)
    same_user = user_of[1:] == user_of[:-1]
    share = (c[1:] == c[:-1])[same_user].mean()
    assert share > 0.8, share  # switch_prob 0.1; a random walk over 24 clusters would give ~0.04
    # each user concentrates on few clusters: the top-3 clusters hold most of a user's items
    top3 = [np.sort(np.bincount(c[seq.offsets[u]:seq.offsets[u + 1]]))[-3:].sum() / seq.lengths[u]
            for u in range(seq.num_users)]
    assert np.mean(top3) > 0.9
    # popularity skew: the most popular 10% of items get far more than 10% of interactions
    counts = np.sort(np.bincount(seq.item_ids, minlength=CFG.items))[::-1]
    assert counts[: CFG.items // 10].sum() / counts.sum() > 0.25


def test_split_contract(out):
    seq = read_sequences(out / "sequences.parquet")
    train, valid, test = (read_sequences(out / f"{n}.parquet") for n in ("train", "valid", "test"))
    assert int(train.lengths.sum()) == int(seq.lengths.sum()) - 2 * seq.num_users
    for u in range(seq.num_users):
        full = seq.sequence(u)
        np.testing.assert_array_equal(train.sequence(u), full[:-2])
        np.testing.assert_array_equal(valid.sequence(u), full[:-2])
        np.testing.assert_array_equal(test.sequence(u), full[:-1])
        assert (valid.targets.values[u], test.targets.values[u]) == (full[-2], full[-1])


def test_split_drops_users_too_short():
    lengths = np.array([1, 2, 3, 5])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = np.arange(offsets[-1]) + 100
    splits = split_leave_one_out(SequenceBatch(np.array([10, 11, 12, 13]), Ragged(items, offsets), items * 10))
    assert splits["train"].user_ids.tolist() == [12, 13]
    assert splits["train"].item_ids.tolist() == [103, 106, 107, 108]
    assert splits["train"].timestamps.tolist() == [1030, 1060, 1070, 1080]
    assert splits["valid"].targets.values.tolist() == [104, 109] and splits["test"].targets.values.tolist() == [105, 110]
    assert splits["test"].item_ids.tolist() == [103, 104, 106, 107, 108, 109]
    assert splits["test"].offsets.tolist() == [0, 2, 6]


def test_streaming_reader_matches_whole_file(out):
    whole = read_sequences(out / "test.parquet")
    parts = list(iter_sequence_batches(out / "test.parquet", batch_size=97, with_target=True))
    assert len(parts) == -(-CFG.users // 97)
    np.testing.assert_array_equal(np.concatenate([p.user_ids for p in parts]), whole.user_ids)
    np.testing.assert_array_equal(np.concatenate([p.item_ids for p in parts]), whole.item_ids)
    np.testing.assert_array_equal(np.concatenate([p.targets.values for p in parts]), whole.targets.values)
    np.testing.assert_array_equal(np.concatenate([p.lengths for p in parts]), whole.lengths)
    assert all(p.offsets[0] == 0 and p.offsets[-1] == p.item_ids.shape[0] for p in parts)


def test_bad_config_is_one_line_input_error(tmp_path):
    with pytest.raises(InputError, match="clusters=50"):
        synthesize(SynthConfig(items=10, users=5, clusters=50), str(tmp_path / "x"), progress=False)
    with pytest.raises(InputError, match="min_len"):
        synthesize(SynthConfig(items=10, users=5, clusters=2, min_len=9, max_len=4), str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()
