"""Export from a DCP checkpoint written here (Megatron's torch_dist layout: stacked layers, vocab padding,
optimizer state, extra state), read back without Megatron or a process group."""
import io
import json
import logging

import pytest
import torch
import torch.distributed.checkpoint as dcp

from sidgr.arch import ModelArch
from sidgr.cli import main
from sidgr.errors import InputError
from sidgr.inference.export import export_average, export_checkpoint
from sidgr.inference.random_engine import random_mapping, random_state_dict
from sidgr.inference.weights import load_engine
from sidgr.sid.prefix_index import PrefixIndex

SIZES = (6, 5, 7)


def megatron_like(sd, arch, pad_to=24):
    out = {}
    layer_names = sorted({k.split(".", 3)[3] for k in sd if k.startswith("decoder.layers.")})
    for name in layer_names:
        out[f"decoder.layers.{name}"] = torch.stack([sd[f"decoder.layers.{i}.{name}"]
                                                     for i in range(arch.num_layers)])
    for k, v in sd.items():
        if not k.startswith("decoder.layers."):
            if k.startswith(("embedding.codes.", "embedding.items.", "embedding.prefixes.", "heads.")):
                rows = -(-v.shape[0] // pad_to) * pad_to  # vocab-parallel tables are padded
                v = torch.cat([v, torch.full((rows - v.shape[0], v.shape[1]), 99.0)])
            out[k] = v
    out["optimizer.state.exp_avg.embedding.bos"] = torch.ones(arch.hidden_size)
    out["decoder.layers.self_attention.core_attention._extra_state"] = io.BytesIO(b"x")
    return out


def write_checkpoint(ckpt, arch, sd, mapping_path, complete=True):
    dcp.save(megatron_like(sd, arch), storage_writer=dcp.FileSystemWriter(str(ckpt)), no_dist=True)
    (ckpt / "arch.json").write_text(arch.to_json())
    (ckpt / "mapping.json").write_text(json.dumps({"path": str(mapping_path)}))
    if complete:
        (ckpt / "trainer_state.pt").write_bytes(b"")


@pytest.mark.parametrize("head_mode,history", [("shared", "codes"), ("per_level", "codes"),
                                               ("shared", "prefixn+id")])
def test_export_from_dcp_checkpoint(tmp_path, head_mode, history):
    mapping = random_mapping(30, list(SIZES), 1)
    arch = ModelArch(codebook_sizes=SIZES, hidden_size=16, num_layers=3, num_attention_heads=2,
                     ffn_hidden_size=32, max_items=5, head_mode=head_mode, history=history,
                     num_items=30, prefix_counts=PrefixIndex.build(mapping).prefix_counts)
    sd = random_state_dict(arch, 5)
    ckpt = tmp_path / "run" / "checkpoints" / "iter_0000010"
    write_checkpoint(ckpt, arch, sd, mapping.save(tmp_path / "sids"))
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "engine")]) == 0
    files = load_engine(tmp_path / "engine")
    assert files.arch == arch
    assert set(files.state_dict) == set(sd)
    for k, v in sd.items():
        assert torch.equal(files.state_dict[k], v), k
    assert torch.equal(files.mapping.codes, random_mapping(30, list(SIZES), 1).codes)


def test_export_of_a_run_dir_takes_its_best_else_latest_complete_checkpoint(tmp_path):
    arch = ModelArch(codebook_sizes=SIZES, hidden_size=16, num_layers=1, num_attention_heads=2,
                     ffn_hidden_size=32, max_items=5)
    mapping_path = random_mapping(30, list(SIZES), 1).save(tmp_path / "sids")
    run = tmp_path / "run"
    for step, complete in ((10, True), (20, True), (30, False)):  # 30: no trainer state, i.e. not finished
        write_checkpoint(run / "checkpoints" / f"iter_{step:07d}", arch, random_state_dict(arch, step),
                         mapping_path, complete)
    said = logging.Handler()
    said.emit = lambda record: messages.append(record.getMessage())
    messages = []
    logging.getLogger("sidgr").addHandler(said)
    try:
        for given in (run, run / "checkpoints"):
            out = tmp_path / f"engine_{given.name}"
            assert main(["export", "--checkpoint", str(given), "--out", str(out)]) == 0
            want = random_state_dict(arch, 20)
            assert all(torch.equal(load_engine(out).state_dict[k], v) for k, v in want.items())
    finally:
        logging.getLogger("sidgr").removeHandler(said)
    assert sum("latest complete checkpoint iter_0000020 (of iter_0000010, iter_0000020;" in m
               for m in messages) == 2
    # a run that selected a checkpoint on the validation target (best.json): that one
    (run / "best.json").write_text(json.dumps({"checkpoint": "iter_0000010"}))
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "engine_best")]) == 0
    want = random_state_dict(arch, 10)
    assert all(torch.equal(load_engine(tmp_path / "engine_best").state_dict[k], v) for k, v in want.items())
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(InputError, match="neither a checkpoint nor a run dir with a complete one"):
        export_checkpoint(tmp_path / "empty_run", tmp_path / "e2")


def test_export_rejects_layer_count_mismatch(tmp_path):
    arch = ModelArch(codebook_sizes=SIZES, hidden_size=16, num_layers=3, num_attention_heads=2,
                     ffn_hidden_size=32, max_items=5)
    ckpt = tmp_path / "iter_0000001"
    dcp.save(megatron_like(random_state_dict(arch, 0), arch), storage_writer=dcp.FileSystemWriter(str(ckpt)),
             no_dist=True)
    bad = json.loads(arch.to_json())
    bad["num_layers"] = 2
    (ckpt / "arch.json").write_text(json.dumps(bad))
    (ckpt / "mapping.json").write_text(json.dumps({"path": str(random_mapping(30, list(SIZES), 1)
                                                               .save(tmp_path / "sids"))}))
    with pytest.raises(InputError, match="layers=3: arch.json says num_layers=2"):
        export_checkpoint(ckpt, tmp_path / "engine")
    assert not (tmp_path / "engine").exists()


def test_export_serves_a_grown_catalog_with_the_same_weights(tmp_path):
    from sidgr.inference.engine import Engine
    from sidgr.sid.mapping import SIDMapping

    arch = ModelArch(codebook_sizes=SIZES, hidden_size=16, num_layers=1, num_attention_heads=2,
                     ffn_hidden_size=32, max_items=5)
    trained = random_mapping(30, list(SIZES), 1)
    ckpt = tmp_path / "run" / "checkpoints" / "iter_0000010"
    write_checkpoint(ckpt, arch, random_state_dict(arch, 3), trained.save(tmp_path / "sids"))
    taken = {tuple(c) for c in trained.codes.t().tolist()}
    free = [[a, b, c] for a in range(6) for b in range(5) for c in range(7) if (a, b, c) not in taken][:5]
    grown_codes = torch.cat([trained.codes, torch.tensor(free).t()], 1)
    SIDMapping(grown_codes, list(SIZES), dict(trained.meta)).save(tmp_path / "grown")
    assert main(["export", "--checkpoint", str(ckpt), "--mapping", str(tmp_path / "grown.json"),
                 "--out", str(tmp_path / "engine")]) == 0
    files = load_engine(tmp_path / "engine")
    assert files.mapping.num_items == 35
    assert all(torch.equal(files.state_dict[k], v) for k, v in random_state_dict(arch, 3).items())
    ranked = Engine(files).retrieve([torch.tensor([0, 1])], k=33, widths=64, exclude_history=True)
    assert set(range(30, 35)) <= set(ranked.items[0].tolist())  # the new items are reachable by the beam
    moved = grown_codes.clone()
    moved[0, 0] = (moved[0, 0] + 1) % SIZES[0]
    SIDMapping(moved, list(SIZES), dict(trained.meta)).save(tmp_path / "moved")
    with pytest.raises(InputError, match="does not keep the SIDs"):
        export_checkpoint(ckpt, tmp_path / "engine2", tmp_path / "moved.json")


def test_trained_mapping_record_resolves_relative_paths_and_names_what_is_missing(tmp_path, monkeypatch):
    from sidgr.run_layout import trained_mapping_path, write_mapping_location

    ckpt = tmp_path / "run" / "checkpoints" / "iter_0000001"
    ckpt.mkdir(parents=True)
    with pytest.raises(InputError, match="mapping.json.*missing: not a sidgr training checkpoint"):
        trained_mapping_path(ckpt)
    mapping = random_mapping(30, list(SIZES), 1).save(ckpt / "sids")
    write_mapping_location(ckpt, mapping)
    assert trained_mapping_path(ckpt) == mapping.resolve()
    monkeypatch.chdir(tmp_path)  # a record written by hand, relative to the checkpoint
    (ckpt / "mapping.json").write_text(json.dumps({"path": "sids.json"}))
    assert trained_mapping_path(ckpt) == ckpt / "sids.json"
    (ckpt / "mapping.json").write_text(json.dumps({"path": "gone/sids.json"}))
    with pytest.raises(InputError, match="gone/sids.json.*does not exist"):
        trained_mapping_path(ckpt)


def test_export_of_several_checkpoints_averages_every_tensor(tmp_path):
    arch = ModelArch(codebook_sizes=SIZES, hidden_size=16, num_layers=2, num_attention_heads=2,
                     ffn_hidden_size=32, max_items=5)
    mapping_path = random_mapping(30, list(SIZES), 1).save(tmp_path / "sids")
    run = tmp_path / "run" / "checkpoints"
    for step, seed in ((10, 1), (20, 2), (30, 3)):
        write_checkpoint(run / f"iter_{step:07d}", arch, random_state_dict(arch, seed), mapping_path)
    ckpts = [str(run / f"iter_{s:07d}") for s in (10, 20, 30)]
    assert main(["export", "--checkpoint", *ckpts, "--out", str(tmp_path / "avg")]) == 0
    got = load_engine(tmp_path / "avg")
    assert got.arch == arch and got.source.startswith("average of ")
    parts = [random_state_dict(arch, seed) for seed in (1, 2, 3)]
    for name, t in got.state_dict.items():
        want = (parts[0][name].double() + parts[1][name].double() + parts[2][name].double()) / 3
        assert torch.equal(t, want.float()), name
    # one checkpoint given twice with another: a weighted mean, still exact
    assert main(["export", "--checkpoint", ckpts[0], ckpts[0], ckpts[1], "--out", str(tmp_path / "w")]) == 0
    w = load_engine(tmp_path / "w").state_dict["embedding.bos"]
    assert torch.allclose(w, (2 * parts[0]["embedding.bos"] + parts[1]["embedding.bos"]) / 3, atol=1e-7)


def test_averaging_refuses_other_models_and_run_dirs_in_one_line_and_writes_nothing(tmp_path):
    arch = ModelArch(codebook_sizes=SIZES, hidden_size=16, num_layers=2, num_attention_heads=2,
                     ffn_hidden_size=32, max_items=5)
    wider = ModelArch(codebook_sizes=SIZES, hidden_size=16, num_layers=2, num_attention_heads=2,
                      ffn_hidden_size=64, max_items=5)
    sids = random_mapping(30, list(SIZES), 1).save(tmp_path / "sids")
    other_sids = random_mapping(30, list(SIZES), 2).save(tmp_path / "other")
    a, b, c = (tmp_path / "run" / "checkpoints" / f"iter_000000{i}" for i in (1, 2, 3))
    write_checkpoint(a, arch, random_state_dict(arch, 1), sids)
    write_checkpoint(b, wider, random_state_dict(wider, 2), sids)
    write_checkpoint(c, arch, random_state_dict(arch, 3), other_sids)
    cases = [([a, b], r"iter_0000002/arch.json: ffn_hidden_size=64: differs from iter_0000001's 32"),
             ([a, c], r"iter_0000003: trained SIDs=.*differ from iter_0000001's"),
             ([a, tmp_path / "run"], r"run: checkpoint=.*a run directory: name the checkpoints to average")]
    for given, message in cases:
        with pytest.raises(InputError, match=message) as err:
            export_average(given, tmp_path / "engine")
        assert "\n" not in str(err.value)
        assert not (tmp_path / "engine").exists()
