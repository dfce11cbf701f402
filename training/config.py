"""Gin-bound configuration dataclasses for the trainer (the data config lives with the loader).

Every field is read by the trainer. Gin rejects bindings of unknown parameters of a registered configurable and
of unknown configurables; `parse_config` additionally rejects bindings of configurables the trainer never builds,
so no binding can be silently ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import gin

from sidgr.arch import ModelArch, needs_item_ids
from sidgr.errors import input_error
from sidgr.gin_config import check_types, parse_gin


@gin.configurable
@dataclass
class TrainerConfig:
    run_dir: str = "runs/default"
    train_steps: int = 100  # optimizer steps; the loader restarts with a new shuffle each epoch
    log_interval: int = 10
    eval_interval: int = 50  # 0 = only at the end
    eval_max_batches: int = 0  # 0 = the whole validation set
    save_interval: int = 0  # 0 = only at the end
    # save and score a checkpoint at every evaluation, keep the best by valid Recall@10 (RUN/best.json; SID-GR is
    # scored through the engine: export + beam retrieval of the valid users + evaluate, in child processes)
    select_best: bool = False
    select_beam_width: int = 64  # SID-GR's beam width when scoring checkpoints
    early_stop_patience: int = 0  # with select_best: stop after this many evaluations without improvement
    keep_last: int = 2
    seed: int = 1234
    wandb: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "sidgr"
    progress: bool = True


@gin.configurable
@dataclass
class ModelConfig:
    hidden_size: int = 128
    num_layers: int = 4
    num_attention_heads: int = 4
    ffn_hidden_size: int = 512
    kind: Literal["sid_gr", "item"] = "sid_gr"  # 'item': the item-level baselines (SASRec-CE, SID-input)
    item_input: str = "id"  # kind='item' only: id | rqsum | prefixn | rqsum+id | prefixn+id
    # kind='item' only: 'table' scores items with an output table of N rows; 'tied' with the items' input vectors
    # (as SASRec did): with item_input='rqsum' the model then has no per-item row and scores a grown catalog
    item_head: Literal["table", "tied"] = "table"
    # kind='item' only: > 0 scores items by cosine similarity / this (L2-normalised query and item vectors, as the
    # generative-recommenders SASRec trains), 0 by dot product
    item_temperature: float = 0.0
    # shared: one head over all levels' codes, its softmax at level h restricted to level h's codes (training and
    # engine alike); per_level: one head per level
    head_mode: Literal["shared", "per_level"] = "shared"
    loss_mode: Literal["last", "all"] = "all"
    # how later tokens see a history item (sidgr/token_layout.py): its H code tokens ('codes'), or one ITEM token
    # while the predicted item is still decoded code by code; the ITEM token sums its code rows ('rqsum') or its
    # prefix rows ('prefixn'), optionally plus an item-id row ('rqsum+id', 'prefixn+id': needs unique SIDs)
    history: Literal["codes", "rqsum", "prefixn", "rqsum+id", "prefixn+id"] = "codes"
    # > 0 (ITEM-token history only): also train the BOS state to score the next item against every catalog item's
    # ITEM vector (a full softmax over items, tied to the history's item vectors; LIGER-style), with this weight in
    # the loss; the engine then ranks candidates by SID log-likelihood + this * the item-level log-probability
    dense_weight: float = 0.0
    # the engine's default ranking weight of that score (None: dense_weight); tuned on validation after training
    retrieval_dense_weight: float | None = None
    # the dense score's item side: 'tied' (the history's ITEM vectors, LIGER-style) or 'table' (an output row per
    # item, as the item-level models score; needs '+id' history)
    dense_head: Literal["tied", "table"] = "tied"
    codebook_sizes: tuple = ()  # () = take them from the SID mapping; else must match it
    dropout: float = 0.1  # embedding, attention and hidden dropout
    layernorm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    vocab_pad_multiple: int = 8  # pad code tables to a multiple of lcm(this, TP): same shapes for TP 1..8
    bf16_on_gpu: bool = True  # bf16 params + fp32 master weights on GPU; CPU always trains in fp32


@gin.configurable
@dataclass
class OptimizerConfig:
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 10
    decay_style: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.98
    adam_eps: float = 1e-8
    sgd_momentum: float = 0.0
    clip_grad: float = 1.0  # 0 disables clipping
    use_distributed_optimizer: bool = False


@gin.configurable
@dataclass
class ParallelConfig:
    tensor_parallel: int = 1
    overlap_grad_reduce: bool = False


def model_arch(model: ModelConfig, codebook_sizes, max_items: int, mapping=None) -> ModelArch:
    """The architecture record; `mapping` (a SIDMapping) sizes the item-id and prefix tables of ITEM tokens."""
    tables = {}
    if needs_item_ids(model.history):
        from sidgr.sid.prefix_index import PrefixIndex
        if mapping is None:
            raise ValueError(f"history={model.history!r} needs the SID mapping to size its tables")
        tables = {"num_items": mapping.num_items, "prefix_counts": PrefixIndex.build(mapping).prefix_counts}
    return ModelArch(codebook_sizes=tuple(codebook_sizes), hidden_size=model.hidden_size,
                     num_layers=model.num_layers, num_attention_heads=model.num_attention_heads,
                     ffn_hidden_size=model.ffn_hidden_size, max_items=max_items, head_mode=model.head_mode,
                     layernorm_epsilon=model.layernorm_epsilon, history=model.history,
                     dense_weight=model.dense_weight, retrieval_dense_weight=model.retrieval_dense_weight,
                     dense_head=model.dense_head, **tables)


def check_parallel_layout(model: ModelConfig, parallel: ParallelConfig, global_batch_size: int, nproc: int,
                          source: str) -> None:
    """What Megatron would reject inside the workers, said in one line before any process starts."""
    tp = parallel.tensor_parallel
    checks = [
        (model.hidden_size % model.num_attention_heads == 0, "ModelConfig.hidden_size", model.hidden_size,
         f"not divisible by ModelConfig.num_attention_heads={model.num_attention_heads}"),
        (tp >= 1 and nproc % tp == 0, "ParallelConfig.tensor_parallel", tp,
         f"must divide the number of processes ({nproc}: --nproc x --nnodes)"),
        (model.num_attention_heads % tp == 0, "ModelConfig.num_attention_heads", model.num_attention_heads,
         f"not divisible by ParallelConfig.tensor_parallel={tp}"),
        (model.ffn_hidden_size % tp == 0, "ModelConfig.ffn_hidden_size", model.ffn_hidden_size,
         f"not divisible by ParallelConfig.tensor_parallel={tp}"),
        (model.dense_weight >= 0, "ModelConfig.dense_weight", model.dense_weight, "must be >= 0"),
        (model.item_temperature >= 0, "ModelConfig.item_temperature", model.item_temperature, "must be >= 0"),
        (model.kind == "item" or model.dense_weight == 0 or model.history != "codes", "ModelConfig.dense_weight",
         model.dense_weight, "needs ITEM-token history (ModelConfig.history other than 'codes')"),
        (model.retrieval_dense_weight is None or (model.retrieval_dense_weight >= 0 and model.dense_weight > 0)
         or model.kind == "item", "ModelConfig.retrieval_dense_weight", model.retrieval_dense_weight,
         "must be >= 0, and needs ModelConfig.dense_weight > 0"),
        (model.kind == "item" or model.dense_head == "tied" or (model.dense_weight > 0 and "+id" in model.history),
         "ModelConfig.dense_head", model.dense_head, "'table' needs ModelConfig.dense_weight > 0 and '+id' history"),
    ]
    for ok, name, value, why in checks:
        if not ok:
            raise input_error(source, name, value, why)
    dp = nproc // tp
    if global_batch_size % dp:
        raise input_error(source, "DataConfig.global_batch_size", global_batch_size,
                          f"not divisible by the data-parallel size {dp} ({nproc} processes / TP {tp})")


BUILT_CONFIGURABLES = ("TrainerConfig", "ModelConfig", "OptimizerConfig", "ParallelConfig", "DataConfig")


def parse_config(config_file: str | None, bindings: list[str] | tuple = ()) -> None:
    """Parse a gin file plus overrides, then refuse bindings of any configurable the trainer does not build."""
    from sidgr.training import loader  # noqa: F401  registers DataConfig

    parse_gin(config_file, bindings, BUILT_CONFIGURABLES, "trainer")


def load_configs(config_file: str, overrides) -> dict:
    """Parse a gin file plus overrides -> {trainer, model, optim, parallel, data, config_str (operative gin)}."""
    from sidgr.training.loader_config import DataConfig

    if not Path(config_file).is_file():
        raise input_error(config_file, "--config", config_file, "gin file does not exist")
    parse_config(config_file, overrides)
    cfgs = dict(trainer=TrainerConfig(), model=ModelConfig(), optim=OptimizerConfig(), parallel=ParallelConfig(),
                data=DataConfig())
    for cfg in cfgs.values():
        check_types(cfg, config_file)
    cfgs["config_str"] = gin.operative_config_str()
    return cfgs
