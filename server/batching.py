"""Continuous batcher: rows from all requests -> mixed-adapter forward batches, one at a time.

A batch always contains the oldest waiting row (first come, first served: nothing starves) and is
filled from a look-ahead window with the rows closest in length to it (less padding), within the
padded-token budget and at most `max_loras_per_batch` distinct adapters (base counts as one).
Rows of other adapters wait for the next batch; rows asking for different outputs (dense, sparse,
multivector) share a batch. The forward runs off the event loop, one batch at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from server import errors
from server.backends.base import DENSE_ONLY, RowOutputs, TokenBatch

log = logging.getLogger(__name__)
LOOKAHEAD = 2048


@dataclass(frozen=True)
class BatchLimits:
    max_batch_tokens: int
    max_batch_wait_ms: float
    max_loras_per_batch: int
    max_queue_items: int
    max_queue_tokens: int = 1 << 62
    max_padding: float = 1.0  # the padded fraction a batch may reach (1.0: no limit)


@dataclass(frozen=True)
class RowResult:
    outputs: RowOutputs  # what the row asked for, raw (dense pooled, not normalised)
    batch_id: int
    started: float
    finished: float


@dataclass(eq=False)
class _Row:
    ids: Sequence[int]
    slot: int | None  # adapter slot (a lease holds it resident), None = base
    future: asyncio.Future
    outputs: frozenset[str] = DENSE_ONLY
    enqueued: float = field(default_factory=time.perf_counter)


def plan_batch(lengths: Sequence[int], adapters: Sequence[int | None], *, max_tokens: int,
               max_adapters: int, max_padding: float = 1.0) -> list[int]:
    """Indices (into the waiting rows, oldest first) of the next batch; always includes index 0. A row
    that would make padding more than `max_padding` of the batch's padded tokens waits for another."""
    head_len = lengths[0]
    chosen, longest, distinct, real = [0], head_len, {adapters[0]}, head_len
    window = range(1, min(len(lengths), LOOKAHEAD))
    for i in sorted(window, key=lambda j: (abs(lengths[j] - head_len), j)):
        new_longest = max(longest, lengths[i])
        padded = (len(chosen) + 1) * new_longest
        if padded > max_tokens or padded - real - lengths[i] > max_padding * padded:
            continue
        if adapters[i] not in distinct:
            if len(distinct) >= max_adapters:
                continue
            distinct.add(adapters[i])
        chosen.append(i)
        longest, real = new_longest, real + lengths[i]
    return sorted(chosen)


@dataclass(frozen=True)
class BatchShape:
    """What one forward batch held, for metrics: the padded tokens the backend computes over and the real
    tokens among them."""

    rows: int
    tokens: int
    padded_tokens: int  # rows x the longest row
    adapters: int  # distinct adapters, base counting as one


class Batcher:
    def __init__(self, run: Callable[[TokenBatch], Awaitable[list[RowOutputs]]], limits: BatchLimits, name: str = ""):
        self._run = run
        self.limits = limits
        self.name = name
        self._waiting: list[_Row] = []
        self._waiting_tokens = 0
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._batches = 0
        self.on_batch: Callable[[BatchShape], None] | None = None
        self.running: tuple[int | None, ...] = ()  # the adapter slots of the rows in the forward now running

    @property
    def queue_depth(self) -> int:
        """Rows waiting for a batch (rows of clients that went away no longer count)."""
        return sum(not row.future.done() for row in self._waiting)

    @property
    def batches_run(self) -> int:
        return self._batches

    def waiting_slots(self) -> set[int | None]:
        return {row.slot for row in self._waiting if not row.future.done()}

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for row in self._waiting:
            if not row.future.done():
                row.future.set_exception(errors.ShuttingDown("the server is shutting down"))
        self._waiting.clear()

    def check_room(self, items: int, tokens: int) -> None:
        """Raise QueueFull unless `items` rows of `tokens` tokens in all fit now (also used with an upper
        estimate before tokenising, so an overloaded server refuses before doing the work)."""
        if len(self._waiting) + items > self.limits.max_queue_items:
            raise errors.QueueFull(f"queue holds {len(self._waiting)} items (limit {self.limits.max_queue_items})")
        if self._waiting_tokens + tokens > self.limits.max_queue_tokens:
            raise errors.QueueFull(f"queue holds {self._waiting_tokens} tokens (limit {self.limits.max_queue_tokens})")

    def submit(self, input_ids: Sequence[Sequence[int]], slot: int | None,
               outputs: frozenset[str] = DENSE_ONLY) -> list[asyncio.Future]:
        """Queue one request's rows (each asking for `outputs`); refuses the whole request when the queue
        would overflow."""
        tokens = sum(len(ids) for ids in input_ids)
        self.check_room(len(input_ids), tokens)
        loop = asyncio.get_running_loop()
        rows = [_Row(ids, slot, loop.create_future(), outputs) for ids in input_ids]
        self._waiting.extend(rows)
        self._waiting_tokens += tokens
        self._wakeup.set()
        return [row.future for row in rows]

    async def run(self, input_ids: Sequence[Sequence[int]], slot: int | None,
                  outputs: frozenset[str] = DENSE_ONLY) -> list[RowResult]:
        """`submit` and wait for every row; a cancelled wait drops the rows not yet run. Even a lone request
        goes through the loop: requests that arrive in one burst are handled in one turn of the event loop,
        and the loop, running after that turn, batches them together."""
        return await self._wait(self.submit(input_ids, slot, outputs))

    async def run_each(self, input_ids: Sequence[Sequence[int]], slots: Sequence[int | None],
                       outputs: frozenset[str] = DENSE_ONLY) -> list[list[RowResult]]:
        """The same rows once per slot, queued in one step (so they share forwards as any mixed rows do);
        the results per slot, in the order of `slots`. Refused whole when the queue cannot take every copy."""
        self.check_room(len(input_ids) * len(slots), sum(len(ids) for ids in input_ids) * len(slots))
        futures = [future for slot in slots for future in self.submit(input_ids, slot, outputs)]
        rows = await self._wait(futures)
        return [rows[i:i + len(input_ids)] for i in range(0, len(rows), len(input_ids))]

    @staticmethod
    async def _wait(futures: list[asyncio.Future]) -> list[RowResult]:
        try:
            return await asyncio.gather(*futures)
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise

    def _take_batch(self) -> list[_Row]:
        live = [row for row in self._waiting if not row.future.done()]  # cancelled by a gone client
        chosen = set(plan_batch([len(r.ids) for r in live], [r.slot for r in live],
                                max_tokens=self.limits.max_batch_tokens,
                                max_adapters=self.limits.max_loras_per_batch,
                                max_padding=self.limits.max_padding)) if live else set()
        batch = [row for i, row in enumerate(live) if i in chosen]
        self._waiting = [row for i, row in enumerate(live) if i not in chosen]
        self._waiting_tokens = sum(len(r.ids) for r in self._waiting)
        return batch

    async def _fill_or_deadline(self) -> None:
        deadline = self._waiting[0].enqueued + self.limits.max_batch_wait_ms / 1000.0
        while self._waiting_tokens < self.limits.max_batch_tokens:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    async def _loop(self) -> None:
        while True:
            if not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._fill_or_deadline()
            batch = self._take_batch()
            if batch:
                await self._execute(batch)

    async def _execute(self, batch: list[_Row]) -> None:
        self._batches += 1
        batch_id = self._batches
        if self.on_batch is not None:
            self.on_batch(BatchShape(rows=len(batch), tokens=sum(len(r.ids) for r in batch),
                                     padded_tokens=len(batch) * max(len(r.ids) for r in batch),
                                     adapters=len({r.slot for r in batch})))
        started = time.perf_counter()
        self.running = tuple(r.slot for r in batch)
        try:
            rows = await self._run(TokenBatch([r.ids for r in batch], [r.slot for r in batch],
                                              [r.outputs for r in batch]))
        except Exception as exc:  # fail this batch's rows only; the loop keeps serving
            log.exception("%s: batch %d of %d rows failed", self.name, batch_id, len(batch))
            for row in batch:
                if not row.future.done():
                    row.future.set_exception(exc)
            return
        finally:
            self.running = ()
        finished = time.perf_counter()
        for row, outputs in zip(batch, rows):
            if not row.future.done():
                row.future.set_result(RowResult(outputs, batch_id, started, finished))
