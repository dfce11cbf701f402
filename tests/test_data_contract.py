"""The data contract written once (sidgr/data): Ragged conversions, reader checks, and what each reader reads."""
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from sidgr.data.ragged import Ragged
from sidgr.data.readers import iter_sequence_batches, read_targets
from sidgr.errors import InputError
from sidgr.ranking import top_k_unseen


def write(path, **cols):
    pq.write_table(pa.table(cols), path)
    return path


def test_ragged_from_sliced_arrow_is_zero_based_and_writable():
    col = pa.array([[1, 2], [3], [], [4, 5, 6]], pa.list_(pa.int64())).slice(1, 3)
    r = Ragged.from_arrow(col, "f", "item_ids")
    assert r.offsets.tolist() == [0, 1, 1, 4] and r.values.tolist() == [3, 4, 5, 6]
    assert r.values.flags.writeable
    assert r.take(np.array([2, -1, 0])).values.tolist() == [4, 5, 6, 3]
    assert [x.tolist() for x in r.recent(2)] == [[[3, -1], [-1, -1], [5, 6]], [1, 0, 2]]
    with pytest.raises(InputError, match="row 1 item_ids=None: null entry"):
        Ragged.from_arrow(pa.array([[1], [2, None]], pa.list_(pa.int64())), "f", "item_ids")
    with pytest.raises(InputError, match="expected a list of integer ids"):
        Ragged.from_arrow(pa.array([["a"]], pa.list_(pa.string())), "f", "item_ids")


def test_readers_check_target_only_where_it_is_used(tmp_path):
    f = write(tmp_path / "s.parquet", user_id=pa.array([0, 1], pa.int64()),
              item_ids=pa.array([[1, 2], [3]], pa.list_(pa.int64())), target=pa.array([1, None], pa.int64()))
    batches = list(iter_sequence_batches(f, num_items=6))  # retrieval / scoring: target not read
    assert batches[0].targets is None and batches[0].items.values.tolist() == [1, 2, 3]
    with pytest.raises(InputError, match="row 1 target=None: null target"):
        read_targets(f, 6)
    g = write(tmp_path / "g.parquet", user_id=pa.array([0], pa.int64()), item_ids=pa.array([[9]], pa.list_(pa.int64())))
    with pytest.raises(InputError, match="g.parquet: user_id=0 item_ids=9: outside the catalog 0..5"):
        list(iter_sequence_batches(g, num_items=6))


def test_evaluate_names_the_targets_file_when_it_has_no_history(tmp_path):
    from sidgr.evaluate import evaluate

    c = write(tmp_path / "c.parquet", user_id=pa.array([0], pa.int64()), item_ids=pa.array([[1]], pa.list_(pa.int64())))
    t = write(tmp_path / "t.parquet", user_id=pa.array([0], pa.int64()), target=pa.array([1], pa.int64()))
    with pytest.raises(InputError, match=r"t\.parquet: item_ids=None: verifying history exclusion"):
        evaluate(c, t, 6, exclude_history=True, bootstrap=0)
    report, _, _ = evaluate(c, t, 6, exclude_history=False, bootstrap=0)
    assert report["metrics"]["recall@1"]["mean"] == 1.0
    assert report["protocol"]["history_check"] == "not checked: the targets have no history column"


def test_item_validation_refuses_a_file_without_histories(tmp_path):
    from sidgr.sid.mapping import SIDMapping
    from sidgr.training.item_task import ItemTask

    mapping = SIDMapping(torch.tensor([[0, 0, 1, 1], [0, 1, 0, 1]]), [2, 2], {})
    t = write(tmp_path / "valid.parquet", user_id=pa.array([0], pa.int64()), target=pa.array([1], pa.int64()))
    task = ItemTask(mapping, "id")
    with pytest.raises(InputError, match="valid.parquet: columns='item_ids': validation needs"):
        task.setup_validation(SimpleNamespace(valid_path=str(t)), mapping, SimpleNamespace(dp_rank=0, dp_size=1))


def test_top_k_unseen_breaks_ties_toward_the_smaller_item_and_skips_history():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    history = Ragged.from_lists([[2], [0, 1, 2, 3]])
    items, values = top_k_unseen(scores, 3, history)
    assert [items.row(u).tolist() for u in range(2)] == [[1, 4, 3], [4]]
    assert values.row(0).tolist() == [3.0, 3.0, 2.0]
