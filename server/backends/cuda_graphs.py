"""CUDA graphs per (rows, length) bucket for small batches, so a short query replays one graph instead of
paying thousands of kernel launches from Python (nano-vllm's per-bucket capture, for a pooled forward).

A batch is padded up to the smallest bucket that holds it: extra rows are one pad token at the zero
adapter slot, extra positions are padding after each row's last token (never seen by a causal decoder,
masked for an encoder), so each real row's vector is what it is alone. Adapter weights live in buffers
that installs overwrite in place, so a captured graph sees adapters installed or evicted after capture;
only a wider rank width (a new static shape) drops the graphs, and the backend captures them again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

GRAPH_MAX_TOKENS = 8192  # past this a batch is compute-bound and launches no longer matter
GRAPH_MAX_ROWS = 64
GRAPH_MIN_LENGTH = 32

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (ids, lengths, slots) -> pooled
# (forward, static inputs, memory pool) -> (replay, the static output replay rewrites)
Capture = Callable[[Forward, tuple[torch.Tensor, ...], object], tuple[Callable[[], None], torch.Tensor]]


@dataclass(frozen=True, order=True)
class Bucket:
    tokens: int
    rows: int
    length: int


def plan_buckets(max_length: int, max_tokens: int = GRAPH_MAX_TOKENS,
                 max_rows: int = GRAPH_MAX_ROWS) -> tuple[Bucket, ...]:
    """Powers of two in rows and length (the last length is `max_length` itself), within `max_tokens`."""
    lengths, length = [], GRAPH_MIN_LENGTH
    while length < max_length:
        lengths.append(length)
        length *= 2
    lengths.append(max_length)
    rows = [1 << i for i in range(max_rows.bit_length()) if 1 << i <= max_rows]
    return tuple(sorted(Bucket(r * n, r, n) for r in rows for n in lengths if r * n <= max_tokens))


def cuda_capture(forward: Forward, inputs: tuple[torch.Tensor, ...],
                 pool: object) -> tuple[Callable[[], None], torch.Tensor]:
    """Warm up on a side stream (allocator and cuBLAS workspaces), then record one forward."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            forward(*inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        output = forward(*inputs)
    return graph.replay, output


class _Graph:
    def __init__(self, bucket: Bucket, forward: Forward, capture: Capture, pool: object, device: str,
                 pad_id: int, zero_slot: int):
        self.ids = torch.full((bucket.rows, bucket.length), pad_id, dtype=torch.long, device=device)
        self.lengths = torch.ones(bucket.rows, dtype=torch.long, device=device)
        self.slots = torch.full((bucket.rows,), zero_slot, dtype=torch.long, device=device)
        self.pad_id, self.zero_slot = pad_id, zero_slot
        self.replay, self.output = capture(forward, (self.ids, self.lengths, self.slots), pool)

    def run(self, ids: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        rows, length = ids.shape
        self.ids.fill_(self.pad_id)
        self.ids[:rows, :length].copy_(ids)
        self.lengths.fill_(1)
        self.lengths[:rows].copy_(lengths)
        self.slots.fill_(self.zero_slot)
        self.slots[:rows].copy_(slots)
        self.replay()
        return self.output[:rows].clone()


class GraphPool:
    """Captured forwards by bucket. `capture_all` records every bucket (largest first, sharing one memory
    pool); `run` answers None for a batch no bucket holds."""

    def __init__(self, forward: Forward, buckets: tuple[Bucket, ...], *, device: str, pad_id: int, zero_slot: int,
                 capture: Capture = cuda_capture, memory_pool: Callable[[], object] | None = None):
        self.forward, self.buckets, self.capture = forward, buckets, capture
        self.device, self.pad_id, self.zero_slot = device, pad_id, zero_slot
        self.memory_pool = memory_pool or (lambda: None)
        self.graphs: dict[Bucket, _Graph] = {}

    def pick(self, rows: int, length: int) -> Bucket | None:
        return next((b for b in self.buckets if b.rows >= rows and b.length >= length), None)

    def capture_all(self, name: str) -> None:
        self.graphs.clear()
        pool, started = self.memory_pool(), time.perf_counter()
        for index, bucket in enumerate(reversed(self.buckets), 1):
            self.graphs[bucket] = _Graph(bucket, self.forward, self.capture, pool, self.device, self.pad_id,
                                         self.zero_slot)
            if index % 8 == 0 or index == len(self.buckets):
                log.info("%s: captured %d/%d CUDA graphs (%.1f s)", name, index, len(self.buckets),
                         time.perf_counter() - started)

    def run(self, ids: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor | None:
        bucket = self.pick(*ids.shape)
        graph = self.graphs.get(bucket) if bucket is not None else None
        return None if graph is None else graph.run(ids, lengths, slots)
