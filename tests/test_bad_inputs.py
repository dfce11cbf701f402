"""A corpus of bad inputs across every subcommand: each ends with exit code != 0, a last stderr line that names the
problem (`sidgr CMD: error: FILE: field=value: why`), no traceback, and nothing written or changed on disk.

Everything runs in this process through `sidgr.cli.main` (errors are caught before any worker starts); the
faults that need processes (kill -9 of training, of retrieval, of the launcher) are in test_train_resume.py,
test_engine_retrieve.py and test_train_launcher.py.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidgr.arch import ModelArch
from sidgr.cli import main
from sidgr.inference.random_engine import random_mapping, random_state_dict
from sidgr.inference.weights import save_engine

NUM_ITEMS, SIZES = 60, [8, 8, 8]


def lists(rows):
    return pa.array(rows, pa.list_(pa.int64()))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small valid world: items, splits, SIDs, an engine, candidates, an evaluation, bad files beside them."""
    root = tmp_path_factory.mktemp("world")
    items = pa.table({"item_id": pa.array(range(NUM_ITEMS), pa.int64()),
                      "text": pa.array([f"item {i}" for i in range(NUM_ITEMS)])})
    pq.write_table(items, root / "items.parquet")
    hist = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    pq.write_table(pa.table({"user_id": pa.array([0, 1, 2], pa.int64()), "item_ids": lists(hist),
                             "target": pa.array([10, 11, 12], pa.int64())}), root / "test.parquet")
    pq.write_table(pa.table({"user_id": pa.array([0, 1, 2], pa.int64()), "item_ids": lists(hist)}),
                   root / "train.parquet")
    pq.write_table(pa.table({"user_id": pa.array([0], pa.int64()), "item_ids": lists([[1, 2, 99]])}),
                   root / "outside.parquet")
    pq.write_table(pa.table({"user_id": pa.array([0, 1], pa.int64()), "item_ids": lists([[1], []])}),
                   root / "empty_row.parquet")
    pq.write_table(pa.table({"user_id": pa.array([0], pa.int64()), "items": lists([[1]])}),
                   root / "no_item_ids.parquet")
    pq.write_table(pa.table({"user_id": pa.array([0, 1, 2], pa.int64()), "item_ids": lists([[1, 20], [21], [4]])}),
                   root / "cands_in_history.parquet")
    arch = ModelArch(codebook_sizes=tuple(SIZES), hidden_size=16, num_layers=1, num_attention_heads=2,
                     ffn_hidden_size=32, max_items=6)
    mapping = random_mapping(NUM_ITEMS, SIZES, seed=1)
    save_engine(root / "engine", arch, random_state_dict(arch, 0), mapping, source="test")
    mapping.save(root / "sids")
    (root / "sids_dir").mkdir()
    mapping.save(root / "sids_dir" / "sids")
    np.save(root / "emb.npy", np.random.default_rng(0).normal(size=(NUM_ITEMS, 8)).astype(np.float32))
    nan = np.ones((NUM_ITEMS, 8), np.float32)
    nan[3, 2] = np.nan
    np.save(root / "nan.npy", nan)
    np.save(root / "short.npy", np.ones((NUM_ITEMS - 1, 8), np.float32))
    (root / "events.csv").write_text("user,sku,ts\n")
    (root / "events_nouser.csv").write_text("person,sku,ts\na,x,1\na,y,2\nb,x,3\n")
    (root / "table.csv").write_text("user_id,item_ids\n0,1\n")
    (root / "garbage.bin").write_bytes(b"\xff\xfe\x00\x01" * 16)
    (root / "a_file").write_text("keep me")
    (root / "kept").mkdir()
    (root / "kept" / "notes.txt").write_text("mine")
    (root / "bad.gin").write_text("TrainerConfig.nonexistent = 3\n")
    (root / "run_is_file").write_text("x")
    old = root / "old_run"
    (old / "checkpoints").mkdir(parents=True)
    (old / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    ml1m = root / "ml1m"
    ml1m.mkdir()
    (ml1m / "ratings.dat").write_bytes(b"\xff\xfe\x00\x01garbage\n")
    (ml1m / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    (ml1m / "users.dat").write_text("1::F::1::10::48067\n")
    ml1m_id = root / "ml1m_id"
    ml1m_id.mkdir()
    (ml1m_id / "ratings.dat").write_text("1::1::5::978300760\n1::x::5::978300760\n")
    (ml1m_id / "movies.dat").write_text("1::Toy Story (1995)::Animation\n")
    (ml1m_id / "users.dat").write_text("1::F::1::10::48067\n")
    main(["retrieve", "--engine", str(root / "engine"), "--sequences", str(root / "test.parquet"), "--k", "5",
          "--beam-width", "8", "--out", str(root / "cands.parquet")])
    main(["evaluate", "--candidates", str(root / "cands.parquet"), "--targets", str(root / "test.parquet"),
          "--items", str(NUM_ITEMS), "--out", str(root / "eval")])
    return root


# (case id, argv with {w} for the world dir, what the last line must contain)
TRAIN = ["train", "--config", "configs/tiny_ci.gin", "TrainerConfig.run_dir='{w}/new_run'",
         "DataConfig.train_path='{w}/train.parquet'", "DataConfig.valid_path='{w}/test.parquet'",
         "DataConfig.mapping_path='{w}/sids.json'"]
RETRIEVE = ["retrieve", "--engine", "{w}/engine", "--out", "{w}/out.parquet"]
EVALUATE = ["evaluate", "--items", str(NUM_ITEMS), "--out", "{w}/eval_out"]
TOKENIZE = ["tokenize", "--items", "{w}/items.parquet", "--no-progress"]
CASES = [
    # prepare
    ("prepare-ml1m-missing-source", ["prepare", "ml1m", "--source", "{w}/nope", "--out", "{w}/p"], "nope"),
    ("prepare-ml1m-not-utf8", ["prepare", "ml1m", "--source", "{w}/ml1m", "--out", "{w}/p"], "not utf-8"),
    ("prepare-ml1m-bad-id", ["prepare", "ml1m", "--source", "{w}/ml1m_id", "--out", "{w}/p"], "MovieID='x'"),
    ("prepare-beauty-missing-files", ["prepare", "beauty", "--source", "{w}/kept", "--out", "{w}/p"], "kept"),
    ("prepare-interactions-missing", ["prepare", "interactions", "--source", "{w}/nope.csv", "--out", "{w}/p"],
     "nope.csv"),
    ("prepare-interactions-no-rows", ["prepare", "interactions", "--source", "{w}/events.csv", "--user-col",
                                      "user", "--item-col", "sku", "--time-col", "ts", "--out", "{w}/p"],
     "events.csv"),
    ("prepare-interactions-missing-column", ["prepare", "interactions", "--source", "{w}/events_nouser.csv",
                                             "--user-col", "user", "--item-col", "sku", "--out", "{w}/p"], "user"),
    ("prepare-interactions-garbage", ["prepare", "interactions", "--source", "{w}/garbage.bin", "--out", "{w}/p"],
     "garbage.bin"),
    ("prepare-out-is-a-file", ["prepare", "interactions", "--source", "{w}/events_nouser.csv", "--user-col",
                               "person", "--item-col", "sku", "--time-col", "ts", "--out", "{w}/a_file"], "a_file"),
    # synth
    ("synth-no-items", ["synth", "--items", "0", "--users", "5", "--out", "{w}/syn"], "items=0"),
    ("synth-more-clusters-than-items", ["synth", "--items", "20", "--users", "5", "--clusters", "40", "--out",
                                        "{w}/syn"], "clusters=40"),
    ("synth-out-is-a-file", ["synth", "--items", "20", "--users", "5", "--clusters", "4", "--out", "{w}/a_file"],
     "a_file"),
    # tokenize
    ("tokenize-items-missing", ["tokenize", "--items", "{w}/nope.parquet", "--out", "{w}/t"], "nope.parquet"),
    ("tokenize-items-csv", ["tokenize", "--items", "{w}/table.csv", "--out", "{w}/t"], "cannot open as parquet"),
    ("tokenize-embeddings-nan", [*TOKENIZE, "--embeddings", "{w}/nan.npy", "--out", "{w}/t"], "nan.npy"),
    ("tokenize-embeddings-rows", [*TOKENIZE, "--embeddings", "{w}/short.npy", "--out", "{w}/t"], "short.npy"),
    ("tokenize-embeddings-garbage", [*TOKENIZE, "--embeddings", "{w}/garbage.bin", "--out", "{w}/t"],
     "garbage.bin"),
    ("tokenize-codebook-sizes", [*TOKENIZE, "--embeddings", "{w}/emb.npy", "--codebook-sizes", "a,b", "--out",
                                 "{w}/t"], "codebook"),
    ("tokenize-out-is-a-file", [*TOKENIZE, "--embeddings", "{w}/emb.npy", "--out", "{w}/a_file"], "a_file"),
    ("tokenize-out-not-ours", [*TOKENIZE, "--embeddings", "{w}/emb.npy", "--out", "{w}/kept"], "kept"),
    ("tokenize-extend-no-tokenizer", ["tokenize", "--extend", "{w}/sids_dir", "--items", "{w}/items.parquet",
                                      "--out", "{w}/t"], "tokenizer"),
    # train (all caught before torchrun)
    ("train-config-missing", ["train", "--config", "{w}/nope.gin"], "nope.gin"),
    ("train-gin-unknown-parameter", ["train", "--config", "{w}/bad.gin"], "nonexistent"),
    ("train-gin-unquoted-string", [*TRAIN, "TrainerConfig.wandb=offline"], "needs quotes"),
    ("train-gin-wrong-type", [*TRAIN, "ModelConfig.hidden_size='big'"], "expected an integer"),
    ("train-gin-never-used", [*TRAIN, "SIDMapping.x=1"], "SIDMapping"),
    ("train-hidden-vs-heads", [*TRAIN, "ModelConfig.hidden_size=30"], "ModelConfig.hidden_size=30"),
    ("train-tp-vs-nproc", [*TRAIN, "ParallelConfig.tensor_parallel=2"], "tensor_parallel"),
    ("train-train-path-missing", [*TRAIN, "DataConfig.train_path='{w}/nope.parquet'"], "nope.parquet"),
    ("train-mapping-missing", [*TRAIN, "DataConfig.mapping_path='{w}/nope.json'"], "nope.json"),
    ("train-run-dir-holds-a-run", [*TRAIN, "TrainerConfig.run_dir='{w}/old_run'"], "--resume"),
    ("train-run-dir-is-a-file", [*TRAIN, "TrainerConfig.run_dir='{w}/run_is_file'"], "not a directory"),
    ("train-nproc-zero", ["train", "--nproc", "0", "--config", "configs/tiny_ci.gin"], "nproc"),
    ("train-targets-without-strided", [*TRAIN, "DataConfig.targets_per_window=2"], "targets_per_window=2"),
    ("train-targets-with-last-loss", [*TRAIN, "DataConfig.windows='strided'", "DataConfig.targets_per_window=2",
                                      "ModelConfig.loss_mode='last'"], "loss_mode='all'"),
    # export
    ("export-checkpoint-missing", ["export", "--checkpoint", "{w}/nope", "--out", "{w}/e"], "nope"),
    ("export-run-without-checkpoint", ["export", "--checkpoint", "{w}/old_run", "--out", "{w}/e"], "old_run"),
    # retrieve
    ("retrieve-engine-missing", [*RETRIEVE[:1], "--engine", "{w}/nope", "--sequences", "{w}/test.parquet",
                                 "--out", "{w}/out.parquet"], "nope"),
    ("retrieve-engine-not-an-engine", ["retrieve", "--engine", "{w}/kept", "--sequences", "{w}/test.parquet",
                                       "--out", "{w}/out.parquet"], "kept"),
    ("retrieve-sequences-csv", [*RETRIEVE, "--sequences", "{w}/table.csv"], "cannot open as parquet"),
    ("retrieve-sequences-missing", [*RETRIEVE, "--sequences", "{w}/nope.parquet"], "nope.parquet"),
    ("retrieve-no-item-ids-column", [*RETRIEVE, "--sequences", "{w}/no_item_ids.parquet"], "item_ids"),
    ("retrieve-item-outside-catalog", [*RETRIEVE, "--sequences", "{w}/outside.parquet"], "99"),
    ("retrieve-empty-history", [*RETRIEVE, "--sequences", "{w}/empty_row.parquet"], "empty_row.parquet"),
    ("retrieve-k-zero", [*RETRIEVE, "--sequences", "{w}/test.parquet", "--k", "0"], "k"),
    ("retrieve-k-above-width", [*RETRIEVE, "--sequences", "{w}/test.parquet", "--k", "50", "--beam-width", "8"],
     "beam width"),
    ("retrieve-widths-not-ints", [*RETRIEVE, "--sequences", "{w}/test.parquet", "--beam-widths", "a,b"],
     "beam widths"),
    ("retrieve-batch-size-zero", [*RETRIEVE, "--sequences", "{w}/test.parquet", "--batch-size", "0"],
     "batch_size"),
    ("retrieve-backoff-exact", [*RETRIEVE, "--sequences", "{w}/test.parquet", "--exact", "--new-items",
                                "backoff"], "backoff"),
    ("retrieve-dense-candidates-without-dense-score", [*RETRIEVE, "--sequences", "{w}/test.parquet",
                                                       "--dense-candidates", "8"], "dense_candidates"),
    ("retrieve-out-is-a-dir", ["retrieve", "--engine", "{w}/engine", "--sequences", "{w}/test.parquet",
                               "--out", "{w}/kept"], "kept"),
    # evaluate
    ("evaluate-candidates-missing", [*EVALUATE, "--candidates", "{w}/nope.parquet", "--targets",
                                     "{w}/test.parquet"], "nope.parquet"),
    ("evaluate-candidates-csv", [*EVALUATE, "--candidates", "{w}/table.csv", "--targets", "{w}/test.parquet"],
     "cannot open as parquet"),
    ("evaluate-targets-without-target", [*EVALUATE, "--candidates", "{w}/cands.parquet", "--targets",
                                         "{w}/train.parquet"], "target"),
    ("evaluate-ks-zero", [*EVALUATE, "--candidates", "{w}/cands.parquet", "--targets", "{w}/test.parquet",
                          "--ks", "0"], "ks"),
    ("evaluate-candidates-in-history", [*EVALUATE, "--candidates", "{w}/cands_in_history.parquet", "--targets",
                                        "{w}/test.parquet"], "history"),
    ("evaluate-items-bogus", ["evaluate", "--candidates", "{w}/cands.parquet", "--targets", "{w}/test.parquet",
                              "--items", "{w}/nope.parquet", "--out", "{w}/eval_out"], "nope.parquet"),
    # report, score-items, export-embeddings, baseline
    ("report-run-without-name", ["report", "table", "--run", "{w}/eval", "--out", "{w}/r"], "NAME=PATH"),
    ("report-run-not-metrics", ["report", "table", "--run", "a={w}/table.csv", "--out", "{w}/r"], "table.csv"),
    ("report-latency-not-a-number", ["report", "beam", "--beam", "4={w}/eval", "--latency", "4=fast", "--out",
                                     "{w}/r"], "fast"),
    ("score-items-checkpoint-missing", ["score-items", "--checkpoint", "{w}/nope", "--sequences",
                                       "{w}/test.parquet", "--out", "{w}/s.parquet"], "nope"),
    ("export-embeddings-checkpoint-missing", ["export-embeddings", "--checkpoint", "{w}/nope", "--items",
                                              "{w}/items.parquet", "--out", "{w}/e.npy"], "nope"),
    # lm (caught before any model is loaded)
    ("lm-config-missing", ["lm", "train", "--config", "{w}/nope.gin"], "nope.gin"),
    ("lm-gin-unquoted-string", ["lm", "train", "--config", "configs/lm_ml100k.gin", "LMConfig.precision=bf16"],
     "needs quotes"),
    ("lm-run-dir-not-ours", ["lm", "train", "--config", "configs/lm_ml100k.gin", "LMConfig.run_dir='{w}/kept'"],
     "kept"),
    ("lm-recommend-k-zero", ["lm", "recommend", "--run", "{w}/kept", "--sequences", "{w}/test.parquet",
                             "--out", "{w}/l.parquet", "--k", "0"], "--k"),
    ("lm-recommend-sequences-csv", ["lm", "recommend", "--run", "{w}/kept", "--sequences", "{w}/table.csv",
                                    "--out", "{w}/l.parquet"], "cannot open as parquet"),
    ("lm-recommend-not-an-lm-run", ["lm", "recommend", "--run", "{w}/kept", "--sequences", "{w}/test.parquet",
                                    "--out", "{w}/l.parquet"], "kept"),
    ("baseline-train-csv", ["baseline", "popularity", "--train", "{w}/table.csv", "--sequences", "{w}/test.parquet",
                            "--items", "{w}/items.parquet", "--out", "{w}/b.parquet"], "cannot open as parquet"),
]


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def test_the_corpus_is_large_and_covers_every_command():
    from sidgr.cli import COMMANDS

    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)
    assert {c[1][0] for c in CASES} == set(COMMANDS)


@pytest.mark.parametrize("argv, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world, capsys, argv, expect):
    before = snapshot(world)
    try:
        rc = main([a.replace("{w}", str(world)) for a in argv])
    except SystemExit as exit_:  # argparse's own usage errors
        rc = exit_.code
    err = capsys.readouterr().err
    assert rc not in (0, None), err
    lines = err.strip().splitlines()
    assert lines and "Traceback" not in err, err
    assert lines[-1].startswith(f"sidgr {argv[0]}") and ": error: " in lines[-1], lines[-1]
    assert expect in lines[-1], lines[-1]
    assert snapshot(world) == before  # nothing written, nothing changed


def test_an_unexpected_error_is_one_line_and_its_traceback_is_on_request(monkeypatch, capsys):
    import sidgr.evaluate_cli as module

    def broken(args):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(module, "run", broken)
    argv = ["evaluate", "--candidates", "c", "--targets", "t", "--items", "3", "--out", "o"]
    monkeypatch.delenv("SIDGR_DEBUG", raising=False)
    assert main(argv) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "sidgr evaluate: unexpected error: RuntimeError: disk on fire (SIDGR_DEBUG=1 shows the traceback)"]
    monkeypatch.setenv("SIDGR_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(argv)
