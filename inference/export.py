"""Training checkpoint (Megatron dist_checkpointing, torch_dist = PyTorch DCP) -> engine directory, without Megatron.

The checkpoint's tensors are read with `torch.distributed.checkpoint` into full (global-shape) tensors, so any
TP/DP layout reads the same. Only model tensors are kept (optimizer state and `_extra_state` are dropped).
Megatron saves a TransformerBlock's layers stacked (`decoder.layers.<name>` with a leading layer dimension);
they are split into `decoder.layers.<i>.<name>`. Transformer Engine's fused LayerNorm names are mapped to the
local spec's. Vocab padding rows of the code table and heads are stripped.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from sidgr.arch import ModelArch
from sidgr.errors import input_error
from sidgr.io import check_output
from sidgr.logs import get_logger
from sidgr.run_layout import checkpoints_to_average, resolve_checkpoint, trained_mapping_path
from sidgr.sid.mapping import SIDMapping

from .weights import expected_shapes, is_engine_dir, save_engine

# Transformer Engine spec fuses the pre-attention / pre-MLP LayerNorm into the following linear.
TE_RENAMES = {
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "self_attention.linear_qkv.layer_norm_bias": "input_layernorm.bias",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
    "mlp.linear_fc1.layer_norm_bias": "pre_mlp_layernorm.bias",
}
_PREFIXES = ("model.", "module.")
_STACKED = re.compile(r"^decoder\.layers\.(?!\d+\.)(.+)$")


def read_arch(ckpt: Path) -> ModelArch:
    path = ckpt / "arch.json"
    if not path.exists():
        raise input_error(ckpt, "arch.json", str(path), "missing: not a sidgr training checkpoint")
    d = json.loads(path.read_text())
    d["codebook_sizes"] = tuple(d["codebook_sizes"])
    return ModelArch.from_dict(d)


def read_mapping(ckpt: Path) -> SIDMapping:
    return SIDMapping.load(trained_mapping_path(ckpt))


def grown_mapping(path: Path, arch: ModelArch, trained: SIDMapping) -> SIDMapping:
    """The mapping to serve instead of the trained one: it must keep every trained item's SID."""
    grown = SIDMapping.load(path)
    if not grown.extends(trained):
        raise input_error(path, "--mapping", str(path), f"does not keep the SIDs of the {trained.num_items} items "
                                                        "the model was trained with (extend it with `sidgr "
                                                        "tokenize --extend`)")
    if arch.needs_item_ids and grown.num_items != arch.num_items:
        raise input_error(path, "--mapping", str(path), f"history {arch.history!r} has item-id/prefix tables of "
                                                        f"the {arch.num_items} trained items: it cannot serve a "
                                                        "grown catalog")
    return grown


def normalize_key(key: str) -> str:
    """Checkpoint key -> engine naming (prefix-free, TE LayerNorm names mapped), stacked layers untouched."""
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    for te, local in TE_RENAMES.items():
        if key.endswith(te):
            key = key[: -len(te)] + local
    return key


def tensor_sizes(ckpt: Path, keep) -> dict[str, tuple[str, torch.Size]]:
    """Model tensors of the DCP metadata whose normalized name passes `keep`: name -> (checkpoint key, shape)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = FileSystemReader(str(ckpt)).read_metadata()
    out = {}
    for key, md in meta.state_dict_metadata.items():
        if not isinstance(md, TensorStorageMetadata) or "_extra_state" in key or "optimizer" in key:
            continue
        name = normalize_key(key)
        if keep(name):
            out[name] = (key, md.size)
    return out


def model_tensor_sizes(ckpt: Path) -> dict[str, tuple[str, torch.Size]]:
    """The SID-GR engine's tensors (embedding, decoder, heads)."""
    return tensor_sizes(ckpt, lambda name: name.startswith(("embedding.", "decoder.", "heads.")))


def read_tensors(ckpt: Path, sizes: dict[str, tuple[str, torch.Size]]) -> dict[str, torch.Tensor]:
    """Full fp32 tensors `sizes` (from `tensor_sizes`), read without a process group."""
    import torch.distributed.checkpoint as dcp

    buffers = {key: torch.empty(size, dtype=torch.float32) for key, size in sizes.values()}
    dcp.load(buffers, storage_reader=dcp.FileSystemReader(str(ckpt)), no_dist=True)
    return {name: buffers[key] for name, (key, _) in sizes.items()}


def read_model_tensors(ckpt: Path) -> dict[str, torch.Tensor]:
    """Full fp32 tensors of the model, read without a process group."""
    sizes = model_tensor_sizes(ckpt)
    if not sizes:
        raise input_error(ckpt, "checkpoint", str(ckpt), "no model tensors found in the DCP metadata")
    return read_tensors(ckpt, sizes)


def unstack_layers(tensors: dict[str, torch.Tensor], num_layers: int, source) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in tensors.items():
        m = _STACKED.match(name)
        if m is None:
            out[name] = t
            continue
        if t.shape[0] != num_layers:
            raise input_error(source, f"stacked tensor {name} layers", int(t.shape[0]),
                              f"arch.json says num_layers={num_layers}")
        for i in range(num_layers):
            out[f"decoder.layers.{i}.{m.group(1)}"] = t[i]
    return out


def strip_vocab_padding(tensors: dict[str, torch.Tensor], arch: ModelArch, source) -> dict[str, torch.Tensor]:
    want = expected_shapes(arch)
    out = dict(tensors)
    padded = ("embedding.codes.", "embedding.items.", "embedding.prefixes.", "embedding.dense_items.",
              "heads.")  # vocab-parallel tables
    for name in [n for n in out if n.startswith(padded)]:
        if name not in want:
            continue
        rows = want[name][0]
        if out[name].shape[0] < rows:
            raise input_error(source, f"rows of {name}", int(out[name].shape[0]),
                              f"fewer than the arch's {rows} rows")
        out[name] = out[name][:rows]
    return out


def export_checkpoint(ckpt: str | os.PathLike, out_dir: str | os.PathLike,
                      mapping: str | os.PathLike | None = None) -> Path:
    """`ckpt`: a checkpoint, or a run directory (its best, else latest, complete checkpoint: resolve_checkpoint).
    `mapping`: serve this SID mapping instead of the one trained with (a catalog grown by `sidgr tokenize
    --extend`: same codebook sizes, new items appended; the weights do not change)."""
    ckpt = Path(ckpt)
    check_output(Path(out_dir), is_dir=True, replaces=is_engine_dir)  # before the (slow) checkpoint read
    if not ckpt.is_dir():
        raise input_error(ckpt, "checkpoint", str(ckpt), "not a directory")
    given = ckpt
    ckpt, found = resolve_checkpoint(ckpt)
    if ckpt != given:
        which = "the best (best.json)" if ckpt != found[-1] else "the latest complete"
        get_logger("sidgr.export").info(f"{given}: exporting {which} checkpoint {ckpt.name} (of "
                                        f"{', '.join(p.name for p in found)}; pass one of them to pick another)")
    arch = read_arch(ckpt)
    served = serving_mapping(ckpt, arch, mapping)
    return save_engine(out_dir, arch, read_engine_tensors(ckpt, arch), served, source=str(ckpt.resolve()))


def export_average(ckpts: list, out_dir: str | os.PathLike, mapping: str | os.PathLike | None = None) -> Path:
    """One engine whose every tensor is the mean of the same tensor in `ckpts` (checkpoint averaging, as in
    Vaswani et al. 2017 and SWA, Izmailov et al. 2018): checkpoints of one model (`checkpoints_to_average`), in any
    TP/DP layout. Means are accumulated in float64 and stored as float32."""
    check_output(Path(out_dir), is_dir=True, replaces=is_engine_dir)
    ckpts = checkpoints_to_average(ckpts)
    arch = read_arch(ckpts[0])
    total: dict[str, torch.Tensor] = {}
    for c in ckpts:
        for name, t in read_engine_tensors(c, arch).items():
            total[name] = total[name] + t.double() if name in total else t.double()
    mean = {name: (t / len(ckpts)).float() for name, t in total.items()}
    source = "average of " + ", ".join(str(c.resolve()) for c in ckpts)
    return save_engine(out_dir, arch, mean, serving_mapping(ckpts[0], arch, mapping), source=source)


def serving_mapping(ckpt: Path, arch: ModelArch, mapping: str | os.PathLike | None) -> SIDMapping:
    """The trained SID mapping, or the grown one given with --mapping (checked against the trained one)."""
    return read_mapping(ckpt) if mapping is None else grown_mapping(Path(mapping), arch, read_mapping(ckpt))


def read_engine_tensors(ckpt: Path, arch: ModelArch) -> dict[str, torch.Tensor]:
    """The checkpoint's model tensors named and shaped as the engine's (layers unstacked, vocab padding off)."""
    tensors = unstack_layers(read_model_tensors(ckpt), arch.num_layers, ckpt)
    return strip_vocab_padding(tensors, arch, ckpt)
