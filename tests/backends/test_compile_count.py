"""One compile per process: the static forward with the Triton LoRA kernels (Triton's interpreter) compiled
by dynamo with `dynamic=True` makes two graphs at warm-up (one row, several rows) and none after, over
every graph bucket's shape, other row counts and lengths (one token included), mixed adapters, an eviction,
a reload and an install of a wider adapter. Dynamo's `eager` backend stands in for inductor (the graphs
dynamo makes are the same; inductor would only take minutes to build them on the CPU), and
`eager_capture` for CUDA graph capture."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

pytest.importorskip("triton")

from server.backends.base import TokenBatch  # noqa: E402
from server.backends.cuda_graphs import GraphPool, plan_buckets  # noqa: E402
from server.backends.static_forward import EngineChoice  # noqa: E402
from server.demo_assets import ALL_LINEARS  # noqa: E402
from server.demo_lora import build_adapter  # noqa: E402
from server.lora.peft_format import AdapterError, load_peft_adapter  # noqa: E402
from tests.backends.test_cuda_graphs import eager_capture  # noqa: E402
from tests.backends.test_static_forward import load_with  # noqa: E402

ADAPTERS = [None, "legal", "medical", "finance"]
ENGINE = EngineChoice(static_rows=True, compiled=True, triton_kernels=True, compiler="eager")


@pytest.fixture(scope="module")
def compiled(demo_config):
    config = dataclasses.replace(demo_config, max_seq_len=64, cuda_graph_max_tokens=128)
    model = load_with(config, ENGINE)
    static = model.backend._static
    static.graphs = GraphPool(static._run, plan_buckets(64, 128, 64), device="cpu",
                              pad_id=static.layout.pad_token_id, zero_slot=static.plan.zero_slot, capture=eager_capture)
    yield model
    asyncio.run(model.stop())


def run(model, rows: int, length: int, names=None) -> None:
    names = names or [ADAPTERS[i % len(ADAPTERS)] for i in range(rows)]
    ids = [[100 + (i * 7 + j) % 300 for j in range(length)] for i in range(rows)]
    model.backend.embed_sync(TokenBatch(ids, [None if n is None else model.adapters.slot_of(n) for n in names]))


def test_two_graphs_at_warm_up_and_none_after(compiled, demo_dirs, tmp_path):
    static, backend = compiled.backend._static, compiled.backend
    assert static.compiles == 2  # at warm-up, before any adapter: several rows, then one row
    static.warm_up()  # captures the single-row buckets (each through the compiled forward)
    while static.capture_next():  # every other bucket, as between batches
        pass
    assert set(static.graphs.graphs) == set(static.graphs.buckets)
    for rows, length in [(3, 5), (5, 33), (7, 17), (2, 2), (1, 1), (9, 40), (2, 64)]:  # bucket-free shapes
        run(compiled, rows, length)
    run(compiled, 4, 30, ["finance"] * 4)
    asyncio.run(compiled.adapters.unload("medical", force=True))
    asyncio.run(compiled.adapters.load("medical"))
    build_adapter(demo_dirs["model"], tmp_path / "wide", seed=9, targets=ALL_LINEARS, rank=32)
    wide = load_peft_adapter("wide", tmp_path / "wide", base_shapes=backend.info.linear_shapes,
                             max_rank=compiled.config.adapters.max_lora_rank)
    free = compiled.adapters.capacity - 1
    asyncio.run(backend.install(free, wide))
    try:
        backend.embed_sync(TokenBatch([[5] * 20] * 3, [free, None, compiled.adapters.slot_of("legal")]))
    finally:
        asyncio.run(backend.remove(free))
    assert static.compiles == 2
    stats = backend.engine_stats()
    assert stats.compiles == 2 and stats.graphs_captured == stats.graphs_planned == len(static.graphs.buckets)
    phases = compiled.startup_seconds()  # the warm-up as the engine split it, between the load's own phases
    assert list(phases) == ["tokenizer", "weights", "compile", "graph_capture", "adapters",
                            "graph_capture_background"]


def test_an_adapter_wider_than_the_pool_is_refused_at_load(compiled, demo_dirs, tmp_path):
    build_adapter(demo_dirs["model"], tmp_path / "huge", seed=10, targets=("q_proj",), rank=128)
    with pytest.raises(AdapterError, match="max_lora_rank 64"):
        load_peft_adapter("huge", tmp_path / "huge", base_shapes=compiled.backend.info.linear_shapes,
                          max_rank=compiled.config.adapters.max_lora_rank)
