"""Random-weight engines and synthetic catalogs, for tests and benchmarks."""
from __future__ import annotations

import torch

from sidgr.arch import ModelArch
from sidgr.sid.mapping import SIDMapping

from .weights import expected_shapes


def random_state_dict(arch: ModelArch, seed: int = 0, scale: float = 0.5) -> dict[str, torch.Tensor]:
    """Every tensor random (LayerNorm weights around 1), large enough that logits are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in expected_shapes(arch).items():
        t = torch.randn(shape, generator=g) * scale
        if "layernorm" in name and name.endswith("weight"):
            t = 1.0 + 0.1 * t
        out[name] = t
    return out


def random_mapping(num_items: int, codebook_sizes: list[int], seed: int = 0, unique: bool = True,
                   clustered: bool = True) -> SIDMapping:
    """A synthetic [H, N] mapping. clustered: level-h codes are drawn from a few per parent, so the trie is
    sparse like a real RQ tokenizer's; unique: the last level is a dedup counter within each prefix."""
    g = torch.Generator().manual_seed(seed)
    H = len(codebook_sizes)
    levels = H - 1 if unique else H
    codes = torch.zeros(H, num_items, dtype=torch.int64)
    prefix_hash = torch.zeros(num_items, dtype=torch.int64)
    for h in range(levels):
        codes[h] = torch.randint(codebook_sizes[h], (num_items,), generator=g)
        if clustered and h > 0:  # a few children per parent: code = hash(prefix) + small offset
            span = max(4, codebook_sizes[h] // 8)
            codes[h] = (prefix_hash * 7919 + torch.randint(span, (num_items,), generator=g)) % codebook_sizes[h]
        prefix_hash = (prefix_hash * 1000003 + codes[h] + 1) % 2147483647
    if unique:
        prefix = torch.zeros(num_items, dtype=torch.int64)
        for h in range(levels):
            prefix = prefix * codebook_sizes[h] + codes[h]
        order = torch.argsort(prefix, stable=True)
        sp = prefix[order]
        start = torch.ones(num_items, dtype=torch.bool)
        start[1:] = sp[1:] != sp[:-1]
        group_start = torch.cummax(torch.where(start, torch.arange(num_items), 0), 0).values
        rank = torch.arange(num_items) - group_start
        if int(rank.max()) >= codebook_sizes[-1]:
            raise ValueError("dedup level too small for this catalog")
        codes[H - 1, order] = rank
    return SIDMapping(codes, list(codebook_sizes), {"method": "random", "dedup_level": unique})
