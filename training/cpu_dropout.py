"""Dropout for CPU training: torch's semantics, with the keep-mask drawn about four times faster.

torch's CPU dropout draws one random number per element, single-threaded; on the attention probabilities
[B, heads, S, S] of a SID-GR step that was a quarter of the step time (py-spy on the Beauty demo's training,
session 16). Here one draw from torch's default CPU generator seeds numpy's PCG64, which fills the mask with 16-bit
uniforms in bulk. Because the seed comes from torch's generator, `torch.manual_seed`, Megatron's RNG-tracker forks
(`CpuRNGStatesTracker`) and the RNG states a checkpoint saves govern it exactly as they govern torch's dropout.
The drop probability is rounded to a multiple of 1/65536 and kept values are scaled by 1 / (1 - that p), so the
output is unbiased. Small tensors, and p that rounds to 0 or 1, take torch's own kernel.
"""
from __future__ import annotations

import numpy as np
import torch

LEVELS = 1 << 16
MIN_ELEMENTS = 1 << 14


def rounded_drop_count(p: float) -> int:
    """Of LEVELS equally likely 16-bit values, how many drop an element."""
    return round(p * LEVELS)


def dropout(x: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False) -> torch.Tensor:
    """`torch.nn.functional.dropout` with the mask from bulk 16-bit uniforms (see the module doc)."""
    if not training or p == 0:
        return x
    drop = rounded_drop_count(p)
    if x.device.type != "cpu" or x.numel() < MIN_ELEMENTS or not 0 < drop < LEVELS:
        return torch.nn.functional.dropout(x, p, training, inplace)
    seed = int(torch.randint(0, 1 << 62, (1,)).item())
    uniforms = np.random.Generator(np.random.PCG64(seed)).integers(0, LEVELS, size=x.numel(), dtype=np.uint16)
    keep = torch.from_numpy(uniforms >= drop).view(x.shape)
    scaled_mask = keep.to(x.dtype).mul_(LEVELS / (LEVELS - drop))
    return x.mul_(scaled_mask) if inplace else x * scaled_mask
