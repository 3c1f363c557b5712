"""The narrow interface the HTTP layer serves a model through: `ModelEngine` in one process, or a
scale-out client that forwards to Ray Serve replicas. Routes, metrics and admin use only this."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

from server.config import ModelConfig
from server.options import EncodeOptions


@dataclass(frozen=True)
class EncodeResult:
    vectors: object  # np.ndarray [items, dims] in the requested dtype
    dims: int
    input_tokens: int
    tokenization_ms: float
    queue_ms: float
    inference_ms: float
    postprocessing_ms: float
    replica: str | None = None  # scale-out: the replica that ran the forward


@dataclass(frozen=True)
class ModelStats:
    """Live state read at scrape time (gauges of /metrics and the inference-gateway series)."""

    queue_depth: int
    running_rows: int
    resident_adapters: tuple[str, ...]
    waiting_adapters: tuple[str, ...]
    loads: int
    load_failures: int
    evictions: int
    max_loras: int


BatchObserver = Callable[[int, int, int], None]


class ServedModel(Protocol):
    name: str
    config: ModelConfig
    state: str  # loading | ready | failed
    failure: str | None

    @property
    def dims(self) -> int: ...

    def check_ready(self) -> None:
        """Raise 503 MODEL_LOADING or 502 MODEL_LOAD_FAILED unless ready."""

    def start(self, on_batch: BatchObserver) -> asyncio.Future:
        """Begin serving (loading continues in the background); the future settles when loading ends."""

    async def stop(self) -> None: ...

    async def encode(self, texts: Sequence[str], options: EncodeOptions) -> EncodeResult: ...

    def adapter_names(self) -> list[str]:
        """Adapters a request may name without a load (for error messages and model lists)."""

    def has_adapter(self, name: str) -> bool:
        """Whether `name` is an adapter of this model (metric labels stay bounded by this)."""

    async def describe_adapters(self) -> list[dict]: ...

    async def load_adapter(self, name: str, source: str, *, pin: bool = False) -> tuple[dict, bool]: ...

    async def unload_adapter(self, name: str) -> None: ...

    def stats(self) -> ModelStats | None:
        """None where the state lives elsewhere (scale-out ingress: each replica exports its own)."""
