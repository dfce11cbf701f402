"""`sidgr retrieve`: output contract, resume after a failure == uninterrupted run, one-line errors, no partial files."""
import json
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sidgr.arch import ModelArch
from sidgr.cli import main
from sidgr.errors import InputError
from sidgr.inference.random_engine import random_mapping, random_state_dict
from sidgr.inference.engine import Engine
from sidgr.inference.batch_retrieval import FAIL_AFTER_ENV
from sidgr.inference.weights import save_engine

SIZES = (8, 6, 8)
N_ITEMS, N_USERS = 100, 23


@pytest.fixture()
def setup(tmp_path):
    arch = ModelArch(codebook_sizes=SIZES, hidden_size=32, num_layers=2, num_attention_heads=4,
                     ffn_hidden_size=64, max_items=10, head_mode="shared")
    save_engine(tmp_path / "engine", arch, random_state_dict(arch, 3), random_mapping(N_ITEMS, list(SIZES), 3))
    g = torch.Generator().manual_seed(0)
    hist = [torch.randint(N_ITEMS, (int(n),), generator=g).tolist()
            for n in torch.randint(1, 15, (N_USERS,), generator=g)]
    table = pa.table({"user_id": list(range(100, 100 + N_USERS)), "item_ids": hist,
                      "target": [0] * N_USERS})
    pq.write_table(table, tmp_path / "test.parquet")
    return tmp_path, hist


def retrieve(tmp_path, out, *extra, seq="test.parquet"):
    return main(["retrieve", "--engine", str(tmp_path / "engine"), "--sequences", str(tmp_path / seq),
                 "--out", str(tmp_path / out), "--k", "7", "--beam-widths", "4,16,32", "--batch-size", "5",
                 *extra])


def test_output_matches_engine_and_excludes_history(setup):
    tmp_path, hist = setup
    assert retrieve(tmp_path, "c.parquet") == 0  # the history is excluded by default
    t = pq.read_table(tmp_path / "c.parquet")
    assert t.schema.names == ["user_id", "item_ids", "scores"]
    assert t.column("user_id").to_pylist() == list(range(100, 100 + N_USERS))
    ref = Engine.load(tmp_path / "engine").retrieve([torch.tensor(h) for h in hist], 7, [4, 16, 32],
                                                    exclude_history=True)
    items, scores = ref.rows()
    assert t.column("item_ids").to_pylist() == items
    assert torch.allclose(torch.tensor(sum(t.column("scores").to_pylist(), [])), torch.tensor(sum(scores, [])))
    for h, row in zip(hist, items):
        assert len(row) == 7 and not set(h) & set(row)
    assert not (tmp_path / ".c.parquet.parts").exists()


def test_resume_after_failure_equals_uninterrupted_run(setup, monkeypatch):
    tmp_path, _ = setup
    assert retrieve(tmp_path, "whole.parquet") == 0
    monkeypatch.setenv(FAIL_AFTER_ENV, "2")
    with pytest.raises(RuntimeError, match="injected"):
        retrieve(tmp_path, "resumed.parquet")
    parts = tmp_path / ".resumed.parquet.parts"
    assert not (tmp_path / "resumed.parquet").exists()
    assert sorted(p.name for p in parts.glob("part-*.parquet")) == ["part-000000.parquet", "part-000001.parquet"]
    mtimes = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    with pytest.raises(RuntimeError, match="injected"):  # two more parts, the first two are skipped
        retrieve(tmp_path, "resumed.parquet")
    assert len(list(parts.glob("part-*.parquet"))) == 4
    assert all(mtimes[n] == (parts / n).stat().st_mtime_ns for n in mtimes)
    monkeypatch.delenv(FAIL_AFTER_ENV)
    assert retrieve(tmp_path, "resumed.parquet") == 0
    assert (tmp_path / "resumed.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert not parts.exists()


def test_changed_parameters_discard_old_parts(setup, monkeypatch):
    tmp_path, _ = setup
    monkeypatch.setenv(FAIL_AFTER_ENV, "1")
    with pytest.raises(RuntimeError):
        retrieve(tmp_path, "c.parquet")
    monkeypatch.delenv(FAIL_AFTER_ENV)
    assert retrieve(tmp_path, "c.parquet", "--include-history") == 0
    assert retrieve(tmp_path, "ref.parquet", "--include-history") == 0
    assert (tmp_path / "c.parquet").read_bytes() == (tmp_path / "ref.parquet").read_bytes()


def write_seq(tmp_path, hist, name="bad.parquet"):
    pq.write_table(pa.table({"user_id": list(range(len(hist))), "item_ids": hist},
                            schema=pa.schema([("user_id", pa.int64()), ("item_ids", pa.list_(pa.int64()))])),
                   tmp_path / name)
    return name


@pytest.mark.parametrize("case,extra,message", [
    ("pid", [], "user_id=11 item_ids=100: outside the catalog 0..99"),
    ("empty", [], "user_id=11 item_ids=[]: empty history"),
    ("width0", ["--beam-width", "0"], "beam width=0: must be >= 1"),
    ("k", ["--beam-widths", "4,16,6"], "k=7: larger than the final beam width 6"),
    ("levels", ["--beam-widths", "4,16"], "need one width per level"),
    ("engine", [], "mapping codebook_sizes=[8, 6, 9]"),
    ("dense", ["--dense-weight", "1"], "dense_weight=1.0: the engine's model was trained without the dense"),
])
def test_bad_input_is_one_line_error_without_output(setup, capsys, case, extra, message):
    tmp_path, hist = setup
    seq = "test.parquet"
    if case in ("pid", "empty"):
        bad = [list(h) for h in hist]
        bad[11] = [1, 100] if case == "pid" else []
        seq = write_seq(tmp_path, bad)
    if case == "engine":
        meta = json.loads((tmp_path / "engine" / "sids.json").read_text())
        meta["codebook_sizes"] = [8, 6, 9]
        (tmp_path / "engine" / "sids.json").write_text(json.dumps(meta))
    args = ["retrieve", "--engine", str(tmp_path / "engine"), "--sequences", str(tmp_path / seq),
            "--out", str(tmp_path / "o.parquet"), "--k", "7", "--batch-size", "5"]
    if not any(a.startswith("--beam") for a in extra):
        args += ["--beam-width", "32"]
    assert main(args + extra) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("sidgr retrieve: error: ")
    assert not (tmp_path / "o.parquet").exists() and not (tmp_path / ".o.parquet.parts").exists()


def test_exact_cli_equals_full_width_beam(setup):
    tmp_path, _ = setup
    common = ["--k", "20", "--include-history"]  # argparse: the later --k wins
    assert retrieve(tmp_path, "exact.parquet", "--exact", *common) == 0
    assert retrieve(tmp_path, "beam.parquet", "--beam-widths", "4096,4096,4096", *common) == 0
    a, b = pq.read_table(tmp_path / "exact.parquet"), pq.read_table(tmp_path / "beam.parquet")
    assert a.column("item_ids").to_pylist() == b.column("item_ids").to_pylist()
    assert torch.allclose(torch.tensor(a.column("scores").to_pylist()), torch.tensor(b.column("scores").to_pylist()),
                          atol=1e-5)


@pytest.mark.dist
def test_two_processes_write_the_same_output_and_resume(setup, monkeypatch):
    """`--nproc 2` (torchrun, batches sharded by rank) == one process, also after one rank failed mid-way."""
    import subprocess
    import sys

    tmp_path, _ = setup
    assert retrieve(tmp_path, "one.parquet") == 0

    def two(out, env=None):
        cmd = [sys.executable, "-m", "sidgr.cli", "retrieve", "--engine", str(tmp_path / "engine"),
               "--sequences", str(tmp_path / "test.parquet"), "--out", str(tmp_path / out), "--k", "7",
               "--beam-widths", "4,16,32", "--batch-size", "5", "--nproc", "2"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)

    done = two("two.parquet")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "two.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()
    assert not (tmp_path / ".two.parquet.parts").exists()

    import os
    failed = two("resumed.parquet", {**os.environ, FAIL_AFTER_ENV: "1"})  # each rank fails after one part
    assert failed.returncode != 0 and not (tmp_path / "resumed.parquet").exists()
    parts = sorted(p.name for p in (tmp_path / ".resumed.parquet.parts").glob("part-*.parquet"))
    assert parts == ["part-000000.parquet", "part-000001.parquet"]  # one per rank: batches 0 and 1
    assert two("resumed.parquet").returncode == 0
    assert (tmp_path / "resumed.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()


@pytest.mark.slow
def test_kill9_mid_way_then_rerun_equals_uninterrupted_run(setup):
    import os
    import signal
    import subprocess
    import sys
    import time

    tmp_path, _ = setup
    g = torch.Generator().manual_seed(1)
    users = 1000  # the kill comes after 3 of its 200 parts: ample margin, and two full retrievals stay short
    hist = [torch.randint(N_ITEMS, (int(n),), generator=g).tolist()
            for n in torch.randint(1, 15, (users,), generator=g)]
    pq.write_table(pa.table({"user_id": list(range(users)), "item_ids": hist}), tmp_path / "many.parquet")
    assert retrieve(tmp_path, "whole.parquet", seq="many.parquet") == 0
    cmd = [sys.executable, "-m", "sidgr.cli", "retrieve", "--engine", str(tmp_path / "engine"), "--sequences",
           str(tmp_path / "many.parquet"), "--out", str(tmp_path / "killed.parquet"), "--k", "7", "--beam-widths",
           "4,16,32", "--batch-size", "5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = tmp_path / ".killed.parquet.parts"
    deadline = time.time() + 120
    while proc.poll() is None and len(list(parts.glob("part-*.parquet"))) < 3 and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed.parquet").exists(), "finished before the kill: make the workload larger"
    done = len(list(parts.glob("part-*.parquet")))
    assert 3 <= done < users // 5
    assert retrieve(tmp_path, "killed.parquet", seq="many.parquet") == 0
    assert (tmp_path / "killed.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert not parts.exists()


def dense_engine(tmp_path, dense_weight: float, seed: int, users: int):
    """A random-weight engine trained-as-if with the dense score ('rqsum' ITEM tokens) and `users` histories."""
    arch = ModelArch(codebook_sizes=SIZES, hidden_size=32, num_layers=2, num_attention_heads=4, ffn_hidden_size=64,
                     max_items=10, history="rqsum", dense_weight=dense_weight)
    mapping = random_mapping(N_ITEMS, list(SIZES), seed)
    save_engine(tmp_path / "engine", arch, random_state_dict(arch, seed), mapping)
    g = torch.Generator().manual_seed(seed)
    hist = [torch.randint(N_ITEMS, (int(n),), generator=g) for n in torch.randint(1, 9, (users,), generator=g)]
    return arch, mapping, Engine.load(tmp_path / "engine"), hist


def test_dense_score_is_added_to_each_candidates_sid_likelihood(tmp_path):
    """A model trained with the dense item-level score: each candidate's score is its SID log-likelihood +
    weight * log-softmax of the BOS state over every item's ITEM vector; beam and exact agree; weight 0 is the SID
    ranking; the history stays excluded."""
    arch, mapping, engine, hist = dense_engine(tmp_path, 0.5, seed=3, users=6)
    sid = engine.retrieve(hist, N_ITEMS, 1, exact=True, dense_weight=0.0)
    bos, _ = engine.prefill(hist)
    codes = mapping.codes.t() + torch.tensor(arch.level_offsets)
    table = engine.model.embedding.codes.weight[codes].sum(1)  # 'rqsum' ITEM vectors
    dense = (bos @ table.t()).log_softmax(-1)
    for w in (0.5, 3.0):
        beam = engine.retrieve(hist, 20, [8, 48, 100], exclude_history=True, dense_weight=w)
        exact = engine.retrieve(hist, 20, 1, exclude_history=True, exact=True, dense_weight=w)
        assert torch.equal(beam.items, exact.items) and torch.allclose(beam.scores, exact.scores, atol=1e-5)
        for b, h in enumerate(hist):
            row_sid = dict(zip(sid.items[b].tolist(), sid.scores[b].tolist()))
            want = torch.tensor([row_sid[i] + w * float(dense[b, i]) for i in beam.items[b].tolist()])
            assert torch.allclose(beam.scores[b], want, atol=1e-4)
            assert bool((beam.scores[b][:-1] >= beam.scores[b][1:]).all()) and not set(h.tolist()) & set(
                beam.items[b].tolist())
        assert not torch.equal(beam.items, engine.retrieve(hist, 20, [8, 48, 100], exclude_history=True,
                                                           dense_weight=0.0).items)
    default = engine.retrieve(hist, 20, [8, 48, 100], exclude_history=True)  # the trained weight, 0.5
    assert torch.equal(default.items, engine.retrieve(hist, 20, [8, 48, 100], exclude_history=True,
                                                      dense_weight=0.5).items)
    tuned = replace(arch, retrieval_dense_weight=3.0)  # a ranking weight chosen on validation rides in the engine
    save_engine(tmp_path / "tuned", tuned, random_state_dict(arch, 3), mapping)
    default = Engine.load(tmp_path / "tuned").retrieve(hist, 20, [8, 48, 100], exclude_history=True)
    assert torch.equal(default.items, engine.retrieve(hist, 20, [8, 48, 100], exclude_history=True,
                                                      dense_weight=3.0).items)



def test_dense_candidates_join_the_beam_and_rank_as_exact_would(tmp_path):
    """`dense_candidates` = M: the dense score's top M unseen items are scored by teacher-forced SID
    log-likelihood + the dense term beside a narrow beam's items. With M = every item the ranking equals the exact
    one (scores included); the narrow beam alone misses some of exact's top items; the history stays excluded."""
    _, _, engine, hist = dense_engine(tmp_path, 1.0, seed=5, users=8)
    exact = engine.retrieve(hist, 10, 1, exclude_history=True, exact=True, dense_weight=3.0)
    narrow = engine.retrieve(hist, 10, [2, 4, 10], exclude_history=True, dense_weight=3.0, dense_candidates=0)
    both = engine.retrieve(hist, 10, [2, 4, 10], exclude_history=True, dense_weight=3.0, dense_candidates=N_ITEMS)
    assert not torch.equal(narrow.items, exact.items)
    assert torch.equal(both.items, exact.items) and torch.allclose(both.scores, exact.scores, atol=1e-5)
    default = engine.retrieve(hist, 10, [2, 4, 10], exclude_history=True, dense_weight=3.0)  # M = final width
    assert torch.equal(default.items, engine.retrieve(hist, 10, [2, 4, 10], exclude_history=True, dense_weight=3.0,
                                                      dense_candidates=10).items)
    some = engine.retrieve(hist, 10, [2, 4, 10], exclude_history=True, dense_weight=3.0, dense_candidates=5)
    for b, h in enumerate(hist):
        assert not set(h.tolist()) & set(some.items[b].tolist())
        assert bool((some.scores[b][:-1] >= some.scores[b][1:]).all())
    with pytest.raises(InputError, match="dense_candidates"):
        engine.retrieve(hist, 10, 10, dense_weight=0.0, dense_candidates=5)
    # one decoding ranked at several weights == one retrieve per weight (how the ranking weight is tuned)
    for m in (0, 5):
        swept = engine.retrieve_at_weights(hist, 10, [2, 4, 10], [0.5, 3.0, 50.0], True, m)
        for w, ranked in zip([0.5, 3.0, 50.0], swept):
            one = engine.retrieve(hist, 10, [2, 4, 10], exclude_history=True, dense_weight=w, dense_candidates=m)
            assert torch.equal(ranked.items, one.items) and torch.equal(ranked.scores, one.scores)
    with pytest.raises(InputError, match="dense_weight"):
        engine.retrieve_at_weights(hist, 10, 10, [1.0, 0.0])


@pytest.mark.dist
def test_two_nodes_write_the_same_output_as_one_process(setup):
    """`--nnodes 2` (two launchers on the loopback address, c10d rendezvous, one output directory) == one process."""
    import socket
    import subprocess
    import sys

    tmp_path, _ = setup
    assert retrieve(tmp_path, "one.parquet") == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{sock.getsockname()[1]}"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "sidgr.cli", "retrieve", "--engine", str(tmp_path / "engine"), "--sequences",
         str(tmp_path / "test.parquet"), "--out", str(tmp_path / "nodes.parquet"), "--k", "7", "--beam-widths",
         "4,16,32", "--batch-size", "5", "--nnodes", "2", "--node-rank", str(rank), "--rdzv-endpoint", endpoint,
         "--rdzv-id", "retrieve-test"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    for node in nodes:
        _, err = node.communicate(timeout=240)
        assert node.returncode == 0, err[-2000:]
    assert (tmp_path / "nodes.parquet").read_bytes() == (tmp_path / "one.parquet").read_bytes()
    assert not (tmp_path / ".nodes.parquet.parts").exists()


def test_node_flags_are_checked_before_decoding(setup, capsys):
    tmp_path, _ = setup
    for flags, message in [(["--nnodes", "2"], "--rdzv-endpoint"), (["--nproc", "0"], "--nproc"),
                           (["--nnodes", "2", "--node-rank", "-1", "--rdzv-endpoint", "h:1"], "--node-rank")]:
        assert retrieve(tmp_path, "bad.parquet", *flags) != 0
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "bad.parquet").exists()
