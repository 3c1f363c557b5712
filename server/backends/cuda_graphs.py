"""CUDA graphs per (rows, length) bucket for small batches, so a short query replays one graph instead of
paying thousands of kernel launches from Python (nano-vllm's per-bucket capture, for a pooled forward).

A batch is padded up to the smallest bucket that holds it: extra rows are one pad token at the zero
adapter slot, extra positions are padding after each row's last token (never seen by a causal decoder,
masked for an encoder), so each real row's vector is what it is alone. Adapter weights live in buffers
that installs overwrite in place and the rank width is fixed at load, so a captured graph serves every
adapter installed or evicted after its capture, and no graph is ever captured twice. The single-row
buckets (what a lone query hits) are captured before the model is ready; the rest one at a time between
batches; a batch whose bucket is not captured yet runs compiled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

GRAPH_MIN_LENGTH = 32

Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (ids, lengths, slots) -> pooled
# (forward, static inputs, memory pool) -> (replay, the static output replay rewrites)
Capture = Callable[[Forward, tuple[torch.Tensor, ...], object], tuple[Callable[[], None], torch.Tensor]]


@dataclass(frozen=True, order=True)
class Bucket:
    tokens: int
    rows: int
    length: int


def plan_buckets(max_length: int, max_tokens: int, max_rows: int) -> tuple[Bucket, ...]:
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
    """One forward on a side stream (lazy set-up: cuBLAS workspaces, the allocator, the compiled kernels'
    variant for this shape), then record one forward."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        forward(*inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        output = forward(*inputs)
    return graph.replay, output


def single_row(buckets: Iterable[Bucket]) -> list[Bucket]:
    """The buckets a lone query hits, largest first (the first capture sizes the shared memory pool)."""
    return sorted((b for b in buckets if b.rows == 1), reverse=True)


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
    """Captured forwards by bucket, sharing one memory pool (graphs replay one at a time, on one thread).
    `capture` records the buckets given that are not captured yet; `run` answers None for a batch whose
    bucket is not captured (yet), which the caller runs compiled."""

    def __init__(self, forward: Forward, buckets: tuple[Bucket, ...], *, device: str, pad_id: int, zero_slot: int,
                 capture: Capture = cuda_capture, memory_pool: Callable[[], object] | None = None):
        self.forward, self.buckets, self.capture_one = forward, buckets, capture
        self.device, self.pad_id, self.zero_slot = device, pad_id, zero_slot
        self.memory_pool = memory_pool or (lambda: None)
        self.graphs: dict[Bucket, _Graph] = {}
        self._pool: object = None

    def pick(self, rows: int, length: int) -> Bucket | None:
        return next((b for b in self.buckets if b.rows >= rows and b.length >= length), None)

    def pending(self) -> list[Bucket]:
        """Planned buckets not captured yet, smallest first (the likeliest to be hit by light traffic)."""
        return [b for b in self.buckets if b not in self.graphs]

    def capture(self, buckets: Iterable[Bucket]) -> float:
        """Record each bucket not captured yet; the seconds it took."""
        started = time.perf_counter()
        if not self.graphs:
            self._pool = self.memory_pool()
        for bucket in buckets:
            if bucket not in self.graphs:
                self.graphs[bucket] = _Graph(bucket, self.forward, self.capture_one, self._pool, self.device,
                                             self.pad_id, self.zero_slot)
        return time.perf_counter() - started

    def run(self, ids: torch.Tensor, lengths: torch.Tensor, slots: torch.Tensor) -> torch.Tensor | None:
        bucket = self.pick(*ids.shape)
        graph = self.graphs.get(bucket) if bucket is not None else None
        return None if graph is None else graph.run(ids, lengths, slots)
