"""sidgr.lm: a small causal language model that speaks semantic IDs (SmolLM2-135M with one token per SID code).

Imports only sidgr core and the Megatron-free engine pieces; `transformers` and `gguf` come with `sidgr[lm]`."""
