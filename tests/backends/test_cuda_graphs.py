"""Graph buckets, the padding into a bucket's static buffers and when buckets are captured, on the CPU.
CUDA graphs cannot be captured here, so `eager_capture` stands in for the capture (its replay reruns the
forward on the same static inputs into the same output buffer); the gpu tier captures real graphs."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from server.backends.base import TokenBatch
from server.backends.cuda_graphs import Bucket, GraphPool, plan_buckets, single_row
from server.backends.static_forward import EngineChoice
from tests.backends.test_static_forward import load_with, mixed
from tests.conftest import token_batch


def eager_capture(forward, inputs, pool):
    output = forward(*inputs).clone()
    return (lambda: output.copy_(forward(*inputs))), output


def failing_capture(forward, inputs, pool):
    raise RuntimeError("operation not permitted when stream is capturing")


def test_buckets_are_powers_of_two_within_the_configured_bounds():
    buckets = plan_buckets(300, max_tokens=8192, max_rows=64)
    assert {b.length for b in buckets} == {32, 64, 128, 256, 300}
    assert all(b.tokens == b.rows * b.length <= 8192 and b.rows <= 64 for b in buckets)
    assert Bucket(64 * 128, 64, 128) in buckets and Bucket(64 * 256, 64, 256) not in buckets
    pool = GraphPool(None, buckets, device="cpu", pad_id=0, zero_slot=0, capture=eager_capture)
    assert pool.pick(1, 200) == Bucket(256, 1, 256)
    assert pool.pick(3, 33) == Bucket(256, 4, 64)
    assert pool.pick(65, 8) is None and pool.pick(1, 301) is None
    assert [b.length for b in single_row(buckets)] == [300, 256, 128, 64, 32]  # largest first
    small = plan_buckets(300, max_tokens=256, max_rows=4)
    assert max(b.rows for b in small) == 4 and max(b.tokens for b in small) <= 256


def wait_for_all(static, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while static.graphs.pending() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture(scope="module")
def graphed(demo_config, demo_dirs):
    """Warmed up as the server warms up: the single-row buckets before `warm_up` returns, the rest after."""
    model = load_with(demo_config, EngineChoice(static_rows=True))
    static = model.backend._static
    static.graphs = GraphPool(static._run, plan_buckets(64, max_tokens=256, max_rows=64), device="cpu",
                              pad_id=static.layout.pad_token_id, zero_slot=static.plan.zero_slot, capture=eager_capture)
    yield model
    asyncio.run(model.stop())


def test_single_rows_before_ready_then_the_rest_between_batches(graphed, demo_model):
    static = graphed.backend._static
    static.warm_up()  # what the backend's warm_up runs on its worker before the model is ready
    assert set(static.graphs.graphs) == {b for b in static.graphs.buckets if b.rows == 1}
    rows, names = mixed(graphed)
    rows, names = rows[:5], names[:5]  # 5 rows -> the 8-row bucket, not captured yet: runs uncaptured
    assert _replayed(static, graphed, rows, names) is None
    eager = demo_model.backend.embed_sync(token_batch(demo_model, rows, names))
    assert np.abs(graphed.backend.embed_sync(token_batch(graphed, rows, names)) - eager).max() <= 1e-5
    graphed.backend._executor.submit(graphed.backend._capture_next)  # as warm_up does once ready
    wait_for_all(static)
    assert set(static.graphs.graphs) == set(static.graphs.buckets)
    assert static.phases["graph_capture"] > 0 and static.phases["graph_capture_background"] > 0
    # 5 rows padded into the 8-row bucket: 3 filler rows at the zero slot; each real row is what it is alone
    assert _replayed(static, graphed, rows, names) is not None
    assert np.abs(graphed.backend.embed_sync(token_batch(graphed, rows, names)) - eager).max() <= 1e-5
    assert graphed.backend.engine_stats().graphs_captured == len(static.graphs.buckets)


def _replayed(static, model, rows, names):
    """What the graph pool answers for the batch: its graph's vectors, or None when its bucket is not captured."""
    import torch

    from server.backends.hf_model import pad_rows

    ids, lengths = pad_rows(rows, model.backend.layout.pad_token_id, "cpu")
    zero = model.backend._plan.zero_slot
    slots = torch.tensor([zero if n is None else model.adapters.slot_of(n) for n in names])
    with torch.inference_mode():
        return static.graphs.run(ids, lengths, slots)


def test_installs_and_evictions_never_recapture(graphed, demo_dirs, tmp_path):
    from server.demo_assets import ALL_LINEARS
    from server.demo_lora import build_adapter
    from server.lora.peft_format import load_peft_adapter

    static, backend = graphed.backend._static, graphed.backend
    static.graphs.capture(static.graphs.buckets)
    first = dict(static.graphs.graphs)
    asyncio.run(graphed.adapters.unload("legal", force=True))
    asyncio.run(graphed.adapters.load("legal"))
    build_adapter(demo_dirs["model"], tmp_path / "wide", seed=9, targets=ALL_LINEARS, rank=32)  # wider than any
    wide = load_peft_adapter("wide", tmp_path / "wide", base_shapes=backend.info.linear_shapes,
                             max_rank=graphed.config.adapters.max_lora_rank)
    free = graphed.adapters.capacity - 1
    asyncio.run(backend.install(free, wide))
    try:
        rows, _ = mixed(graphed)
        backend.embed_sync(TokenBatch(rows[:3], [free] * 3))
        assert static.graphs.graphs == first and all(static.graphs.graphs[b] is first[b] for b in first)
    finally:
        asyncio.run(backend.remove(free))


def test_a_failed_capture_serves_without_graphs(graphed):
    static = graphed.backend._static
    static.graphs.graphs.clear()
    static.graphs.capture_one = failing_capture
    static.warm_up()
    assert static.graphs is None
    rows, names = mixed(graphed)
    assert graphed.backend.embed_sync(token_batch(graphed, rows[:2], names[:2])).shape[0] == 2
    assert static.capture_next() is False
