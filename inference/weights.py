"""The engine file format: `model.safetensors` + `engine.json` + a copy of the SID mapping, in one directory.

engine.json = {"arch": ModelArch dict, "mapping": "sids.json" (relative to the engine dir), "source": str}.
Tensor names are the Megatron model's own (see `model.expected_shapes`), so export is a renaming-free copy.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sidgr.arch import ModelArch
from sidgr.errors import input_error
from sidgr.io import atomic_path
from sidgr.sid.mapping import SIDMapping

WEIGHTS_FILE = "model.safetensors"
ENGINE_JSON = "engine.json"
MAPPING_STEM = "sids"


@dataclass
class EngineFiles:
    arch: ModelArch
    state_dict: dict[str, torch.Tensor]
    mapping: SIDMapping
    source: str


def expected_shapes(arch: ModelArch) -> dict[str, tuple[int, ...]]:
    """Every tensor of the model with its shape, named as the Megatron model names it."""
    h, f, V = arch.hidden_size, arch.ffn_hidden_size, arch.vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "embedding.codes.weight": (V, h),
        "embedding.bos": (h,),
        "embedding.positions.weight": (arch.max_positions, h),
        **item_table_shapes(arch),
        "decoder.final_layernorm.weight": (h,),
        "decoder.final_layernorm.bias": (h,),
    }
    for i in range(arch.num_layers):
        p = f"decoder.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "input_layernorm.bias": (h,),
            p + "self_attention.linear_qkv.weight": (3 * h, h), p + "self_attention.linear_qkv.bias": (3 * h,),
            p + "self_attention.linear_proj.weight": (h, h), p + "self_attention.linear_proj.bias": (h,),
            p + "pre_mlp_layernorm.weight": (h,), p + "pre_mlp_layernorm.bias": (h,),
            p + "mlp.linear_fc1.weight": (f, h), p + "mlp.linear_fc1.bias": (f,),
            p + "mlp.linear_fc2.weight": (h, f), p + "mlp.linear_fc2.bias": (h,),
        })
    if arch.head_mode == "shared":
        shapes["heads.0.weight"] = (V, h)
    else:
        for level, c in enumerate(arch.codebook_sizes):
            shapes[f"heads.{level}.weight"] = (c, h)
    return shapes


def item_table_shapes(arch: ModelArch) -> dict[str, tuple[int, ...]]:
    """The ITEM tokens' id and prefix tables (history '+id' / 'prefixn'), and the dense score's own item table."""
    shapes = {}
    if "id" in arch.item_parts:
        shapes["embedding.items.weight"] = (arch.num_items, arch.hidden_size)
    if "prefixn" in arch.item_parts:
        for h, n in enumerate(arch.prefix_counts):
            shapes[f"embedding.prefixes.{h}.weight"] = (n, arch.hidden_size)
    if arch.dense_head == "table":
        shapes["embedding.dense_items.weight"] = (arch.num_items, arch.hidden_size)
    return shapes


def check_state_dict(arch: ModelArch, state_dict: dict[str, torch.Tensor], source) -> None:
    """Names and shapes must match the arch exactly: one-line InputError naming the first mismatch."""
    want = expected_shapes(arch)
    missing = sorted(set(want) - set(state_dict))
    if missing:
        raise input_error(source, "tensor", missing[0], f"missing ({len(missing)} tensors missing in all)")
    extra = sorted(set(state_dict) - set(want))
    if extra:
        raise input_error(source, "tensor", extra[0], "not a tensor of this architecture")
    for name, shape in want.items():
        got = tuple(state_dict[name].shape)
        if got != shape:
            raise input_error(source, f"shape of {name}", got, f"expected {shape} from engine.json's arch")


def check_engine_mapping(arch: ModelArch, mapping: SIDMapping, source) -> None:
    if mapping.num_levels != arch.num_levels:
        raise input_error(source, "mapping levels", mapping.num_levels,
                          f"engine arch has {arch.num_levels} levels")
    if tuple(mapping.codebook_sizes) != tuple(arch.codebook_sizes):
        raise input_error(source, "mapping codebook_sizes", list(mapping.codebook_sizes),
                          f"engine arch has codebook_sizes {list(arch.codebook_sizes)}")


def is_engine_dir(path: Path) -> bool:
    """An engine directory written by `sidgr export` (the only kind of directory export may replace)."""
    return (path / ENGINE_JSON).is_file()


def save_engine(out_dir: str | os.PathLike, arch: ModelArch, state_dict: dict[str, torch.Tensor],
                mapping: SIDMapping, source: str = "") -> Path:
    """Validate, then write the engine directory atomically (all files appear together or not at all)."""
    out_dir = Path(out_dir)
    state_dict = {k: v.detach().to(torch.float32).contiguous() for k, v in state_dict.items()}
    check_state_dict(arch, state_dict, f"export to {out_dir}")
    check_engine_mapping(arch, mapping, f"export to {out_dir}")
    with atomic_path(out_dir, is_dir=True, replaces=is_engine_dir) as tmp:
        save_file(state_dict, str(tmp / WEIGHTS_FILE))
        meta_path = mapping.save(tmp / MAPPING_STEM)
        info = {"arch": asdict(arch), "mapping": meta_path.name, "source": source}
        (tmp / ENGINE_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out_dir


def load_engine(engine_dir: str | os.PathLike) -> EngineFiles:
    engine_dir = Path(engine_dir)
    json_path = engine_dir / ENGINE_JSON
    if not json_path.exists():
        raise input_error(engine_dir, "engine.json", str(json_path), "not an engine directory (no engine.json)")
    try:
        info = json.loads(json_path.read_text())
        arch_dict = dict(info["arch"])
        arch_dict["codebook_sizes"] = tuple(arch_dict["codebook_sizes"])
        arch = ModelArch.from_dict(arch_dict)
    except (KeyError, TypeError, ValueError) as err:
        raise input_error(json_path, "arch", str(err)[:80], "cannot read the architecture") from None
    weights_path = engine_dir / WEIGHTS_FILE
    if not weights_path.exists():
        raise input_error(engine_dir, "weights", str(weights_path), "missing")
    try:
        state_dict = load_file(str(weights_path))
    except Exception as err:  # safetensors raises its own error types on truncated/corrupt files
        raise input_error(weights_path, "weights", weights_path.name, f"unreadable safetensors ({err})") from None
    check_state_dict(arch, state_dict, weights_path)
    mapping = SIDMapping.load(engine_dir / info.get("mapping", f"{MAPPING_STEM}.json"))
    check_engine_mapping(arch, mapping, json_path)
    return EngineFiles(arch, state_dict, mapping, str(info.get("source", "")))
