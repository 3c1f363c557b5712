"""Graph buckets and the padding into a bucket's static buffers, on the CPU. CUDA graphs cannot be
captured here, so `eager_capture` stands in for the capture (its replay reruns the forward on the same
static inputs into the same output buffer); the gpu tier captures real graphs."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server.backends.cuda_graphs import GRAPH_MAX_TOKENS, Bucket, GraphPool, plan_buckets
from server.backends.static_forward import EngineChoice
from tests.backends.test_static_forward import load_with, mixed
from tests.conftest import token_batch


def eager_capture(forward, inputs, pool):
    output = forward(*inputs).clone()
    return (lambda: output.copy_(forward(*inputs))), output


def failing_capture(forward, inputs, pool):
    raise RuntimeError("operation not permitted when stream is capturing")


def test_buckets_are_powers_of_two_within_the_token_budget():
    buckets = plan_buckets(300)
    assert {b.length for b in buckets} == {32, 64, 128, 256, 300}
    assert all(b.tokens == b.rows * b.length <= GRAPH_MAX_TOKENS for b in buckets)
    assert Bucket(64 * 128, 64, 128) in buckets and Bucket(64 * 256, 64, 256) not in buckets
    pool = GraphPool(None, buckets, device="cpu", pad_id=0, zero_slot=0, capture=eager_capture)
    assert pool.pick(1, 200) == Bucket(256, 1, 256)
    assert pool.pick(3, 33) == Bucket(256, 4, 64)
    assert pool.pick(65, 8) is None and pool.pick(1, 301) is None


@pytest.fixture(scope="module")
def graphed(demo_config, demo_dirs):
    model = load_with(demo_config, EngineChoice(static_rows=True))
    static = model.backend._static
    static.graphs = GraphPool(static._run, plan_buckets(64, max_tokens=256), device="cpu",
                              pad_id=static.layout.pad_token_id, zero_slot=static.plan.zero_slot, capture=eager_capture)
    static.warm_width = None
    yield model
    asyncio.run(model.stop())


def test_padded_into_a_bucket_each_row_is_what_it_is_alone(graphed, demo_model):
    rows, names = mixed(graphed)
    rows, names = rows[:5], names[:5]  # 5 rows -> the 8-row bucket: 3 filler rows at the zero slot
    graphs = graphed.backend._static.graphs
    assert graphs.pick(len(rows), max(map(len, rows))).rows == 8
    ours = graphed.backend.embed_sync(token_batch(graphed, rows, names))
    assert len(graphs.graphs) == len(graphs.buckets)  # all captured by the first forward at this width
    eager = demo_model.backend.embed_sync(token_batch(demo_model, rows, names))
    assert np.abs(ours - eager).max() <= 1e-5


def test_eviction_keeps_graphs_and_a_wider_rank_recaptures(graphed, demo_dirs):
    static = graphed.backend._static
    first = dict(static.graphs.graphs)
    asyncio.run(graphed.adapters.unload("legal", force=True))
    asyncio.run(graphed.adapters.load("legal"))
    assert static.graphs.graphs == first
    static.plan.width = 16  # as an install of a rank-16 adapter sets it
    graphed.backend.embed_sync(token_batch(graphed, *[[x[0]] for x in mixed(graphed)]))
    assert static.warm_width == 16 and all(static.graphs.graphs[b] is not first[b] for b in first)


def test_a_failed_capture_serves_without_graphs(graphed):
    static = graphed.backend._static
    static.graphs.capture, static.warm_width = failing_capture, None
    rows, names = mixed(graphed)
    assert graphed.backend.embed_sync(token_batch(graphed, rows[:2], names[:2])).shape[0] == 2
    assert static.graphs is None
