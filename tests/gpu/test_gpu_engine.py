"""The torch backend on CUDA (`make test-gpu`; skipped without a GPU): bf16 mixed batches against an fp32
PEFT reference (ours no further from fp32 than PEFT in bf16 is, plus 1e-4), batch invariance, the
compiled and graph-replayed forwards against the eager one, adapters installed and evicted in place
while graphs exist (a replayed graph serves the weights installed after its capture), and the Triton LoRA
kernels against the gathered bmm control (bf16) and PEFT (fp32, 1e-5)."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
import torch

from server.backends.static_forward import EngineChoice
from server.lora.peft_format import load_peft_adapter
from tests.conftest import loaded_model, peft_demo_model, peft_last_token, token_batch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
ADAPTERS = [None, "legal", "medical", "finance"]
TEXTS = ["What is the statute of limitations for breach of contract?", "hello",
         "Aspirin reduces the risk of myocardial infarction in patients with high blood pressure, and more."]


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def gpu_model(demo_config, demo_dirs):
    model = loaded_model(dataclasses.replace(demo_config, dtype="bfloat16"), device="cuda")
    yield model
    asyncio.run(model.backend.close())


def peft_vectors(demo_dirs, rows, names, dtype):
    model = peft_demo_model(demo_dirs, dtype, "cuda")
    return np.stack([peft_last_token(model, ids, name) for ids, name in zip(rows, names)])


def test_bf16_mixed_batch_is_as_close_to_fp32_as_peft_bf16(gpu_model, demo_dirs):
    rows = gpu_model.tokenizer.tokenize(TEXTS * len(ADAPTERS)).input_ids
    names = [a for a in ADAPTERS for _ in TEXTS]
    ours = unit(gpu_model.backend.embed_sync(token_batch(gpu_model, rows, names)))
    exact = unit(peft_vectors(demo_dirs, rows, names, torch.float32))
    peft_bf16 = unit(peft_vectors(demo_dirs, rows, names, torch.bfloat16))
    ours_error = 1 - (ours * exact).sum(1)
    peft_error = 1 - (peft_bf16 * exact).sum(1)
    assert (ours_error <= peft_error + 1e-4).all(), (ours_error, peft_error)


def test_row_alone_equals_row_in_mixed_batch(gpu_model):
    rows = gpu_model.tokenizer.tokenize(TEXTS * len(ADAPTERS)).input_ids
    names = [a for a in ADAPTERS for _ in TEXTS]
    batch = unit(gpu_model.backend.embed_sync(token_batch(gpu_model, rows, names)))
    for index, (row, name) in enumerate(zip(rows, names)):
        alone = unit(gpu_model.backend.embed_sync(token_batch(gpu_model, [row], [name])))[0]
        assert (alone * batch[index]).sum() >= 0.9999


def test_install_and_evict_in_place_while_serving(gpu_model):
    backend = gpu_model.backend
    layer = next(iter(backend._layers.values()))
    address = (layer.a.data_ptr(), layer.bt.data_ptr())
    rows = gpu_model.tokenizer.tokenize(TEXTS).input_ids
    before = backend.embed_sync(token_batch(gpu_model, rows, ["legal"] * len(rows)))
    asyncio.run(gpu_model.adapters.unload("legal", force=True))
    asyncio.run(gpu_model.adapters.load("legal"))
    after = backend.embed_sync(token_batch(gpu_model, rows, ["legal"] * len(rows)))
    assert (layer.a.data_ptr(), layer.bt.data_ptr()) == address
    assert np.abs(unit(before) - unit(after)).max() <= 1e-3


@pytest.fixture(scope="module")
def eager_model(demo_config, demo_dirs):
    model = loaded_model(dataclasses.replace(demo_config, dtype="bfloat16", compile="off", cuda_graphs="off"),
                         device="cuda")
    yield model
    asyncio.run(model.backend.close())


def cosines(a, b):
    return (unit(a) * unit(b)).sum(1)


def test_cuda_defaults_compile_and_capture(gpu_model):
    static = gpu_model.backend._static
    assert static.choice == EngineChoice(static_rows=True, compiled=True, cuda_graphs=True, triton_kernels=True)
    assert static.graphs is not None and len(static.graphs.graphs) == len(static.graphs.buckets)


@pytest.mark.parametrize("copies", [1, 40])  # 12 rows replay a graph; 160 rows run the compiled forward
def test_graphed_and_compiled_equal_eager(gpu_model, eager_model, copies):
    rows = gpu_model.tokenizer.tokenize(TEXTS * len(ADAPTERS) * copies).input_ids
    names = [a for a in ADAPTERS for _ in TEXTS] * copies
    fast = gpu_model.backend.embed_sync(token_batch(gpu_model, rows, names))
    eager = eager_model.backend.embed_sync(token_batch(eager_model, rows, names))
    assert cosines(fast, eager).min() >= 0.999


def test_a_graph_serves_weights_installed_after_capture(gpu_model, eager_model, demo_dirs):
    backend, static = gpu_model.backend, gpu_model.backend._static
    graphs = dict(static.graphs.graphs)
    slot = gpu_model.adapters.slot_of("legal")
    rows = gpu_model.tokenizer.tokenize(TEXTS).input_ids
    medical = load_peft_adapter("medical", demo_dirs["medical"], base_shapes=backend.info.linear_shapes,
                                max_rank=gpu_model.config.adapters.max_lora_rank)
    legal = load_peft_adapter("legal", demo_dirs["legal"], base_shapes=backend.info.linear_shapes,
                              max_rank=gpu_model.config.adapters.max_lora_rank)
    try:
        asyncio.run(backend.install(slot, medical))  # medical's weights under legal's slot
        swapped = backend.embed_sync(token_batch(gpu_model, rows, ["legal"] * len(rows)))
        reference = eager_model.backend.embed_sync(token_batch(eager_model, rows, ["medical"] * len(rows)))
        assert cosines(swapped, reference).min() >= 0.999
        asyncio.run(backend.remove(slot))
        asyncio.run(backend.install(slot, legal))
        assert static.graphs.graphs == graphs  # same width: nothing was captured again
        back = backend.embed_sync(token_batch(gpu_model, rows, ["legal"] * len(rows)))
        reference = eager_model.backend.embed_sync(token_batch(eager_model, rows, ["legal"] * len(rows)))
        assert cosines(back, reference).min() >= 0.999
    finally:
        asyncio.run(backend.install(slot, legal))


@pytest.fixture(scope="module")
def control_model(demo_config, demo_dirs):
    """The gathered bmm pair instead of the Triton kernels, eager."""
    model = loaded_model(dataclasses.replace(demo_config, dtype="bfloat16", compile="off", cuda_graphs="off",
                                             lora_kernels="torch"), device="cuda")
    yield model
    asyncio.run(model.backend.close())


@pytest.mark.parametrize("copies", [1, 40])
def test_triton_kernels_equal_the_bmm_control(gpu_model, eager_model, control_model, copies):
    rows = gpu_model.tokenizer.tokenize(TEXTS * len(ADAPTERS) * copies).input_ids
    names = [a for a in ADAPTERS for _ in TEXTS] * copies
    control = control_model.backend.embed_sync(token_batch(control_model, rows, names))
    for model in (gpu_model, eager_model):  # graphed/compiled and eager kernels
        assert cosines(model.backend.embed_sync(token_batch(model, rows, names)), control).min() >= 0.9999


def test_fp32_kernels_match_peft(demo_config, demo_dirs):
    model = loaded_model(dataclasses.replace(demo_config, dtype="float32", compile="off", cuda_graphs="off",
                                             lora_kernels="triton"), device="cuda")
    try:
        rows = model.tokenizer.tokenize(TEXTS * len(ADAPTERS)).input_ids
        names = [a for a in ADAPTERS for _ in TEXTS]
        ours = unit(model.backend.embed_sync(token_batch(model, rows, names)))
        assert np.abs(ours - unit(peft_vectors(demo_dirs, rows, names, torch.float32))).max() <= 1e-5
    finally:
        asyncio.run(model.backend.close())
