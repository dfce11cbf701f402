"""The LM pipeline's --quick form with the real SmolLM2-135M (one run shared by the tests here): every stage runs,
the table compares it with popularity, every recommendation is a catalog item outside the user's history, the
language-side measurements are well formed, and chat answers with catalog items."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from lm_fixtures import require_smollm2

ROOT = Path(__file__).resolve().parents[1]
CELL = re.compile(r"^0\.\d{4} \[0\.\d{4}, 0\.\d{4}\]$")

pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    require_smollm2()
    pytest.importorskip("recbole", reason="MovieLens-100K comes from the recbole wheel (scripts/install.sh)")
    tmp = tmp_path_factory.mktemp("lm_quick")
    out, data = tmp / "out", tmp / "data"
    proc = subprocess.run([sys.executable, "scripts/lm_demo.py", "--quick", "--out", str(out), "--data", str(data)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, data


def test_table_compares_the_lm_with_popularity(quick):
    out, _ = quick
    lines = (out / "comparison.md").read_text().splitlines()
    rows = {cells[0]: cells[1:] for cells in
            ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:] if line.startswith("|"))}
    assert list(rows) == ["popularity", "lm"]
    recall10, ndcg10, recall50, coverage, invalid, excluded, users, paired = rows["lm"]
    for cell in (recall10, ndcg10, recall50):
        assert CELL.match(cell), cell
    assert float(invalid) == 0 and excluded == "yes" and users == "943"
    mean, low, high = map(float, re.findall(r"[+-]\d\.\d{4}", paired))
    assert low <= mean <= high
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quick"] and summary["wall_seconds"] > 0 and summary["best"]["step"] == 6


def test_recommendations_are_distinct_catalog_items_outside_the_history(quick):
    out, data = quick
    cands = pq.read_table(out / "lm" / "test_candidates.parquet").to_pylist()
    history = {r["user_id"]: set(r["item_ids"]) for r in pq.read_table(data / "test.parquet").to_pylist()}
    assert len(cands) == 32
    for row in cands:
        items = row["item_ids"]
        assert len(items) == 50 and len(set(items)) == 50
        assert all(0 <= p < 1682 for p in items) and not set(items) & history[row["user_id"]]
        assert row["scores"] == sorted(row["scores"], reverse=True)


def test_language_measurements_are_well_formed(quick):
    out, _ = quick
    ev = json.loads((out / "lm" / "lm_eval.json").read_text())
    for task, key in (("sid_to_title", "exact_match"), ("title_to_sid", "top1_accuracy")):
        for part in ("trained", "heldout"):
            assert ev[task][part]["items"] == 32 and 0 <= ev[task][part][key] <= 1
    assert all(e["name"] and "generated" in e for e in ev["sid_to_title"]["trained"]["examples"])
    inst = ev["instructions"]
    assert inst["users"] == 16 and "Comedy" in inst["genres"]
    assert all(0 <= inst[k] <= 1 for k in ("instructed_top1", "instructed_top10", "plain_top1", "plain_top10"))


def test_chat_answers_with_catalog_items(quick):
    out, data = quick
    proc = subprocess.run([sys.executable, "-m", "sidgr.cli", "lm", "chat", "--run", str(out / "lm"),
                           "--history", "0,1,49", "--prompt", "\nRecommend a Comedy movie:", "--items", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    titles = set(pq.read_table(data / "items.parquet").column("title").to_pylist())
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    assert len(lines) == 3
    for rank, line in enumerate(lines, 1):
        match = re.match(rf"^\s*{rank}\. \[(\d+)\] (.*) \((\d+)\)  \(log-lik -?\d+\.\d\d\)$", line)
        assert match and match.group(2) in titles and int(match.group(1)) not in (0, 1, 49), line
