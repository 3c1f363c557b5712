#!/usr/bin/env bash
# Builds .venv-multioutput for the multi-output reference tier (make test-multioutput): the server beside
# FlagEmbedding 1.4.2 (installed --no-deps: it imports `datasets` at import time and a module transformers
# 5.24 removed, so transformers stays below 5.24 here), sentence-transformers' SparseEncoder, and SIE's
# qdrant integration with qdrant-client (in-memory mode, no Qdrant server) and its LangChain sparse encoder. Nothing in server/ needs any of it.
VENV=.venv-multioutput
TIER_PINS="transformers==5.23.0"
source "$(dirname "$0")/../tier_venv.sh"
"$VENV/bin/pip" install -q "transformers==5.23.0" datasets accelerate sentencepiece protobuf \
  sentence-transformers==6.2.0 qdrant-client
"$VENV/bin/pip" install -q --no-deps FlagEmbedding==1.4.2
"$VENV/bin/pip" install -q --ignore-requires-python --no-deps sie-qdrant==0.10.1 sie-langchain==0.10.1
tier_venv_done
