#!/usr/bin/env bash
# Builds .venv-sglang for the real-SGLang-on-CPU test tier (docs/spec/SGLANG.md, "Running real SGLang on a CPU"):
# CPU torch, this project, sglang 0.5.23 without its GPU dependencies, and the LoRA pin_memory patch.
# The GPU-only modules sgl_kernel and torchvision are stubbed by tests/sglang/stubs/sitecustomize.py,
# which only this tier puts on PYTHONPATH. Nothing in server/ depends on any of this.
VENV=.venv-sglang
source "$(dirname "$0")/../tier_venv.sh"
"$VENV/bin/pip" install -q orjson pybase64 requests triton==3.9.0 msgspec pyzmq ipython dill apache-tvm-ffi==0.1.11 \
  sentencepiece==0.2.1 compressed-tensors==0.18.0 gguf uvloop openai==2.8.0 partial-json-parser setproctitle \
  einops xgrammar==0.2.7 jsonschema soundfile python-multipart prometheus-client pillow aiohttp psutil
"$VENV/bin/pip" install -q --no-deps sglang==0.5.23
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# Pinned host memory needs CUDA; on a CPU the LoRA buffers must be allocated without it.
sed -i 's/pin_memory=True/pin_memory=torch.cuda.is_available()/g' "$SITE"/sglang/srt/lora/layers.py \
  "$SITE"/sglang/srt/lora/backend/*.py
tier_venv_done
