"""The static path with the Triton LoRA kernels (Triton's interpreter on the CPU): the 2-layer demo Qwen3
with mixed adapters (rank 8 on q/k/v/o, rank 8 and rank 16 on all seven linears, base rows) against PEFT
(fp32, 1e-5), against the gathered-bmm control, alone vs in a batch, and compiled."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest

pytest.importorskip("triton")

from server.backends.static_forward import EngineChoice  # noqa: E402
from server.demo_assets import ALL_LINEARS  # noqa: E402
from server.demo_lora import build_adapter  # noqa: E402
from tests.backends.test_static_forward import load_with  # noqa: E402
from tests.conftest import token_batch  # noqa: E402

ADAPTERS = [None, "legal", "wide", "medical", "finance"]
TEXTS = ["What is the statute of limitations for breach of contract?", "hello",
         "Aspirin reduces the risk of myocardial infarction in patients with high blood pressure, and more."]


@pytest.fixture(scope="module")
def wide_root(demo_dirs, peft_reference, tmp_path_factory):
    """A rank-16 adapter on all seven linears, under an adapter root, and loaded into the PEFT reference."""
    root = tmp_path_factory.mktemp("wide-root")
    build_adapter(demo_dirs["model"], root / "wide", seed=606, targets=ALL_LINEARS, rank=16)
    peft_reference.model.load_adapter(root / "wide", adapter_name="wide")
    return root


def with_wide(config, wide_root, engine=None, **changes):
    model = load_with(dataclasses.replace(config, lora_roots=(str(wide_root),), **changes), engine)
    asyncio.run(model.adapters.load("wide"))
    return model


@pytest.fixture(scope="module")
def kernel_model(demo_config, wide_root):
    model = with_wide(demo_config, wide_root, lora_kernels="triton")
    yield model
    asyncio.run(model.stop())


def mixed(model):
    rows = model.tokenizer.tokenize(TEXTS * len(ADAPTERS)).input_ids
    names = [ADAPTERS[(i + i // len(TEXTS)) % len(ADAPTERS)] for i in range(len(rows))]
    return rows, names


def embed(model, rows, names):
    return model.backend.embed_sync(token_batch(model, rows, names))


def test_kernels_are_chosen_and_group_shared_inputs(kernel_model):
    backend = kernel_model.backend
    assert backend._static.choice == EngineChoice(static_rows=True, triton_kernels=True)
    assert backend._plan.width == kernel_model.config.adapters.max_lora_rank  # fixed at load
    sizes = {name.rsplit(".", 1)[-1]: len(layer.group.members) for name, layer in backend._layers.items()}
    assert sizes == {"q_proj": 3, "k_proj": 3, "v_proj": 3, "o_proj": 1, "gate_proj": 2, "up_proj": 2,
                     "down_proj": 1}


def test_kernel_path_matches_peft(kernel_model, peft_reference):
    rows, names = mixed(kernel_model)
    ours = embed(kernel_model, rows, names)
    for row, (ids, name) in enumerate(zip(rows, names)):
        assert np.abs(ours[row] - peft_reference(ids, name)).max() <= 1e-5, (row, name)


def test_kernel_path_matches_the_bmm_control_and_is_batch_invariant(kernel_model, demo_config, wide_root):
    control = with_wide(demo_config, wide_root, EngineChoice(static_rows=True))  # the gathered bmm pair
    try:
        rows, names = mixed(kernel_model)
        ours = embed(kernel_model, rows, names)
        assert np.abs(ours - embed(control, rows, names)).max() <= 1e-5
        for index in (0, 2, len(rows) - 1):
            alone = embed(kernel_model, [rows[index]], [names[index]])
            assert np.abs(alone[0] - ours[index]).max() <= 1e-5
    finally:
        asyncio.run(control.stop())


@pytest.mark.long
def test_compiled_kernel_path_has_no_graph_break(demo_config, wide_root, kernel_model):
    """torch.compile traces the custom ops and the group's shared shrink in one graph; vectors unchanged."""
    import torch._dynamo.utils

    torch._dynamo.utils.counters.clear()
    compiled = with_wide(demo_config, wide_root, lora_kernels="triton", compile="on")
    try:
        rows, names = mixed(kernel_model)
        assert np.abs(embed(compiled, rows, names) - embed(kernel_model, rows, names)).max() <= 1e-5
        assert not torch._dynamo.utils.counters["graph_break"]
    finally:
        asyncio.run(compiled.stop())
