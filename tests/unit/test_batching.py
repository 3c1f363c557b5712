"""Batch planning and the continuous batcher: budgets, adapter limit, FCFS, failures, cancellation.

The batcher is driven with a recording stand-in for the backend's `embed` (the real backend is
covered in tests/backends); the stand-in only returns row indices so each batch can be inspected.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server import errors
from server.api.errors import from_domain
from server.backends.base import RowOutputs, TokenBatch
from server.batching import Batcher, BatchLimits, plan_batch


def test_head_always_included_even_when_over_budget():
    assert plan_batch([100, 1, 1], ["a", "a", "a"], max_tokens=10, max_adapters=1) == [0]


def test_padded_token_budget():
    chosen = plan_batch([4, 4, 4, 4, 4], [None] * 5, max_tokens=12, max_adapters=8)
    assert chosen == [0, 1, 2]


def test_prefers_similar_lengths():
    chosen = plan_batch([10, 100, 11, 9, 90], [None] * 5, max_tokens=40, max_adapters=8)
    assert chosen == [0, 2, 3]  # 3 rows x 11 tokens fit; the long rows wait


def test_padding_limit_leaves_far_lengths_for_another_batch():
    lengths = [100, 95, 130, 60, 104, 300]
    assert plan_batch(lengths, [None] * 6, max_tokens=10_000, max_adapters=8) == [0, 1, 2, 3, 4, 5]
    chosen = plan_batch(lengths, [None] * 6, max_tokens=10_000, max_adapters=8, max_padding=0.1)
    assert chosen == [0, 1, 4]  # padded to 104: 3 x 104 = 312 tokens, 13 of them padding
    padded = len(chosen) * max(lengths[i] for i in chosen)
    assert padded - sum(lengths[i] for i in chosen) <= 0.1 * padded
    assert plan_batch([100, 300], [None] * 2, max_tokens=10_000, max_adapters=8, max_padding=0.0) == [0]


def test_adapter_limit_counts_base():
    adapters = [None, "a", "b", "c", "a", None]
    chosen = plan_batch([5] * 6, adapters, max_tokens=1000, max_adapters=2)
    assert chosen == [0, 1, 4, 5]
    assert len({adapters[i] for i in chosen}) == 2


class Recorder:
    def __init__(self, fail_on: str | None = None):
        self.batches: list[TokenBatch] = []
        self.fail_on = fail_on
        self.gate = asyncio.Event()
        self.gate.set()

    async def __call__(self, batch: TokenBatch) -> list[RowOutputs]:
        await self.gate.wait()
        self.batches.append(batch)
        if self.fail_on is not None and self.fail_on in batch.slots:
            raise RuntimeError("boom")
        return [RowOutputs(dense=np.array([float(ids[0])], dtype=np.float32)) for ids in batch.input_ids]


def limits(**overrides):
    values = dict(max_batch_tokens=1000, max_batch_wait_ms=5, max_loras_per_batch=2, max_queue_items=100)
    values.update(overrides)
    return BatchLimits(**values)


def run(coro):
    return asyncio.run(coro)


def test_rows_from_many_requests_share_batches_within_limits():
    async def scenario():
        recorder = Recorder()
        batcher = Batcher(recorder, limits())
        batcher.start()
        futures = []
        for i, adapter in enumerate(["a", "b", "c", None, "a", "b"]):
            futures += batcher.submit([[i, 0, 0]], adapter)
        results = await asyncio.gather(*futures)
        await batcher.stop()
        return recorder, results

    recorder, results = run(scenario())
    assert [r.outputs.dense[0] for r in results] == [0, 1, 2, 3, 4, 5]  # every row gets its own answer
    assert all(len(set(b.slots)) <= 2 for b in recorder.batches)
    assert recorder.batches[0].slots == ["a", "b", "a", "b"]  # oldest first, others wait
    assert sum(len(b.slots) for b in recorder.batches) == 6


def test_queue_limit_refuses_whole_request():
    async def scenario():
        recorder = Recorder()
        recorder.gate.clear()
        batcher = Batcher(recorder, limits(max_queue_items=3))
        batcher.start()
        first = batcher.submit([[1], [2]], None)
        with pytest.raises(errors.QueueFull) as info:
            batcher.submit([[3], [4]], None)
        recorder.gate.set()
        await asyncio.gather(*first)
        await batcher.stop()
        return from_domain(info.value)  # as the API answers it

    error = run(scenario())
    assert error.status == 503 and error.code == "QUEUE_FULL" and error.headers["Retry-After"] == "1"


def test_failed_batch_fails_only_its_rows():
    async def scenario():
        batcher = Batcher(Recorder(fail_on="bad"), limits(max_loras_per_batch=1))
        batcher.start()
        good = batcher.submit([[1]], "good")
        bad = batcher.submit([[2]], "bad")
        later = batcher.submit([[3]], "good")
        outcomes = await asyncio.gather(*good, *bad, *later, return_exceptions=True)
        await batcher.stop()
        return outcomes

    good, bad, later = run(scenario())
    assert good.outputs.dense[0] == 1 and isinstance(bad, RuntimeError) and later.outputs.dense[0] == 3


def test_cancelled_rows_are_dropped():
    async def scenario():
        recorder = Recorder()
        recorder.gate.clear()
        batcher = Batcher(recorder, limits(max_batch_wait_ms=0))
        batcher.start()
        first = batcher.submit([[1]], None)
        await asyncio.sleep(0.01)  # first batch is now running (blocked on the gate)
        gone = batcher.submit([[2]], None)
        kept = batcher.submit([[3]], None)
        gone[0].cancel()
        recorder.gate.set()
        await asyncio.gather(*first, *kept)
        await batcher.stop()
        return recorder

    recorder = run(scenario())
    assert [list(b.input_ids) for b in recorder.batches] == [[[1]], [[3]]]


def test_stop_fails_waiting_rows_with_503():
    async def scenario():
        recorder = Recorder()
        recorder.gate.clear()
        batcher = Batcher(recorder, limits(max_batch_wait_ms=0, max_batch_tokens=1))
        batcher.start()
        batcher.submit([[1]], None)
        await asyncio.sleep(0.01)
        waiting = batcher.submit([[2]], None)
        await batcher.stop()
        return await asyncio.gather(*waiting, return_exceptions=True)

    (error,) = run(scenario())
    assert isinstance(error, errors.ShuttingDown) and from_domain(error).status == 503


def test_rows_asking_different_outputs_share_a_batch():
    """Each row carries its request's output types; a batch of dense-only rows carries none (`embed`)."""
    async def scenario():
        recorder = Recorder()
        batcher = Batcher(recorder, limits(max_batch_wait_ms=50))
        batcher.start()
        futures = batcher.submit([[1, 0]], "a", frozenset({"dense"}))
        futures += batcher.submit([[2, 0]], "b", frozenset({"sparse", "multivector"}))
        await asyncio.gather(*futures)
        futures = batcher.submit([[3, 0], [4, 0]], None)
        await asyncio.gather(*futures)
        await batcher.stop()
        return recorder

    recorder = run(scenario())
    mixed, dense_only = recorder.batches
    assert mixed.slots == ["a", "b"]
    assert mixed.outputs == [frozenset({"dense"}), frozenset({"sparse", "multivector"})]
    assert dense_only.dense_only and not mixed.dense_only  # which backend entry serves it, decided once
    first, second = mixed.split(1)
    assert first.outputs == [frozenset({"dense"})] and second.outputs == [frozenset({"sparse", "multivector"})]


def test_a_burst_of_lone_requests_shares_one_batch():
    """Requests handled in one turn of the event loop (a burst on many connections) each call `run`; the
    loop runs after that turn and batches them together, rather than the first going alone."""
    async def scenario():
        recorder = Recorder()
        batcher = Batcher(recorder, limits(max_batch_wait_ms=0))
        batcher.start()
        results = await asyncio.gather(*(batcher.run([[i]], None) for i in range(8)))
        await batcher.stop()
        return recorder, results

    recorder, results = run(scenario())
    assert [list(b.input_ids) for b in recorder.batches] == [[[i] for i in range(8)]]
    assert [r[0].outputs.dense[0] for r in results] == list(range(8))


def test_a_cancelled_wait_drops_its_rows():
    async def scenario():
        recorder = Recorder()
        recorder.gate.clear()
        batcher = Batcher(recorder, limits(max_batch_wait_ms=0))
        batcher.start()
        first = asyncio.ensure_future(batcher.run([[1]], None))
        await asyncio.sleep(0.01)  # the first batch is in the forward (blocked on the gate)
        gone = asyncio.ensure_future(batcher.run([[2]], None))
        kept = asyncio.ensure_future(batcher.run([[3]], None))
        await asyncio.sleep(0.01)
        gone.cancel()
        recorder.gate.set()
        await asyncio.gather(first, kept)
        await batcher.stop()
        return recorder

    recorder = run(scenario())
    assert [list(b.input_ids) for b in recorder.batches] == [[[1]], [[3]]]
