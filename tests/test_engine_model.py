"""Engine model: KV-cache decode == no-cache forward; engine files round-trip and reject mismatches."""
import json

import pytest
import torch

from sidgr.arch import ModelArch
from sidgr.errors import InputError
from sidgr.token_layout import decode_position, prefill_layout, training_layout
from sidgr.sid.mapping import SIDMapping
from sidgr.sid.prefix_index import PrefixIndex
from sidgr.inference.kv_cache import BeamCache
from sidgr.inference.model import EngineModel
from sidgr.inference.random_engine import random_mapping, random_state_dict
from sidgr.inference.weights import load_engine, save_engine

SIZES = (6, 5, 7)


CATALOG = random_mapping(40, list(SIZES), seed=2)


def make_model(head_mode, seed=0, history="codes"):
    index = PrefixIndex.build(CATALOG)
    arch = ModelArch(codebook_sizes=SIZES, hidden_size=32, num_layers=2, num_attention_heads=4,
                     ffn_hidden_size=64, max_items=8, head_mode=head_mode, history=history,
                     num_items=CATALOG.num_items, prefix_counts=index.prefix_counts)
    return EngineModel.from_state_dict(arch, random_state_dict(arch, seed), index.prefix_nodes(CATALOG.codes))


@pytest.mark.parametrize("history", ["codes", "rqsum", "prefixn+id", "rqsum+id"])
@pytest.mark.parametrize("head_mode", ["shared", "per_level"])
def test_kv_cache_logits_equal_no_cache(head_mode, history):
    model = make_model(head_mode, history=history)
    arch, H = model.arch, len(SIZES)
    g = torch.Generator().manual_seed(1)
    B, W, L = 3, 5, 6
    lengths = torch.tensor([6, 2, 4])
    pids = torch.randint(CATALOG.num_items, (B, L), generator=g)
    hist = CATALOG.codes[:, pids].permute(1, 2, 0)  # [B, L, H]
    beams = torch.stack([torch.randint(c, (B, W), generator=g) for c in SIZES], dim=2)  # [B, W, H]

    # KV cache: prefill once, then teacher-force each beam's codes, one step at a time
    bos_hidden, hist_cache = model.prefill(prefill_layout(hist, lengths, arch.level_offsets, history, pids),
                                           lengths)
    kv_logits = [model.level_logits(bos_hidden, 0).unsqueeze(1).expand(B, W, -1)]
    cache = BeamCache()
    for h in range(1, H):
        tokens = beams[:, :, h - 1] + arch.level_offsets[h - 1]
        hidden, cache = model.decode_step(tokens, decode_position(lengths, h - 1, H), hist_cache, cache)
        kv_logits.append(model.level_logits(hidden, h))

    # no cache: the training layout of [history, beam item] for every (user, beam), one forward each
    full = torch.cat([hist.unsqueeze(1).expand(B, W, L, H), torch.zeros(B, W, 1, H, dtype=torch.int64)], 2)
    full[torch.arange(B).unsqueeze(1), torch.arange(W), lengths.unsqueeze(1)] = beams
    full_pids = torch.cat([pids, torch.zeros(B, 1, dtype=torch.int64)], 1).repeat_interleave(W, 0)
    batch = training_layout(full.reshape(B * W, L + 1, H), (lengths + 1).repeat_interleave(W), "last",
                            arch.level_offsets, history, full_pids)
    hidden = model(batch).view(B, W, -1, arch.hidden_size)
    per_item = H if history == "codes" else 1  # tokens each history item takes
    for h in range(H):
        at = (lengths * per_item + h).view(B, 1, 1, 1).expand(B, W, 1, arch.hidden_size)
        ref = model.level_logits(hidden.gather(2, at).squeeze(2), h)
        assert torch.allclose(kv_logits[h], ref, atol=1e-5, rtol=0), (h, (kv_logits[h] - ref).abs().max())


def test_beam_cache_reorder_gathers_parents():
    k = torch.arange(2 * 3 * 1 * 1 * 1, dtype=torch.float32).view(2, 3, 1, 1, 1)
    c = BeamCache([k], [k.clone()]).reorder(torch.tensor([[2, 2, 0, 1], [1, 0, 0, 0]]))
    assert c.keys[0].flatten().tolist() == [2, 2, 0, 1, 4, 3, 3, 3]


def save_random_engine(tmp_path, head_mode="shared"):
    model = make_model(head_mode)
    mapping = random_mapping(40, list(SIZES), seed=2)
    save_engine(tmp_path / "eng", model.arch, model.state_dict(), mapping, source="test")
    return tmp_path / "eng", model


def test_engine_roundtrip(tmp_path):
    path, model = save_random_engine(tmp_path, "per_level")
    files = load_engine(path)
    assert files.arch == model.arch
    assert all(torch.equal(files.state_dict[k], v) for k, v in model.state_dict().items())
    assert files.mapping.num_items == 40


def test_engine_json_arch_mismatch_is_one_line_error(tmp_path):
    path, _ = save_random_engine(tmp_path)
    info = json.loads((path / "engine.json").read_text())
    info["arch"]["hidden_size"] = 64
    info["arch"]["num_attention_heads"] = 4
    (path / "engine.json").write_text(json.dumps(info))
    with pytest.raises(InputError, match=r"shape of embedding\.codes\.weight=\(18, 32\)") as e:
        load_engine(path)
    assert "\n" not in str(e.value)


def test_engine_mapping_mismatch_is_one_line_error(tmp_path):
    path, _ = save_random_engine(tmp_path)
    m = SIDMapping.load(path / "sids.json")
    SIDMapping(m.codes[:2], m.codebook_sizes[:2], {}).save(path / "sids")
    with pytest.raises(InputError, match="mapping levels=2"):
        load_engine(path)


def test_engine_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    path, _ = save_random_engine(tmp_path)
    sd = load_file(str(path / "model.safetensors"))
    del sd["decoder.layers.1.mlp.linear_fc2.bias"]
    save_file(sd, str(path / "model.safetensors"))
    with pytest.raises(InputError, match="decoder.layers.1.mlp.linear_fc2.bias"):
        load_engine(path)


def test_truncated_weights_file_is_one_line_error(tmp_path):
    path, _ = save_random_engine(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="unreadable safetensors"):
        load_engine(path)
