"""What every quantizer returns: codes per level plus what is needed to reconstruct from them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class Quantized:
    codes: np.ndarray  # [L, N] int64, level-major
    codebooks: list[np.ndarray]  # L arrays [K_l, D_latent]; level l's codeword for item p is codebooks[l][codes[l, p]]
    # latent [N, D_latent] -> embedding space [N, D]; None means the latent space is the embedding space
    decode: Callable[[np.ndarray], np.ndarray] | None = None
    config: dict = field(default_factory=dict)

    @property
    def codebook_sizes(self) -> list[int]:
        return [int(cb.shape[0]) for cb in self.codebooks]

    def cumulative_reconstructions(self):
        """Yield, for h = 1..L, the reconstruction from levels 0..h-1 in embedding space."""
        latent = np.zeros((self.codes.shape[1], self.codebooks[0].shape[1]), dtype=np.float32)
        for level, book in enumerate(self.codebooks):
            latent += book[self.codes[level]]
            yield latent.copy() if self.decode is None else self.decode(latent)
