"""The decoder in plain torch, with the same math and parameter names as the Megatron-Core model.

Megatron local-spec layer: x + proj(attn(LN(x))) then x + fc2(gelu(fc1(LN(x)))); final LayerNorm; heads.
`linear_qkv` uses Megatron's grouped layout: with one query group per head (plain multi-head attention), the
rows of head i are [q_i, k_i, v_i] (hd rows each). Scores are scaled by 1/sqrt(hd) and masked positions are
filled with -10000 before the softmax, as Megatron's `attention_mask_func` does.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sidgr.arch import ModelArch
from sidgr.token_layout import TokenBatch

from .kv_cache import BeamCache, HistoryCache

MASK_FILL = -10000.0


class Embeddings(nn.Module):
    """Code rows, the BOS vector, positions; ITEM tokens sum their parts (see training/model.py SIDEmbedding)."""

    def __init__(self, arch: ModelArch, prefix_nodes: torch.Tensor | None = None):
        super().__init__()
        self.parts = arch.item_parts
        self.codes = nn.Embedding(arch.vocab_size, arch.hidden_size)
        if "id" in self.parts:
            self.items = nn.Embedding(arch.num_items, arch.hidden_size)
        if "prefixn" in self.parts:
            if prefix_nodes is None:
                raise ValueError("history 'prefixn' needs the catalog's prefix node ids")
            self.prefixes = nn.ModuleList(nn.Embedding(n, arch.hidden_size) for n in arch.prefix_counts)
            self.register_buffer("item_prefixes", prefix_nodes.t().contiguous(), persistent=False)
        if arch.dense_head == "table":
            self.dense_items = nn.Embedding(arch.num_items, arch.hidden_size)
        self.bos = nn.Parameter(torch.zeros(arch.hidden_size))
        self.positions = nn.Embedding(arch.max_positions, arch.hidden_size)

    def item_vectors(self, item_codes: torch.Tensor, item_pids: torch.Tensor) -> torch.Tensor:
        x = 0
        if "rqsum" in self.parts:
            x = x + self.codes(item_codes).sum(-2)
        if "prefixn" in self.parts:
            nodes = self.item_prefixes[item_pids]
            x = x + sum(table(nodes[..., h]) for h, table in enumerate(self.prefixes))
        if "id" in self.parts:
            x = x + self.items(item_pids)
        return x

    def forward(self, tokens: torch.Tensor, is_bos: torch.Tensor | None, positions: torch.Tensor,
                is_item: torch.Tensor | None = None, item_codes: torch.Tensor | None = None,
                item_pids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.codes(tokens)
        if is_item is not None and self.parts:
            x = torch.where(is_item.unsqueeze(-1), self.item_vectors(item_codes, item_pids), x)
        if is_bos is not None:
            x = torch.where(is_bos.unsqueeze(-1), self.bos.expand_as(x), x)
        return x + self.positions(positions)


class SelfAttention(nn.Module):
    def __init__(self, arch: ModelArch):
        super().__init__()
        h = arch.hidden_size
        self.num_heads = arch.num_attention_heads
        self.head_dim = h // arch.num_attention_heads
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.linear_qkv = nn.Linear(h, 3 * h)
        self.linear_proj = nn.Linear(h, h)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [..., h] -> q, k, v each [..., nh, hd]."""
        y = self.linear_qkv(x).unflatten(-1, (self.num_heads, 3 * self.head_dim))
        return y.split(self.head_dim, dim=-1)

    def full(self, x: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, S, h], masked [B, 1, S, S] (True = masked) -> (out [B, S, h], k, v [B, nh, S, hd])."""
        q, k, v = (t.transpose(1, 2) for t in self.qkv(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        probs = scores.masked_fill(masked, MASK_FILL).softmax(-1)
        out = torch.matmul(probs, v).transpose(1, 2).flatten(2)
        return self.linear_proj(out), k, v

    def cached(self, q: torch.Tensor, hist_k: torch.Tensor, hist_v: torch.Tensor, hist_masked: torch.Tensor,
               anc_k: torch.Tensor, anc_v: torch.Tensor) -> torch.Tensor:
        """New tokens' queries q [B, W, nh, hd] attending their user's history (k/v [B, nh, S, hd], shared by
        all beams; hist_masked [B, 1, 1, S] True = masked) and their own ancestors incl. themselves
        (anc_k/v [B, W, t, nh, hd]) -> [B, W, h]. One softmax over both key sets, computed in two parts so the
        [B, nh, W, S] history scores are never copied (no concatenation)."""
        s_hist = torch.matmul(q.transpose(1, 2), hist_k.transpose(-1, -2)).mul_(self.scale)  # [B, nh, W, S]
        s_hist.masked_fill_(hist_masked, MASK_FILL)
        s_anc = (q.unsqueeze(2) * anc_k).sum(-1).mul_(self.scale)  # [B, W, t, nh]
        peak = torch.maximum(s_hist.amax(-1), s_anc.amax(2).transpose(1, 2))  # [B, nh, W]
        p_hist = s_hist.sub_(peak.unsqueeze(-1)).exp_()
        p_anc = s_anc.sub_(peak.transpose(1, 2).unsqueeze(2)).exp_()
        denom = p_hist.sum(-1).transpose(1, 2) + p_anc.sum(2)  # [B, W, nh]
        out = torch.matmul(p_hist, hist_v).transpose(1, 2)  # [B, W, nh, hd]
        out = out + (p_anc.unsqueeze(-1) * anc_v).sum(2)
        return self.linear_proj((out / denom.unsqueeze(-1)).flatten(2))


class MLP(nn.Module):
    def __init__(self, arch: ModelArch):
        super().__init__()
        self.linear_fc1 = nn.Linear(arch.hidden_size, arch.ffn_hidden_size)
        self.linear_fc2 = nn.Linear(arch.ffn_hidden_size, arch.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x)))


class Layer(nn.Module):
    def __init__(self, arch: ModelArch):
        super().__init__()
        eps = arch.layernorm_epsilon
        self.input_layernorm = nn.LayerNorm(arch.hidden_size, eps=eps)
        self.self_attention = SelfAttention(arch)
        self.pre_mlp_layernorm = nn.LayerNorm(arch.hidden_size, eps=eps)
        self.mlp = MLP(arch)

    def mlp_block(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.pre_mlp_layernorm(x))


class Decoder(nn.Module):
    def __init__(self, arch: ModelArch):
        super().__init__()
        self.layers = nn.ModuleList(Layer(arch) for _ in range(arch.num_layers))
        self.final_layernorm = nn.LayerNorm(arch.hidden_size, eps=arch.layernorm_epsilon)


class EngineModel(nn.Module):
    """The SID-GR decoder in plain torch with a KV cache: prefill a batch of histories once, then decode one level
    per step for many beams; the same logits as the Megatron model (tests/test_engine_megatron.py)."""

    def __init__(self, arch: ModelArch, prefix_nodes: torch.Tensor | None = None):
        super().__init__()
        self.arch = arch
        self.embedding = Embeddings(arch, prefix_nodes)
        self.decoder = Decoder(arch)
        sizes = [arch.vocab_size] if arch.head_mode == "shared" else list(arch.codebook_sizes)
        self.heads = nn.ModuleList(nn.Linear(arch.hidden_size, c, bias=False) for c in sizes)

    @classmethod
    def from_state_dict(cls, arch: ModelArch, state_dict: dict[str, torch.Tensor],
                        prefix_nodes: torch.Tensor | None = None) -> "EngineModel":
        """prefix_nodes [H, N] (`PrefixIndex.prefix_nodes` of the catalog): needed by history 'prefixn'."""
        model = cls(arch, prefix_nodes)
        model.load_state_dict(state_dict, strict=True)
        return model.eval().requires_grad_(False)

    # ---- heads ---------------------------------------------------------------------------------
    def level_head(self, level: int) -> torch.Tensor:
        """Weight [C_level, h] scoring the level's codes (the level's slice of the shared head)."""
        if self.arch.head_mode == "shared":
            off = self.arch.level_offsets[level]
            return self.heads[0].weight[off:off + self.arch.codebook_sizes[level]]
        return self.heads[level].weight

    def level_logits(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        return torch.matmul(hidden, self.level_head(level).t())

    def level_log_probs(self, hidden: torch.Tensor, level: int) -> torch.Tensor:
        return self.level_logits(hidden, level).log_softmax(-1)

    # ---- no-cache forward ----------------------------------------------------------------------
    def forward(self, batch: TokenBatch) -> torch.Tensor:
        """Full forward over a token batch -> final hidden states [B, S, h]."""
        return self._encode(batch)[0]

    def _encode(self, batch: TokenBatch):
        x = self.embedding(batch.tokens, batch.is_bos, batch.positions, batch.is_item, batch.item_codes,
                           batch.item_pids)
        keys, values = [], []
        for layer in self.decoder.layers:
            a, k, v = layer.self_attention.full(layer.input_layernorm(x), batch.attention_mask)
            x = layer.mlp_block(x + a)
            keys.append(k)
            values.append(v)
        return self.decoder.final_layernorm(x), keys, values

    # ---- KV-cache decode -----------------------------------------------------------------------
    def prefill(self, batch: TokenBatch, lengths: torch.Tensor) -> tuple[torch.Tensor, HistoryCache]:
        """Encode the prefill layout [history(0) … history(n-1), BOS] once.
        Returns the BOS's hidden state [B, h] (it predicts level 0) and the history cache."""
        hidden, keys, values = self._encode(batch)
        last = batch.valid.sum(1) - 1
        return hidden[torch.arange(hidden.shape[0]), last], HistoryCache(keys, values, batch.history, lengths)

    def decode_step(self, tokens: torch.Tensor, positions: torch.Tensor, history: HistoryCache,
                    beams: BeamCache) -> tuple[torch.Tensor, BeamCache]:
        """Run only the new beam tokens [B, W] (global code ids) at positions [B] or [B, W].
        Returns their final hidden states [B, W, h] and the beam cache with them appended."""
        if positions.dim() == 1:
            positions = positions.unsqueeze(1).expand_as(tokens)
        x = self.embedding(tokens, None, positions)
        new_keys, new_values = [], []
        for i, layer in enumerate(self.decoder.layers):
            attn = layer.self_attention
            q, k, v = attn.qkv(layer.input_layernorm(x))
            anc_k, anc_v = beams.appended(i, k, v)
            a = attn.cached(q, history.keys[i], history.values[i], history.masked, anc_k, anc_v)
            x = layer.mlp_block(x + a)
            new_keys.append(anc_k)
            new_values.append(anc_v)
        return self.decoder.final_layernorm(x), BeamCache(new_keys, new_values)
