"""The demo's plan without training: the published protocol's cut test histories, its published rows, and the
progress bar's stage count."""
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sidgr.data.schemas import TARGET_SCHEMA
from sidgr.experiments.datasets import DATASETS
from sidgr.experiments.demo import make_plan, parse_args, published_table, stage_count
from sidgr.experiments.pipeline import last_items

HISTORIES = [[5, 1, 4, 2, 3], [7], [2, 9, 8]]


def write_test_split(data: Path) -> pa.Table:
    table = pa.table({"user_id": [0, 1, 2], "item_ids": HISTORIES,
                      "timestamps": [[10 * t for t in range(len(h))] for h in HISTORIES],
                      "target": [6, 8, 1]}, schema=TARGET_SCHEMA)
    data.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, data / "test.parquet")
    return table


def test_last_items_keeps_each_history_tail_and_the_targets(tmp_path):
    full = write_test_split(tmp_path)
    cut = pq.read_table(last_items(tmp_path, "test", 2))
    assert cut.schema == TARGET_SCHEMA
    assert cut["item_ids"].to_pylist() == [[2, 3], [7], [9, 8]]
    assert cut["timestamps"].to_pylist() == [[30, 40], [0], [10, 20]]
    assert cut["user_id"].to_pylist() == full["user_id"].to_pylist()
    assert cut["target"].to_pylist() == full["target"].to_pylist()
    assert pq.read_table(last_items(tmp_path, "test", 5)).equals(full)


def test_only_a_dataset_with_a_shorter_published_window_gets_a_second_test_read(tmp_path):
    write_test_split(tmp_path / "d")
    splits = {}
    for name in DATASETS:
        plan = make_plan(parse_args(["--dataset", name, "--source", "x", "--data", str(tmp_path / "d")]))
        splits[name] = plan.test_splits()
        assert all(plan.test_sequences(s).exists() for s in splits[name])
    assert splits == {"ml100k": ["test"], "beauty": ["test"], "ml1m": ["test", "test_last200"]}


def test_published_rows_keep_their_metrics_and_protocol(tmp_path):
    beauty = published_table(DATASETS["beauty"], tmp_path).splitlines()
    assert "TIGER paper" in beauty[0] and str(tmp_path / "comparison.md") in beauty[0]
    assert beauty[2] == "| published | recall@5 | ndcg@5 | recall@10 | ndcg@10 |"
    assert beauty[4] == "| TIGER | 0.0454 | 0.0321 | 0.0648 | 0.0384 |"
    ml1m = published_table(DATASETS["ml1m"], tmp_path).splitlines()
    assert "last 200 history items" in ml1m[0]
    assert ml1m[4:] == ["| SASRec | 0.2853 | 0.1603 |", "| HSTU | 0.3097 | 0.1720 |",
                        "| HSTU-large | 0.3294 | 0.1893 |"]


def test_benchmark_demos_default_to_their_budgeted_rows_and_validated_beam():
    defaults = {n: parse_args(["--dataset", n, "--source", "x"]) for n in DATASETS}
    rows = {n: (a.sids, a.beam_width, a.sid_input) for n, a in defaults.items()}
    assert rows == {"ml100k": (["balanced", "collab", "fused"], 256, True), "beauty": (["collab"], 256, True),
                    "ml1m": (["collab"], 64, False)}
    full = parse_args(["--dataset", "ml1m", "--source", "x", "--sids", "text,collab,fused", "--beam-width", "256",
                       "--sid-input"])
    assert (full.sids, full.beam_width, full.sid_input) == (["text", "collab", "fused"], 256, True)
    assert parse_args(["--no-sid-input"]).sid_input is False


def test_stage_count_drops_the_stages_of_an_untrained_sid_input(tmp_path):
    write_test_split(tmp_path / "d")
    plan = make_plan(parse_args(["--dataset", "ml1m", "--source", "x", "--data", str(tmp_path / "d")]))
    # SID-input's training, its averaged checkpoints' score + evaluation on valid, candidates + evaluation per read
    assert stage_count(plan, ["collab"], True) - stage_count(plan, ["collab"], False) == 1 + 2 + 2 * 2
