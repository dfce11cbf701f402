"""RQ-VAE: encoder MLP -> residual quantizer (L levels of K codes) -> decoder MLP, trained on CPU.

Codebooks start from k-means on the first batch's residuals; codes unused for `dead_code_steps` steps are
re-seeded from current residuals; the gradient crosses the quantizer by straight-through or the rotation trick
(Fifty et al., 2024). Loss = reconstruction MSE + sum over levels of codebook MSE + beta * commitment MSE.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import gin
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from sidgr.logs import progress_bar

from sidgr.errors import input_error
from sidgr.tokenize.kmeans import fit_kmeans, nearest
from sidgr.tokenize.quantized import Quantized
from sidgr.tokenize.rqkmeans import level_seed


@gin.configurable
@dataclass
class RQVAEConfig:
    codebook_sizes: list[int] = field(default_factory=lambda: [32, 32, 32])
    seed: int = 0
    hidden_dims: list[int] = field(default_factory=lambda: [256, 128])
    latent_dim: int = 32
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    beta: float = 0.25  # commitment weight
    gradient: str = "ste"  # "ste" (straight-through) or "rotation" (rotation trick)
    dead_code_steps: int = 100  # re-seed a code unused for this many steps; 0 disables
    # small MLPs train fastest on one thread, and a busy machine makes multi-threaded steps stall
    num_threads: int = 1  # 0 keeps torch's setting


def mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def rotate_onto(z: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Rotation trick: equals q in the forward pass; the backward pass sends z's gradient through the (detached)
    rotation+scaling that maps z onto q, instead of copying it as straight-through does."""
    zn = z.norm(dim=1, keepdim=True).clamp_min(eps)
    qn = q.norm(dim=1, keepdim=True).clamp_min(eps)
    u, v = (z / zn).detach(), (q / qn).detach()
    w = F.normalize(u + v, dim=1, eps=eps).detach()
    rotated = z - 2 * (z * w).sum(1, keepdim=True) * w + 2 * (z * u).sum(1, keepdim=True) * v
    return rotated * (qn / zn).detach()


class RQVAE(nn.Module):
    def __init__(self, in_dim: int, cfg: RQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = mlp([in_dim, *cfg.hidden_dims, cfg.latent_dim])
        self.decoder = mlp([cfg.latent_dim, *reversed(cfg.hidden_dims), in_dim])
        self.codebooks = nn.ParameterList(nn.Parameter(torch.zeros(k, cfg.latent_dim)) for k in cfg.codebook_sizes)

    def quantize(self, z: torch.Tensor):
        """-> codes [L, B], per-level residuals, per-level codewords."""
        residual, codes, residuals, words = z, [], [], []
        for book in self.codebooks:
            dist = (residual.detach() ** 2).sum(1, keepdim=True) - 2 * residual.detach() @ book.t() + (book ** 2).sum(1)
            idx = dist.argmin(dim=1)
            word = book[idx]
            codes.append(idx)
            residuals.append(residual)
            words.append(word)
            residual = residual - word.detach()
        return torch.stack(codes), residuals, words

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        codes, residuals, words = self.quantize(z)
        zq = torch.stack(words).sum(0)
        z_hat = rotate_onto(z, zq) if self.cfg.gradient == "rotation" else z + (zq - z).detach()
        recon = self.decoder(z_hat)
        quant_loss = sum(F.mse_loss(w, r.detach()) + self.cfg.beta * F.mse_loss(r, w.detach())
                         for r, w in zip(residuals, words))
        return recon, codes, residuals, F.mse_loss(recon, x) + quant_loss

    @torch.no_grad()
    def init_codebooks(self, x: torch.Tensor, seed: int) -> None:
        residual = self.encoder(x).numpy()
        for level, book in enumerate(self.codebooks):
            centroids = fit_kmeans(residual, book.shape[0], level_seed(seed, level))
            book.copy_(torch.from_numpy(centroids))
            residual = residual - centroids[nearest(residual, centroids)[1][:, 0]]


@contextlib.contextmanager
def deterministic(seed: int, num_threads: int = 0):
    previous, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if num_threads:
        torch.set_num_threads(num_threads)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(previous)
            torch.set_num_threads(threads)


def reset_dead_codes(model: RQVAE, residuals: list[torch.Tensor], last_used: list[torch.Tensor], step: int,
                     gen: torch.Generator) -> int:
    reset = 0
    with torch.no_grad():
        for book, res, used in zip(model.codebooks, residuals, last_used):
            dead = torch.nonzero(step - used > model.cfg.dead_code_steps).flatten()
            if len(dead):
                pick = torch.randint(0, res.shape[0], (len(dead),), generator=gen)
                book[dead] = res.detach()[pick]
                used[dead] = step
                reset += len(dead)
    return reset


def train_rqvae(x: torch.Tensor, cfg: RQVAEConfig, progress: bool = True) -> RQVAE:
    n = x.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)
    model = RQVAE(x.shape[1], cfg)
    batch = min(n, max(cfg.batch_size, max(cfg.codebook_sizes)))
    order = torch.randperm(n, generator=gen)
    model.init_codebooks(x[order[:batch]], cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    last_used = [torch.zeros(k, dtype=torch.int64) for k in cfg.codebook_sizes]
    cursor, resets = batch, 0
    bar = progress_bar(range(cfg.steps), desc="rq-vae training", disable=not progress)
    for step in bar:
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        xb = x[order[cursor:cursor + batch]]
        cursor += batch
        _, codes, residuals, loss = model(xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        for used, c in zip(last_used, codes):
            used[c.unique()] = step
        if cfg.dead_code_steps:
            resets += reset_dead_codes(model, residuals, last_used, step, gen)
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}", resets=resets, refresh=False)
    return model


def rq_vae(x: np.ndarray, cfg: RQVAEConfig, progress: bool = True) -> Quantized:
    if cfg.gradient not in ("ste", "rotation"):
        raise input_error("rqvae", "gradient", cfg.gradient, "expected 'ste' or 'rotation'")
    if max(cfg.codebook_sizes) > x.shape[0]:
        raise input_error("codebook_sizes", "K", max(cfg.codebook_sizes), f"larger than the number of items ({x.shape[0]})")
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    mean, scale = xt.mean(0), xt.std().clamp_min(1e-12)  # one scalar scale keeps the geometry
    xn = (xt - mean) / scale
    with deterministic(cfg.seed, cfg.num_threads):
        model = train_rqvae(xn, cfg, progress)
        model.eval()
        with torch.no_grad():
            codes = torch.cat([model.quantize(model.encoder(chunk))[0] for chunk in xn.split(65536)], dim=1)

    def decode(latent: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = torch.cat([model.decoder(c) for c in torch.from_numpy(latent).split(65536)])
        return (out * scale + mean).numpy()

    books = [b.detach().numpy().copy() for b in model.codebooks]
    return Quantized(codes.numpy().astype(np.int64), books, decode, dict(dataclasses.asdict(cfg), method="rqvae"))
