#!/usr/bin/env bash
# Builds .venv-multioutput for the multi-output reference tier (make test-multioutput): the server beside
# FlagEmbedding 1.4.2 (installed --no-deps: it imports `datasets` at import time and a module transformers
# 5.24 removed, so transformers stays below 5.24 here), sentence-transformers' SparseEncoder, and SIE's
# qdrant integration with qdrant-client (in-memory mode, no Qdrant server). Nothing in server/ needs any of it.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=.venv-multioutput
STAMP=$VENV/.installed-multioutput
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt "$0" ]; then
  exit 0
fi
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q torch==2.13.0
"$VENV/bin/pip" install -q -e '.[test]' "transformers==5.23.0"
"$VENV/bin/pip" install -q --ignore-requires-python sie-sdk
"$VENV/bin/pip" install -q "transformers==5.23.0" datasets accelerate sentencepiece protobuf \
  sentence-transformers==6.2.0 qdrant-client
"$VENV/bin/pip" install -q --no-deps FlagEmbedding==1.4.2
"$VENV/bin/pip" install -q --ignore-requires-python --no-deps sie-qdrant==0.10.1
touch "$STAMP"
