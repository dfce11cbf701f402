"""The SID-speaking LM (sidgr.lm) on a tiny random Llama with SmolLM2's real tokenizer: the SID vocabulary,
leave-one-out task text, packing, the level-restricted loss, the constrained beam, the two stages, exact resume,
and the refusals. The real SmolLM2 runs in test_lm_quick.py."""
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lm_fixtures import SIZES, require_smollm2, write_tiny_base, write_tiny_catalog

require_smollm2()

from sidgr.cli import main as sidgr_main  # noqa: E402
from sidgr.inference.beam import ItemPaths  # noqa: E402
from sidgr.lm.config import LMConfig  # noqa: E402
from sidgr.lm.data import load_lm_data  # noqa: E402
from sidgr.lm.generate import recommend, sid_beam  # noqa: E402
from sidgr.lm.loss import lm_loss  # noqa: E402
from sidgr.lm.model import add_sid_tokens, load_base  # noqa: E402
from sidgr.lm.tasks import INSTRUCTIONS, NO_LOSS, TEXT, TaskRenderer, collate, epoch_examples, heldout_items, pack  # noqa: E402
from sidgr.sid.prefix_index import PrefixIndex  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    data, sids = write_tiny_catalog(root)
    base = write_tiny_base(root / "base")
    return root, data, sids, base


def build(tiny):
    root, data_dir, sids, base = tiny
    data = load_lm_data(data_dir, sids)
    model, tok = load_base(str(base))
    names = [tok.encode(n, add_special_tokens=False) for n in data.catalog.names]
    vocab = add_sid_tokens(model, tok, SIZES, names, data.catalog.sids)
    return data, model, tok, vocab, TaskRenderer(tok, vocab, data.catalog, "movie")


def config(tiny, run_dir, **kw) -> LMConfig:
    root, data_dir, sids, base = tiny
    cfg = LMConfig(data_dir=str(data_dir), sids=str(sids), run_dir=str(run_dir), base_model=str(base),
                   stage1_steps=2, stage2_steps=4, checkpoint_every=2, rows_per_step=2, seq_len=160,
                   warmup_steps=1, precision="fp32", wandb="disabled", select_beam_width=4, select_users=0,
                   eval_batch_users=4, history_items=6)
    return replace(cfg, **kw)


def test_sid_tokens_are_single_tokens_and_code_rows_start_at_their_items_text(tiny):
    data, model, tok, vocab, _ = build(tiny)
    assert tok.encode("<|sid_1_3|>", add_special_tokens=False) == [int(vocab.level_ids[1][3])]
    assert tok.encode("<|sid_begin|><|sid_0_2|>", add_special_tokens=False) == [vocab.begin_id,
                                                                                int(vocab.level_ids[0][2])]
    base, _ = load_base(str(tiny[3]))
    emb, old = model.get_input_embeddings().weight, base.get_input_embeddings().weight
    assert torch.equal(emb[:old.shape[0]], old)  # the pretrained rows are untouched
    text_vecs = torch.stack([old[torch.tensor(tok.encode(n, add_special_tokens=False))].mean(0)
                             for n in data.catalog.names])
    codes = data.catalog.sids
    for level in range(len(SIZES)):
        for code in range(SIZES[level]):
            carriers = (codes[:, level] == code).nonzero().squeeze(1)
            if carriers.numel():
                expected = text_vecs[carriers].mean(0)
                torch.testing.assert_close(emb[vocab.level_ids[level][code]], expected, rtol=1e-5, atol=1e-6)


def test_task_text_holds_only_train_interactions_and_never_a_heldout_items_title(tiny):
    data, _, tok, vocab, renderer = build(tiny)
    held = heldout_items(data.catalog.num_items, 0.1, 1234)
    assert len(held) == 4
    kept = np.setdiff1d(np.arange(data.catalog.num_items), held)
    item_rows = {tuple(vocab.item_tokens(data.catalog.sids[p:p + 1])[0].tolist()): p
                 for p in range(data.catalog.num_items)}
    width = len(SIZES) + 2
    seen = {"instructed": 0, "catalog": 0}
    for epoch in range(3):
        for ex in epoch_examples(renderer, data.train, 1234, epoch, 6, 2, True, 1, kept):
            text = tok.decode(ex.ids)
            assert not any(data.catalog.names[p] in text for p in held), text
            ids = ex.ids
            items = [item_rows[tuple(ids[i:i + width])] for i in range(len(ids) - width + 1)
                     if ids[i] == vocab.begin_id]
            if text.startswith("A user's"):  # a window of one user's train sequence (+ a later item of it)
                instructed = any(t.split("{")[0] in text for t in INSTRUCTIONS)
                window = items[:-1] if instructed else items
                owners = [(u, s) for u, seq in enumerate(data.train) for s in range(len(seq))
                          if list(seq[s:s + len(window)]) == window]
                assert owners, window
                if instructed:
                    assert any(items[-1] in data.train[u][s + len(window):] for u, s in owners)
                    seen["instructed"] += 1
            else:
                seen["catalog"] += 1
            # a target (kind != NO_LOSS) is a code token or, in SID->title, the title text
            assert all(k == NO_LOSS or k == TEXT or 1 <= k <= len(SIZES) for k in ex.kinds)
    assert seen["instructed"] > 0 and seen["catalog"] == 3 * 2 * len(kept)


def test_packed_rows_score_exactly_like_each_example_alone(tiny):
    data, model, tok, vocab, renderer = build(tiny)
    model.eval()
    kept = np.arange(data.catalog.num_items)
    examples = epoch_examples(renderer, data.train, 5, 0, 6, 1, True, 1, kept)[:12]
    rows = pack(examples, 160, tok.pad_token_id)
    assert sum(len(r[0]) for r in rows) == sum(len(e) for e in examples)  # nothing lost or duplicated
    assert len(rows) < len(examples) and all(len(r[0]) <= 160 for r in rows)
    batch = collate(rows, 160, tok.pad_token_id)
    with torch.no_grad():
        hidden = model.model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                             use_cache=False).last_hidden_state
        loss, count = lm_loss(hidden, model.get_output_embeddings().weight, batch.input_ids, batch.kinds, vocab)
        alone_sum, alone_count = 0.0, 0
        for ex in examples:
            ids = torch.tensor([ex.ids])
            kinds = torch.tensor([[NO_LOSS] + ex.kinds[1:]])
            h = model.model(input_ids=ids).last_hidden_state
            l, c = lm_loss(h, model.get_output_embeddings().weight, ids, kinds, vocab)
            alone_sum += float(l) * c
            alone_count += c
    assert count == alone_count
    assert math.isclose(float(loss) * count, alone_sum, rel_tol=1e-5)


def test_code_targets_use_a_softmax_over_their_level_only(tiny):
    _, model, _, vocab, _ = build(tiny)
    torch.manual_seed(0)
    hidden = torch.randn(1, 4, 32)
    weight = model.get_output_embeddings().weight.detach()
    ids = torch.tensor([[5, int(vocab.level_ids[0][1]), int(vocab.level_ids[1][3]), 7]])
    kinds = torch.tensor([[NO_LOSS, 1, 2, TEXT]])
    loss, count = lm_loss(hidden, weight, ids, kinds, vocab)
    expected = -(torch.log_softmax(hidden[0, 0] @ weight[vocab.level_ids[0]].t(), -1)[1]
                 + torch.log_softmax(hidden[0, 1] @ weight[vocab.level_ids[1]].t(), -1)[3]
                 + torch.log_softmax(hidden[0, 2] @ weight.t(), -1)[7]) / 3
    assert count == 3
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def full_forward_score(model, vocab, prompt, sid) -> float:
    """log P(sid | prompt) with each level's softmax over that level's codes, without any cache."""
    ids = torch.tensor([prompt + [int(vocab.level_ids[h][c]) for h, c in enumerate(sid)]])
    hidden = model.model(input_ids=ids).last_hidden_state[0]
    weight = model.get_output_embeddings().weight
    total, start = 0.0, len(prompt) - 1
    for h, c in enumerate(sid):
        total += float(torch.log_softmax(hidden[start + h] @ weight[vocab.level_ids[h]].t(), -1)[c])
    return total


def test_constrained_beam_returns_catalog_items_scored_like_a_full_forward(tiny):
    data, model, tok, vocab, renderer = build(tiny)
    model.eval()
    index = PrefixIndex.build(data.mapping)
    paths = ItemPaths.build(index, data.catalog.num_items)
    histories = [data.train[0][:3], data.train[1][:9], data.train[2][:5]]  # unequal lengths: left padding
    prompts = [renderer.recommend_prompt(h) for h in histories]
    with torch.no_grad():
        ranked = recommend(model, vocab, index, paths, prompts, [torch.as_tensor(h) for h in histories],
                           width=64, k=data.catalog.num_items, pad_id=tok.pad_token_id)
        for b, h in enumerate(histories):
            items = [p for p in ranked.items[b].tolist() if p >= 0]
            assert sorted(items) == sorted(set(range(data.catalog.num_items)) - set(h.tolist()))  # all, no history
            for p, score in list(zip(items, ranked.scores[b].tolist()))[:6]:
                sid = data.catalog.sids[p].tolist()
                assert math.isclose(score, full_forward_score(model, vocab, prompts[b], sid), rel_tol=1e-4)
            assert ranked.scores[b][:len(items)].diff().le(0).all()
        leaves, _ = sid_beam(model, vocab, index, prompts, 3, tok.pad_token_id)  # narrow beam: still only items
    assert (leaves >= 0).all() and (index.leaf_sizes(leaves) == 1).all()


def test_stage_one_moves_only_the_new_token_rows(tiny):
    from sidgr.lm.train import stage_optimizer

    data, model, tok, vocab, renderer = build(tiny)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = config(tiny, "unused", stage1_lr=1e-2)
    opt = stage_optimizer(model, vocab.begin_id, 1, cfg)
    examples = epoch_examples(renderer, data.train, 1, 0, 6, 1, True, 1, np.arange(data.catalog.num_items))
    for step in range(3):
        batch = collate(pack(examples[step * 4:(step + 1) * 4], 160, tok.pad_token_id), 160, tok.pad_token_id)
        hidden = model.model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                             use_cache=False).last_hidden_state
        lm_loss(hidden, model.get_output_embeddings().weight, batch.input_ids, batch.kinds, vocab)[0].backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    emb_key = "model.embed_tokens.weight"
    for k, v in before.items():
        if k != emb_key and k != "lm_head.weight":
            assert torch.equal(v, after[k]), k
    assert torch.equal(before[emb_key][:vocab.begin_id], after[emb_key][:vocab.begin_id])
    assert not torch.equal(before[emb_key][vocab.begin_id:], after[emb_key][vocab.begin_id:])


def test_a_crashed_run_resumes_to_the_same_weights(tiny, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from sidgr.lm import train as lm_train

    straight = lm_train.train(config(tiny, tmp_path / "straight"))
    real_next, calls = lm_train.BatchStream.next, []

    def crash_at_step_5(self):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("killed")
        return real_next(self)

    monkeypatch.setattr(lm_train.BatchStream, "next", crash_at_step_5)
    cfg = config(tiny, tmp_path / "crashed")
    with pytest.raises(RuntimeError, match="killed"):
        lm_train.train(cfg)
    monkeypatch.setattr(lm_train.BatchStream, "next", real_next)
    with pytest.raises(Exception, match="--resume"):
        lm_train.train(cfg)  # an existing run is never restarted over
    resumed = lm_train.train(cfg, resume=True)
    a = load_file(straight / "checkpoints/step_0000006/model/model.safetensors")
    b = load_file(resumed / "checkpoints/step_0000006/model/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert json.loads((resumed / "best.json").read_text()) == json.loads((straight / "best.json").read_text())


def test_bad_inputs_get_one_line_and_change_nothing(tiny, tmp_path, capsys):
    config_file = tmp_path / "lm.gin"
    config_file.write_text(f"LMConfig.data_dir = '{tiny[1]}'\n")
    assert sidgr_main(["lm", "train", "--config", str(config_file), "LMConfig.nonsense=1"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nonsense" in err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert sidgr_main(["lm", "train", "--config", str(config_file), f"LMConfig.run_dir='{foreign}'",
                       f"LMConfig.sids='{tiny[2]}'", f"LMConfig.base_model='{tiny[3]}'"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was not written by this command" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert sidgr_main(["lm", "train", "--config", str(config_file), "LMConfig.stage2_steps=0"]) == 1
    assert "stage2_steps" in capsys.readouterr().err


def test_chat_names_the_item_behind_a_generated_sid(tiny):
    from sidgr.lm.cli import annotate_sids

    data, _, _, vocab, renderer = build(tiny)
    index = PrefixIndex.build(data.mapping)
    sid = data.catalog.sids[7].tolist()
    text = "<|sid_begin|>" + "".join(f"<|sid_{h}_{c}|>" for h, c in enumerate(sid)) + "<|sid_end|>"
    assert annotate_sids(f"try {text}", renderer, index) == f"try {text} [{data.catalog.names[7]}]"
    unused = next(t for t in torch.cartesian_prod(*[torch.arange(s) for s in SIZES]).tolist()
                  if int(index.lookup(torch.tensor([t]))[0]) < 0)
    fake = "<|sid_begin|>" + "".join(f"<|sid_{h}_{c}|>" for h, c in enumerate(unused)) + "<|sid_end|>"
    assert annotate_sids(fake, renderer, index).endswith("[not an item]")


def test_the_shipped_config_parses_and_refuses_trainer_bindings():
    from sidgr.errors import InputError
    from sidgr.lm.config import load_lm_config

    root = Path(__file__).resolve().parents[1] / "configs"
    cfg = load_lm_config(str(root / "lm_ml100k.gin"), ["LMConfig.stage2_steps=7"])
    assert cfg.stage2_steps == 7 and cfg.item_noun == "movie" and cfg.precision == "bf16"
    with pytest.raises(InputError, match="TrainerConfig"):
        load_lm_config(str(root / "lm_ml100k.gin"), ["TrainerConfig.train_steps=3"])
