"""Item-level sequence baselines on the SID-GR Megatron decoder: SASRec-CE and SIDs-as-input-features.

One token per item (no BOS), positions 0..S-1, plain causal attention over the valid tokens; the hidden state at
position t scores the next item t+1 with a full softmax over the catalog (a vocab-parallel `ColumnParallelLinear`
head over N items, padded to a multiple of lcm(vocab_pad_multiple, TP), padding masked).

Item input (`item_input`; the RQ-sum and prefix-N fusions of the "Enriching Recommendation Models with Semantic
IDs" study on HSTU), summed with a learned position embedding, then dropout:
  'id'         one row per item (`embedding.items`, a `VocabParallelEmbedding` over N): SASRec-CE
  'rqsum'      sum of the item's per-level code embeddings (`embedding.codes`, rows offset by level)
  'prefixn'    sum of the embeddings of its prefixes of length 1..H (`embedding.prefixes.{h}`, one table per
               prefix length, indexed by the prefix's dense node id in the catalog trie)
  'rqsum+id', 'prefixn+id'   the above plus the item-id embedding (sum fusion)
Decoder: the same `TransformerBlock` spec and `TransformerConfig` as SID-GR (training/model.py).
Item ids come from the SIDs through the catalog trie (the loader's `Batch` carries SIDs only): SIDs must be
unique (a de-duplication level), else the id embedding and the labels would be ambiguous.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core import parallel_state as ps
from megatron.core import tensor_parallel
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_block import TransformerBlock
from megatron.core.transformer.transformer_config import TransformerConfig

from sidgr.arch import ModelArch
from sidgr.errors import input_error
from sidgr.token_layout import IGNORE, pack_rows
from sidgr.sid.mapping import SIDMapping, first_duplicate_items
from sidgr.sid.prefix_index import PrefixIndex
from sidgr.training.model import (PrefixTables, in_training_precision, layer_spec, mask_padding, padded_size,
                                  transformer_config, vocab_slice_logits)

ITEM_INPUTS = ("id", "rqsum", "prefixn", "rqsum+id", "prefixn+id")
ITEM_HEADS = ("table", "tied")


# ---- the catalog as the model sees it --------------------------------------------------------------------------
@dataclass
class ItemCatalog:
    """What the item model needs from the SID mapping: codes, prefix node ids and the SID -> item lookup."""

    codes: torch.Tensor  # [H, N]
    codebook_sizes: tuple[int, ...]
    prefix_nodes: torch.Tensor  # [H, N]
    prefix_counts: tuple[int, ...]  # distinct prefixes of length 1..H
    index: PrefixIndex

    @classmethod
    def from_mapping(cls, mapping: SIDMapping) -> "ItemCatalog":
        dup = first_duplicate_items(mapping.codes)
        if dup is not None:
            raise input_error(mapping.source, f"items {dup[0]} and {dup[1]}", mapping.codes[:, dup[0]].tolist(),
                              "share a SID: item-level models need unique SIDs (add a de-duplication level)")
        index = PrefixIndex.build(mapping)
        return cls(mapping.codes, tuple(int(c) for c in mapping.codebook_sizes),
                   index.prefix_nodes(mapping.codes), index.prefix_counts, index)

    @property
    def num_items(self) -> int:
        return int(self.codes.shape[1])

    def sids_to_pids(self, sids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """sids [B, L, H] right-padded, lengths [B] -> pids [B, L] (-1 on padding)."""
        B, L, H = sids.shape
        valid = torch.arange(L).unsqueeze(0) < lengths.cpu().unsqueeze(1)
        pids = torch.full((B, L), -1, dtype=torch.int64)
        flat = sids.cpu().reshape(B * L, H)[valid.reshape(-1)]
        leaves = self.index.lookup(flat)
        if bool((leaves < 0).any()):
            raise ValueError("a batch SID is not in the catalog")
        pids[valid] = self.index.leaf_first_item(leaves)
        return pids


def item_arch(arch: ModelArch, catalog: ItemCatalog, item_input: str, item_head: str = "table",
              temperature: float = 0.0) -> ModelArch:
    """The SID-GR arch record plus what identifies the item model (stored in arch.json's `extra`)."""
    from dataclasses import replace

    if item_input not in ITEM_INPUTS:
        raise ValueError(f"item_input={item_input!r}: expected one of {ITEM_INPUTS}")
    if item_head not in ITEM_HEADS:
        raise ValueError(f"item_head={item_head!r}: expected one of {ITEM_HEADS}")
    # ModelConfig.history and dense_weight are SID-GR's: an item model's input is item_input, its output a full
    # softmax (configs may share one ModelConfig)
    return replace(arch, history="codes", num_items=0, prefix_counts=(), dense_weight=0.0, dense_head="tied",
                   retrieval_dense_weight=None,
                   extra={"kind": "item", "item_input": item_input, "item_head": item_head, "temperature": temperature,
                          "num_items": catalog.num_items, "prefix_counts": list(catalog.prefix_counts)})


def scores_grown_catalog(arch: ModelArch) -> bool:
    """Whether the model has no per-item parameter (code-sum input, tied head): it can score items added to the
    catalog after training (`sidgr tokenize --extend`) from their codes."""
    return arch.extra.get("item_input") == "rqsum" and arch.extra.get("item_head", "table") == "tied"


# ---- layouts -------------------------------------------------------------------------------------------------
@dataclass
class ItemBatch:
    pids: torch.Tensor  # [B, S] input items (0 on padding)
    valid: torch.Tensor  # [B, S]
    positions: torch.Tensor  # [B, S]
    labels: torch.Tensor  # [B, S] next item, or IGNORE
    attention_mask: torch.Tensor  # [B, 1, S, S] bool, True = masked (Megatron convention)
    query: torch.Tensor  # [B] position of each row's last valid input token (-1 for empty rows)

    @property
    def loss_mask(self) -> torch.Tensor:
        return self.labels != IGNORE

    def model_inputs(self) -> tuple[torch.Tensor, ...]:
        return self.pids, self.positions, self.attention_mask

    def to(self, device) -> "ItemBatch":
        return ItemBatch(*(getattr(self, f).to(device) for f in ItemBatch.__dataclass_fields__))


def packed_items(ib: ItemBatch) -> ItemBatch:
    """A training batch's rows packed (`token_layout.pack_rows`): the same per-token losses, less padding
    computed. `query` is dropped (-1): a packed row is no longer one user, so it cannot be scored."""
    mask, f = pack_rows(ib.valid, ib.attention_mask, {"pids": (ib.pids, 0), "valid": (ib.valid, False),
                                                      "positions": (ib.positions, 0), "labels": (ib.labels, IGNORE)})
    return ItemBatch(f["pids"], f["valid"], f["positions"], f["labels"], mask,
                     torch.full((mask.shape[0],), -1, dtype=torch.int64))


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """valid [B, S] -> [B, 1, S, S] True where masked: future tokens and padding; the diagonal always visible."""
    S = valid.shape[1]
    future = torch.ones(S, S, dtype=torch.bool).triu(1)
    masked = future.unsqueeze(0) | ~valid.unsqueeze(1)
    masked &= ~torch.eye(S, dtype=torch.bool).unsqueeze(0)
    return masked.unsqueeze(1)


def _layout(pids: torch.Tensor, n_in: torch.Tensor, labels_from: torch.Tensor | None, loss_mode: str,
            targets: int = 0) -> ItemBatch:
    B = pids.shape[0]
    S = max(int(n_in.max()) if B else 0, 1)
    pos = torch.arange(S).unsqueeze(0).expand(B, S)
    valid = pos < n_in.unsqueeze(1)
    inputs = torch.where(valid, pids[:, :S].clamp(min=0), torch.zeros((), dtype=torch.int64))
    labels = torch.full((B, S), IGNORE, dtype=torch.int64)
    if labels_from is not None:
        nxt = labels_from[:, 1:S + 1]
        if nxt.shape[1] < S:
            nxt = torch.cat([nxt, torch.full((B, S - nxt.shape[1]), IGNORE, dtype=torch.int64)], 1)
        keep = valid if loss_mode == "all" else pos == (n_in - 1).unsqueeze(1)
        if targets:  # the label at t is item t+1: the last `targets` items are labels from t = n_in - targets on
            keep = keep & (pos >= (n_in - targets).unsqueeze(1))
        labels = torch.where(keep, nxt, labels)
    return ItemBatch(inputs, valid, pos.contiguous(), labels, causal_mask(valid), n_in - 1)


def next_item_layout(pids: torch.Tensor, lengths: torch.Tensor, loss_mode: str = "all",
                     targets: int = 0) -> ItemBatch:
    """Training / validation: inputs are items 0..len-2, the label at t is item t+1 ('all': every t; 'last':
    only the last, i.e. the final item — the validation target when the loader appended it; targets > 0: only
    the last `targets` items)."""
    if loss_mode not in ("all", "last"):
        raise ValueError(f"loss_mode={loss_mode!r}: expected 'all' or 'last'")
    n_in = (lengths.cpu() - 1).clamp(min=0)
    return _layout(pids, n_in, pids, loss_mode, targets)


def history_layout(pids: torch.Tensor, lengths: torch.Tensor) -> ItemBatch:
    """Scoring: all `lengths` items are inputs; the last one's hidden state scores the next item."""
    return _layout(pids, lengths.cpu().clamp(min=0), None, "all")


# ---- the model -----------------------------------------------------------------------------------------------
class ItemEmbedding(MegatronModule):
    def __init__(self, config: TransformerConfig, arch: ModelArch, catalog: ItemCatalog, item_input: str,
                 pad_multiple: int):
        super().__init__(config)
        tp, hidden = config.tensor_model_parallel_size, arch.hidden_size
        parts = item_input.split("+")
        self.parts = parts

        def table(n):
            return tensor_parallel.VocabParallelEmbedding(
                num_embeddings=padded_size(n, pad_multiple, tp), embedding_dim=hidden,
                init_method=config.init_method, config=config)

        if "id" in parts:
            self.items = table(catalog.num_items)
        if "rqsum" in parts:
            self.codes = table(arch.vocab_size)
            offsets = torch.tensor(arch.level_offsets, dtype=torch.int64).unsqueeze(1)
            self.register_buffer("item_codes", (catalog.codes + offsets).t().contiguous(), persistent=False)
        if "prefixn" in parts:
            self.prefixes = PrefixTables(
                config, [padded_size(n, pad_multiple, tp) for n in catalog.prefix_counts], hidden)
            self.register_buffer("item_prefixes", catalog.prefix_nodes.t().contiguous(), persistent=False)
        self.positions = torch.nn.Embedding(arch.max_items, hidden, dtype=config.params_dtype)
        with torch.no_grad():
            config.init_method(self.positions.weight)
        self.dropout = torch.nn.Dropout(config.hidden_dropout)

    def item_vectors(self, pids: torch.Tensor) -> torch.Tensor:
        """pids [...] -> the fused item input [..., hidden] (before positions)."""
        x = 0
        if "id" in self.parts:
            x = x + self.items(pids)
        if "rqsum" in self.parts:
            x = x + self.codes(self.item_codes[pids]).sum(-2)
        if "prefixn" in self.parts:
            x = x + self.prefixes(self.item_prefixes[pids])
        return x

    def forward(self, pids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """[B, S] -> [S, B, hidden] (Megatron's sequence-first layout)."""
        x = self.item_vectors(pids) + self.positions(positions)
        return self.dropout(x.transpose(0, 1).contiguous())


class ItemSeqModel(MegatronModule):
    """`embedding`, `decoder` (Megatron TransformerBlock, final LayerNorm) and the output: `head` (vocab-parallel,
    N items) or, tied, the items' input vectors (`item_head`); dot products, or with `temperature` > 0 cosine
    similarities / temperature."""

    def __init__(self, config: TransformerConfig, arch: ModelArch, catalog: ItemCatalog, item_input: str,
                 vocab_pad_multiple: int = 8, item_head: str = "table", temperature: float = 0.0):
        super().__init__(config)
        if item_input not in ITEM_INPUTS:
            raise ValueError(f"item_input={item_input!r}: expected one of {ITEM_INPUTS}")
        self.arch, self.item_input, self.num_items = arch, item_input, catalog.num_items
        self.tied = item_head == "tied"
        self.temperature = float(temperature)
        tp = config.tensor_model_parallel_size
        self.embedding = ItemEmbedding(config, arch, catalog, item_input, vocab_pad_multiple)
        self.decoder = TransformerBlock(config, layer_spec(), post_layer_norm=True)
        if not self.tied:
            self.head = tensor_parallel.ColumnParallelLinear(
                arch.hidden_size, padded_size(catalog.num_items, vocab_pad_multiple, tp), config=config,
                init_method=config.init_method, bias=False, gather_output=False, skip_bias_add=True)

    def set_input_tensor(self, input_tensor):
        self.decoder.set_input_tensor(input_tensor)

    def forward(self, pids, positions, attention_mask) -> torch.Tensor:
        """Final hidden states [S, B, hidden]."""
        return self.decoder(hidden_states=self.embedding(pids, positions), attention_mask=attention_mask)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [n, hidden] -> this rank's slice of the item logits [n, N_padded / TP] in fp32, padding masked;
        tied: the whole catalog's [n, N], the same on every TP rank (the input vectors are all-reduced over the
        vocab-parallel tables)."""
        if self.tied:
            items = torch.arange(self.num_items, device=hidden.device)
            return self.query(hidden) @ self.unit(self.embedding.item_vectors(items).float()).t()
        if not self.temperature:
            return vocab_slice_logits(self.head, hidden, self.num_items)
        # what ColumnParallelLinear does with its input: identity forward, gradient all-reduced over TP ranks
        query = tensor_parallel.copy_to_tensor_model_parallel_region(self.query(hidden))
        return mask_padding(query @ self.unit(self.head.weight.float()).t(), self.num_items)

    def unit(self, vectors: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(vectors, dim=-1) if self.temperature else vectors

    def query(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 query vectors: the hidden states, or (cosine scoring) unit vectors / temperature."""
        return self.unit(hidden.float()) / self.temperature if self.temperature else hidden.float()

    def full_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[n, hidden] -> [n, N] logits over the whole catalog (gathered over TP; for scoring, no gradient)."""
        local = self.item_logits(hidden)
        if self.tied:
            return local
        if ps.get_tensor_model_parallel_world_size() > 1:
            local = tensor_parallel.gather_from_tensor_model_parallel_region(local.contiguous())
        return local[:, :self.num_items]


def build_item_model(model_cfg, arch: ModelArch, catalog: ItemCatalog, tp: int, device: torch.device) -> ItemSeqModel:
    """The item model `arch.extra` describes (item_input, item_head) over `catalog`."""
    config = transformer_config(model_cfg, arch, tp)
    model = ItemSeqModel(config, arch, catalog, arch.extra["item_input"], model_cfg.vocab_pad_multiple,
                         arch.extra.get("item_head", "table"), arch.extra.get("temperature", 0.0))
    return in_training_precision(model, config).to(device)


def item_token_losses(model: ItemSeqModel, hidden: torch.Tensor, ib: ItemBatch):
    """hidden [S, B, hidden] -> the trainer's TokenLosses (per-label fp32 vocab-parallel CE, row-major order)."""
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    from sidgr.training.loss import TokenLosses

    rows, cols = ib.loss_mask.nonzero(as_tuple=True)
    logits, labels = model.item_logits(hidden[cols, rows]), ib.labels[rows, cols]
    if model.tied:  # whole-catalog logits on every rank
        losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    else:
        losses = vocab_parallel_cross_entropy(logits, labels)
    return TokenLosses(losses, torch.zeros_like(rows), rows, cols)
