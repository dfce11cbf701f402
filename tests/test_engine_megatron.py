"""Engine == Megatron: build the trainer's Megatron model at TP=1 and TP=2 (torchrun), save a checkpoint with the
trainer's checkpoint code (Adam state included), export it without Megatron, and compare logits (fp32, <= 1e-5)
on the same batch, for both head modes and both history modes (one torchrun per TP size builds all); and the engine's item scores are the
trained model's likelihood: exact and beam scores equal minus the training loss path's cross-entropy (with the dense
item-level score: SID log-likelihood + weight * item log-probability == minus the weighted training losses)."""
import pytest
import torch

from engine_megatron_worker import SIZES, VARIANTS, batch_pids, make_batch, variant_name
from launch import run_torchrun

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def batch_catalog(sids):
    """A catalog whose item b * L + l is the batch's item (b, l) (padding items included)."""
    from sidgr.sid.mapping import SIDMapping
    return SIDMapping(sids.reshape(-1, len(SIZES)).t().contiguous(), list(SIZES), {"method": "test"})


def check_scores_are_training_likelihood(engine_dir, sids, lengths, ref):
    """Each row's last item: the engine's score (exact and beam) == -(sum of its training token losses)."""
    from sidgr.inference.engine import Engine
    engine = Engine.load(engine_dir)
    L, n = sids.shape[1], engine.mapping.num_items
    hist = [torch.arange(b * L, b * L + int(m) - 1) for b, m in enumerate(lengths)]
    for kwargs in ({"exact": True, "widths": 1}, {"widths": 4096}):
        ranked = engine.retrieve(hist, k=n, **kwargs)
        for b, m in enumerate(lengths):
            target = b * L + int(m) - 1
            score = ranked.scores[b][ranked.items[b] == target]
            assert score.numel() == 1, kwargs
            assert abs(float(score) + float(ref["last_item_nll"][b])) <= 1e-4, (kwargs, b)


@pytest.mark.parametrize("tp", [1, 2])
def test_engine_logits_equal_megatron(tmp_path, tp):
    from sidgr.inference.export import export_checkpoint
    from sidgr.inference.engine import Engine
    from sidgr.inference.weights import load_engine
    from sidgr.token_layout import training_layout

    sids, lengths = make_batch()
    batch_catalog(sids).save(tmp_path / "sids")
    run_torchrun("tests/dist/engine_megatron_worker.py", tp, tp, tmp_path, timeout=300)

    for head_mode, history, dense_weight, dense_head in VARIANTS:
        name = variant_name(head_mode, history, dense_weight, dense_head)
        export_checkpoint(tmp_path / name / "checkpoints" / "iter_0000001", tmp_path / f"engine_{name}")
        files = load_engine(tmp_path / f"engine_{name}")
        assert (files.arch.head_mode, files.arch.history, files.arch.dense_weight, files.arch.dense_head) == (
            head_mode, history, dense_weight, dense_head)
        model = Engine(files).model
        ref = torch.load(tmp_path / f"{name}.pt")
        check_scores_are_training_likelihood(tmp_path / f"engine_{name}", sids, lengths, ref)
        tb = training_layout(sids, lengths, "last", files.arch.level_offsets, history, batch_pids(sids))
        with torch.no_grad():
            hidden = model(tb)
        valid = tb.valid.reshape(-1)
        assert (hidden - ref["hidden"]).reshape(valid.numel(), -1)[valid].abs().max() <= 1e-5
        flat = hidden.reshape(-1, files.arch.hidden_size)
        for h, ref_logits in enumerate(ref["heads"]):
            assert (flat @ model.heads[h].weight.t() - ref_logits)[valid].abs().max() <= 1e-5, (head_mode, h)
        for level in range(len(SIZES)):  # the decode path scores level slices of the same heads
            off = files.arch.level_offsets[level]
            ref_lvl = (ref["heads"][0][:, off:off + SIZES[level]] if head_mode == "shared"
                       else ref["heads"][level])
            assert (model.level_logits(flat, level) - ref_lvl)[valid].abs().max() <= 1e-5, (head_mode, level)
