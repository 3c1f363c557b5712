"""The torch backend's static path on the CPU: every row at once under a per-row slot tensor, eager and
compiled (`compile: on`, inductor's C++ backend), against PEFT (fp32, 1e-5) and the eager segment path,
with adapters installed after compiling (a wider rank recompiles, an eviction does not)."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util

import numpy as np
import pytest

from server.backends.static_forward import EngineChoice, choose_engine, onednn_available
from server.backends.torch_backend import TorchBackend
from server.config import ServerSettings
from server.local_model import LocalModel
from server.model_layout import ModelLayout
from tests.conftest import token_batch

ADAPTERS = [None, "legal", "medical", "finance"]
TEXTS = ["What is the statute of limitations for breach of contract?", "hello",
         "Aspirin reduces the risk of myocardial infarction in patients with high blood pressure, and more."]


def load_with(config, engine: EngineChoice | None = None):
    settings = ServerSettings()
    model = LocalModel(config, settings, TorchBackend(config, settings, "cpu", engine=engine))
    asyncio.run(model.load())
    return model


def mixed(model):
    rows = model.tokenizer.tokenize(TEXTS * len(ADAPTERS)).input_ids
    names = [ADAPTERS[(i + i // len(TEXTS)) % len(ADAPTERS)] for i in range(len(rows))]  # unsorted mix
    return rows, names


def check_against_peft(model, peft_reference):
    rows, names = mixed(model)
    ours = model.backend.embed_sync(token_batch(model, rows, names))
    for row, (ids, name) in enumerate(zip(rows, names)):
        assert np.abs(ours[row] - peft_reference(ids, name)).max() <= 1e-5, (row, name)
    return ours


@pytest.fixture(scope="module")
def static_model(demo_config, demo_dirs):
    model = load_with(demo_config, EngineChoice(static_rows=True))
    yield model
    asyncio.run(model.stop())


def test_engine_choice_by_device_and_setting(demo_config):
    decoder, encoder = ModelLayout(False, "last", None), ModelLayout(True, "cls", None)
    kernels = importlib.util.find_spec("triton") is not None  # auto: Triton on CUDA when installed
    packed = onednn_available()  # the eager CPU path's linears: oneDNN, packed, unless asked for torch's
    assert choose_engine(demo_config, "cpu", decoder) == EngineChoice(packed_linears=packed)
    assert choose_engine(dataclasses.replace(demo_config, cpu_linears="torch"), "cpu", decoder) == EngineChoice()
    assert choose_engine(demo_config, "cuda", decoder) == EngineChoice(True, True, True, kernels, kernels)
    assert choose_engine(demo_config, "cuda", encoder) == EngineChoice(True, True, False, kernels, kernels)
    off = dataclasses.replace(demo_config, compile="off", cuda_graphs="off", lora_kernels="torch")
    assert choose_engine(off, "cuda:1", decoder) == EngineChoice(static_rows=True)
    assert choose_engine(dataclasses.replace(demo_config, lora_kernels="triton"), "cpu", decoder) == \
        EngineChoice(static_rows=True, triton_kernels=True)
    assert choose_engine(dataclasses.replace(demo_config, lora_kernels="fused"), "cpu", decoder) == \
        EngineChoice(static_rows=True, triton_kernels=True, fused=True)
    assert choose_engine(dataclasses.replace(demo_config, compile="on"), "cpu", decoder) == \
        EngineChoice(static_rows=True, compiled=True)


def test_static_rows_match_peft_and_the_segment_path(static_model, demo_model, peft_reference):
    ours = check_against_peft(static_model, peft_reference)
    rows, names = mixed(static_model)
    segments = demo_model.backend.embed_sync(token_batch(demo_model, rows, names))
    assert np.abs(ours - segments).max() <= 1e-5


def test_static_rows_batch_invariance(static_model):
    rows, names = mixed(static_model)
    batch = static_model.backend.embed_sync(token_batch(static_model, rows, names))
    for index in (0, 4, len(rows) - 1):
        alone = static_model.backend.embed_sync(token_batch(static_model, [rows[index]], [names[index]]))
        assert np.abs(alone[0] - batch[index]).max() <= 1e-5


@pytest.mark.long
def test_compiled_forward_matches_peft_and_sees_later_adapters(demo_config, peft_reference):
    """Compiled at start-up (the warm-up forward: one graph for one row, one for several), then an eviction
    and a reload reuse the compiled code; the vectors stay PEFT's within 1e-5."""
    model = load_with(dataclasses.replace(demo_config, compile="on"))
    try:
        static = model.backend._static
        assert static is not None and static.choice.compiled and static.compiles == 2
        assert model.backend._plan.width == demo_config.adapters.max_lora_rank
        check_against_peft(model, peft_reference)
        asyncio.run(model.adapters.unload("medical", force=True))
        asyncio.run(model.adapters.load("medical"))
        check_against_peft(model, peft_reference)
        assert static.compiles == 2
    finally:
        asyncio.run(model.stop())


def test_an_adapter_pool_larger_than_the_model_is_warned_about(demo_config, caplog):
    big = dataclasses.replace(demo_config, adapters=dataclasses.replace(demo_config.adapters, max_lora_rank=2048,
                                                                        lora_paths={}), profiles={})
    with caplog.at_level("WARNING"):
        model = load_with(big)
    asyncio.run(model.stop())
    assert any("larger than the model's own weights" in r.getMessage() for r in caplog.records)
