"""The evaluator's join and checks, its CLI outputs, and the popularity baseline on a tiny hand-made dataset."""
import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidgr import baselines, cli
from sidgr.errors import InputError
from sidgr.data.readers import read_num_items as resolve_num_items
from sidgr.data.ragged import Ragged
from sidgr.evaluate import evaluate


def write(path, **cols):
    pq.write_table(pa.table(cols), path)
    return path


@pytest.fixture
def files(tmp_path):
    cands = write(tmp_path / "c.parquet", user_id=pa.array([2, 0, 1], pa.int64()),
                  item_ids=pa.array([[], [3, 1, 2], [0, 0, 5, 9]], pa.list_(pa.int64())),
                  scores=pa.array([[], [1.0, 1.0, 1.0], [0.1, 0.2, 0.3, 0.4]], pa.list_(pa.float32())))
    targets = write(tmp_path / "t.parquet", user_id=pa.array([0, 1, 2, 3], pa.int64()),
                    item_ids=pa.array([[4], [6], [7], [8]], pa.list_(pa.int64())),
                    target=pa.array([1, 5, 2, 3], pa.int64()))
    return cands, targets


def test_join_on_user_id_and_users_without_candidates(files):
    cands, targets = files
    report, per_user, users = evaluate(cands, targets, 10, ks=(1, 5), bootstrap=0)
    assert users.tolist() == [0, 1, 2, 3]
    # equal scores do not matter, list order does: user 0 hits at rank 2, user 1 at rank 3 (repeat keeps its slot)
    np.testing.assert_allclose(per_user["ndcg@5"], [1 / math.log2(3), 0.5, 0, 0])
    np.testing.assert_allclose(per_user["mrr"], [1 / 2, 1 / 3, 0, 0])
    assert report["metrics"]["recall@5"]["mean"] == pytest.approx(0.5)
    assert report["users"] == {"evaluated": 4, "without_candidates": 1, "with_empty_list": 2,
                               "targets_per_user_max": 1, "targets_total": 4}
    assert report["candidates"]["num_duplicates"] == 1
    assert report["candidates"]["num_in_history"] == 0
    assert report["protocol"]["ranking"] == "full-catalog"
    assert report["protocol"]["history_excluded"] is False


def test_list_valued_targets(tmp_path):
    cands = write(tmp_path / "c.parquet", user_id=[0], item_ids=[[1, 9, 3]])
    targets = write(tmp_path / "t.parquet", user_id=[0], target=[[1, 2, 3]])
    report, per_user, _ = evaluate(cands, targets, 10, ks=(5,), bootstrap=0)
    assert per_user["recall@5"][0] == pytest.approx(2 / 3)
    assert report["users"]["targets_per_user_max"] == 3


def test_cli_writes_json_markdown_and_per_user(files, tmp_path):
    cands, targets = files
    out = tmp_path / "out"
    rc = cli.main(["evaluate", "--candidates", str(cands), "--targets", str(targets), "--items", "10",
                   "--out", str(out), "--ks", "1,5,10", "--bootstrap", "200", "--seed", "3", "--include-history"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md", "per_user.parquet"]
    report = json.loads((out / "metrics.json").read_text())
    assert report["ks"] == [1, 5, 10]
    assert report["bootstrap"]["seed"] == 3
    stat = report["metrics"]["recall@10"]
    assert stat["ci_low"] <= stat["mean"] <= stat["ci_high"]
    md = (out / "metrics.md").read_text()
    assert "full-catalog" in md and "history items excluded: **no**" in md
    assert f"{stat['mean']:.4f} [{stat['ci_low']:.4f}, {stat['ci_high']:.4f}]" in md
    per_user = pq.read_table(out / "per_user.parquet").to_pydict()
    assert per_user["user_id"] == [0, 1, 2, 3]
    assert per_user["mrr"] == pytest.approx([0.5, 1 / 3, 0, 0])
    # same seed, same numbers
    cli.main(["evaluate", "--candidates", str(cands), "--targets", str(targets), "--items", "10",
              "--out", str(tmp_path / "again"), "--ks", "1,5,10", "--bootstrap", "200", "--seed", "3",
              "--include-history"])
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["metrics"] == report["metrics"]


def test_cli_error_is_one_line_and_writes_nothing(tmp_path, capsys):
    cands = write(tmp_path / "c.parquet", user_id=[0], scores=[[1.0]])
    targets = write(tmp_path / "t.parquet", user_id=[0], target=[1])
    out = tmp_path / "out"
    rc = cli.main(["evaluate", "--candidates", str(cands), "--targets", str(targets), "--items", "5",
                   "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "item_ids" in err and "missing required column" in err
    assert not out.exists()


def test_failed_write_leaves_no_partial_file(files, tmp_path, monkeypatch):
    cands, targets = files
    out = tmp_path / "out"

    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr("sidgr.evaluate.write_json", boom)
    with pytest.raises(RuntimeError):
        cli.main(["evaluate", "--candidates", str(cands), "--targets", str(targets), "--items", "10",
                  "--out", str(out), "--bootstrap", "0"])
    assert not (out / "metrics.json").exists()
    assert all(not p.name.startswith(".") for p in out.iterdir())  # no temporaries left behind


def test_candidate_user_absent_from_targets_is_an_input_error(tmp_path):
    cands = write(tmp_path / "c.parquet", user_id=[0, 7], item_ids=[[1], [2]])
    targets = write(tmp_path / "t.parquet", user_id=[0, 1], target=[1, 2])
    with pytest.raises(InputError, match=r"user_id=7.*not in the targets"):
        evaluate(cands, targets, 5, bootstrap=0)


@pytest.mark.parametrize("cols, match", [
    (dict(user_id=[0, 0], item_ids=[[1], [2]]), r"user_id=0.*more than one row"),
    (dict(user_id=[0], item_ids=[["a"]]), r"item_ids=.*list of integer"),
    (dict(item_ids=[[1]]), r"missing required column"),
])
def test_malformed_candidates(tmp_path, cols, match):
    cands = write(tmp_path / "c.parquet", **cols)
    targets = write(tmp_path / "t.parquet", user_id=[0], target=[1])
    with pytest.raises(InputError, match=match):
        evaluate(cands, targets, 5, bootstrap=0)


def test_target_outside_catalog_is_an_input_error(tmp_path):
    cands = write(tmp_path / "c.parquet", user_id=[0], item_ids=[[1]])
    targets = write(tmp_path / "t.parquet", user_id=[0], target=[5])
    with pytest.raises(InputError, match=r"target=5.*outside the catalog"):
        evaluate(cands, targets, 5, bootstrap=0)


def test_exclude_history_is_verified(files, tmp_path):
    cands, _ = files
    targets = write(tmp_path / "t.parquet", user_id=[0, 1, 2, 3], item_ids=[[4], [9, 6], [7], [8]],
                    target=[1, 5, 2, 3])
    with pytest.raises(InputError, match=r"item_ids=9.*history of user 1"):
        evaluate(cands, targets, 10, exclude_history=True, bootstrap=0)
    report, _, _ = evaluate(cands, targets, 10, exclude_history=False, bootstrap=0)
    assert report["candidates"]["num_in_history"] == 1


def test_items_parquet_gives_catalog_size(tmp_path):
    assert resolve_num_items(write(tmp_path / "i.parquet", item_id=[2, 0, 1])) == 3
    assert resolve_num_items("12") == 12
    with pytest.raises(InputError, match="0..N-1"):
        resolve_num_items(write(tmp_path / "j.parquet", item_id=[0, 2]))


# --- popularity baseline ---------------------------------------------------------------------------------

@pytest.fixture
def tiny(tmp_path):
    # counts: item0 1, item1 3, item2 3, item3 0, item4 2, item5 0
    train = write(tmp_path / "train.parquet", user_id=[0, 1, 2], item_ids=[[1, 2, 4], [2, 1, 0], [4, 1, 2]])
    test = write(tmp_path / "test.parquet", user_id=[0, 1, 2], item_ids=[[1, 2, 4, 3], [2, 1, 0, 5], [4, 1]],
                 target=[0, 4, 2])
    return train, test


def test_popularity_ranks_by_count_then_item_id(tiny, tmp_path):
    train, test = tiny
    out = tmp_path / "pop.parquet"
    baselines.run_popularity(train, test, 6, out, top_k=4, exclude_history=False)
    got = pq.read_table(out).to_pydict()
    assert got["user_id"] == [0, 1, 2]
    assert got["item_ids"] == [[1, 2, 4, 0]] * 3
    assert got["scores"] == [[3.0, 3.0, 2.0, 1.0]] * 3


def test_popularity_excludes_history(tiny, tmp_path):
    train, test = tiny
    out = tmp_path / "pop.parquet"
    baselines.run_popularity(train, test, 6, out, top_k=3, exclude_history=True)
    got = pq.read_table(out).to_pydict()
    # user 0 saw {1,2,3,4}: only 0 and 5 remain; user 1 saw {0,1,2,5}; user 2 saw {1,4}
    assert got["item_ids"] == [[0, 5], [4, 3], [2, 0, 3]]
    assert got["scores"] == [[1.0, 0.0], [2.0, 0.0], [3.0, 1.0, 0.0]]
    report, per_user, _ = evaluate(out, test, 6, exclude_history=True, ks=(1, 3), bootstrap=0)
    assert per_user["recall@1"].tolist() == [1.0, 1.0, 1.0]
    assert per_user["recall@3"].tolist() == [1.0, 1.0, 1.0]


def test_popularity_chunked_exclusion_matches_one_chunk():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 5, size=40)
    hist = Ragged.from_lists([rng.choice(40, size=rng.integers(0, 30), replace=False).tolist()
                                        for _ in range(25)])
    one, _ = baselines.popularity_candidates(counts, hist, 10, True)
    many, _ = baselines.popularity_candidates(counts, hist, 10, True, chunk_users=4)
    assert one.values.tolist() == many.values.tolist() and one.offsets.tolist() == many.offsets.tolist()
    order = baselines.popularity_order(counts)
    for u in range(25):
        seen = set(hist.values[hist.offsets[u]:hist.offsets[u + 1]].tolist())
        expected = [i for i in order.tolist() if i not in seen][:10]
        assert one.values[one.offsets[u]:one.offsets[u + 1]].tolist() == expected


def test_popularity_cli_rejects_out_of_catalog_train_items(tiny, tmp_path, capsys):
    train, test = tiny
    rc = cli.main(["baseline", "popularity", "--train", str(train), "--sequences", str(test), "--items", "3",
                   "--out", str(tmp_path / "p.parquet")])
    assert rc == 1
    assert "outside the catalog" in capsys.readouterr().err
    assert not (tmp_path / "p.parquet").exists()


# --- report ----------------------------------------------------------------------------------------------

def test_report_table_and_plots(files, tmp_path):
    from sidgr import report

    cands, targets = files
    for name in ("a", "b"):
        cli.main(["evaluate", "--candidates", str(cands), "--targets", str(targets), "--items", "10",
                  "--out", str(tmp_path / name), "--bootstrap", "100"])
    reports = {"pop": report.load_report(tmp_path / "a"), "gr": report.load_report(tmp_path / "b" / "metrics.json")}
    text = report.comparison_table(reports)
    rows = [line for line in text.splitlines() if line.startswith("| pop") or line.startswith("| gr")]
    assert len(rows) == 2
    stat = reports["pop"]["metrics"]["recall@10"]
    assert f"{stat['mean']:.4f} [{stat['ci_low']:.4f}, {stat['ci_high']:.4f}]" in rows[0]
    assert rows[0].split(" | ")[4] == f"{reports['pop']['coverage']['coverage@10']:.4f}"
    reports["gr"]["inputs"]["num_items"] = 11
    with pytest.raises(InputError, match="different catalogs"):
        report.comparison_table(reports)

    log = tmp_path / "metrics.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "loss": 5.0}, {"step": 2, "loss": 4.0, "valid/recall@10": 0.1}, {"iteration": 3, "loss": 3.5}]))
    records = report.read_jsonl(log)
    assert report.series(records, report.LOSS_KEYS) == ([1.0, 2.0, 3.0], [5.0, 4.0, 3.5])
    assert report.series(records, report.RECALL_KEYS) == ([2.0], [0.1])
    written = report.plot_curves({"gr": records}, tmp_path / "plots")
    assert [p.name for p in written] == ["training_loss.png", "valid_recall10.png"]
    assert cli.main(["report", "beam", "--beam", f"4={tmp_path / 'a'}", "--beam", f"16={tmp_path / 'b'}",
                     "--exact", str(tmp_path / "b"), "--latency", "4=1.5", "--latency", "16=3.25",
                     "--out", str(tmp_path / "plots")]) == 0
    assert cli.main(["report", "beam", "--beam", f"4={tmp_path / 'a'}", "--latency", "4=fast",
                     "--out", str(tmp_path / "bad")]) == 1
    assert not (tmp_path / "bad").exists()
    (tmp_path / "x.csv").write_text("user_id,item_ids\n1,2\n")
    with pytest.raises(InputError, match="x.csv.*not an evaluation"):
        report.load_report(tmp_path / "x.csv")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="other.json.*no 'metrics'"):
        report.load_report(tmp_path / "other.json")
    for name in ("training_loss.png", "valid_recall10.png", "recall_vs_beam.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _per_user(directory, users, recall10):
    directory.mkdir(parents=True)
    write(directory / "per_user.parquet", user_id=pa.array(users, pa.int64()),
          **{"recall@10": pa.array(recall10, pa.float64())})
    return directory


def test_paired_difference_aligns_users_and_bounds_the_mean(tmp_path):
    from sidgr import report

    base = _per_user(tmp_path / "base", [0, 1, 2, 3], [1.0, 0.0, 1.0, 0.0])
    # same users in another order: run hits users 0,1,2 -> per-user differences 0, +1, 0, 0
    run = _per_user(tmp_path / "run", [3, 2, 1, 0], [0.0, 1.0, 1.0, 1.0])
    d = report.paired_difference(run, base, num_samples=500, seed=1)
    assert d["mean"] == pytest.approx(0.25)
    assert 0.0 <= d["ci_low"] <= 0.25 <= d["ci_high"] <= 1.0
    assert report.paired_difference(base, base) == {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    assert report.paired_difference(run, base, num_samples=500, seed=1) == d
    other = _per_user(tmp_path / "other", [0, 1, 2, 9], [0.0, 0.0, 0.0, 0.0])
    with pytest.raises(InputError, match="not the same users"):
        report.paired_difference(other, base)
    table = "| model | x |\n|---|---|\n| base | 1 |\n| run | 2 |\n"
    out = report.with_paired_column(table, {"base": str(base), "run": str(run)}, "base",
                                    num_samples=500, seed=1).splitlines()
    assert out[2].endswith("| — |")
    assert out[3].endswith(f"| {d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] |")
    with pytest.raises(InputError, match="not one of the runs"):
        report.with_paired_column(table, {"base": str(base)}, "nope")


def test_paired_column_for_evaluations_made_without_cis(files, tmp_path):
    """Checkpoint scoring evaluates with --bootstrap 0; a paired comparison of two such runs still gets its CI."""
    cands, targets = files
    for name in ("a", "b"):
        assert cli.main(["evaluate", "--candidates", str(cands), "--targets", str(targets), "--items", "10",
                         "--out", str(tmp_path / name), "--bootstrap", "0"]) == 0
    assert cli.main(["report", "table", "--run", f"a={tmp_path / 'a'}", "--run", f"b={tmp_path / 'b'}",
                     "--paired-baseline", "a", "--out", str(tmp_path / "t")]) == 0
    rows = (tmp_path / "t" / "comparison.md").read_text().splitlines()
    assert rows[3].endswith("| +0.0000 [+0.0000, +0.0000] |")
