"""The seam the HTTP layer serves a model through: `LocalModel` in this process, or a scale-out model
that forwards to Ray Serve replicas. Routes, metrics and admin use only this."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from server import errors
from server.backends.base import EngineStats, SparseVector
from server.batching import BatchShape
from server.config import ModelConfig
from server.options import EncodeOptions


class ModelState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


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
    load_seconds: tuple[tuple[float, int], ...] = ()  # (upper bound, loads at most that long), cumulative
    load_seconds_sum: float = 0.0
    load_count: int = 0
    failures_by_cause: tuple[tuple[str, int], ...] = ()
    loads_by_tier: tuple[tuple[str, int, float], ...] = ()  # (tier read from, loads, seconds)
    adapter_tiers: tuple[tuple[str, str], ...] = ()  # (adapter, device | host | disk)
    host_bytes: int = 0  # held in the host tier
    startup_seconds: tuple[tuple[str, float], ...] = ()  # (phase, seconds) in order: tokenizer, weights, ...
    ready_seconds: float | None = None  # from the start of loading to ready
    engine: EngineStats = field(default_factory=EngineStats)  # compiles and CUDA graphs


@dataclass(frozen=True)
class ModelStatus:
    name: str
    state: ModelState
    dims: int = 0
    failure: str | None = None
    config_error: bool = False  # the failure is the operator's to fix (config, adapter files, sources)
    stats: ModelStats | None = None  # None where the state lives elsewhere (scale-out: on each replica)
    outputs: Mapping[str, int] = field(default_factory=dict)  # output type -> size, once loaded ({}: dense)
    base_digest: str | None = None  # of the base model's files, once loaded (what answers' provenance names)

    def output_dims(self) -> dict[str, int]:
        """What `/v1/models` reports: each output type -> its size (dense only until the model is loaded)."""
        return dict(self.outputs) if self.outputs else ({"dense": self.dims} if self.dims else {})

    def require_ready(self) -> None:
        if self.state is ModelState.LOADING:
            raise errors.ModelLoading(f"model {self.name!r} is still loading")
        if self.state is ModelState.FAILED:
            raise errors.ModelLoadFailed(f"model {self.name!r} failed to load: {self.failure or 'unknown cause'}")


@dataclass(frozen=True)
class Provenance:
    """What made a request's vectors: the adapter (the registry's name and the digest of its weights as
    loaded; None for base) and the base model's digest (of its files; None until computed)."""

    adapter: str | None = None
    adapter_digest: str | None = None
    base_digest: str | None = None


@dataclass(frozen=True)
class EncodeResult:
    vectors: object  # np.ndarray [items, dims] in the requested dtype; None when dense was not asked for
    dims: int
    input_tokens: int
    tokenization_ms: float
    queue_ms: float
    inference_ms: float
    postprocessing_ms: float
    replica: str | None = None  # scale-out: the replica that ran the forward
    truncated: tuple[int, ...] = ()  # indices of the items cut to max_seq_len tokens
    sparse: tuple[SparseVector, ...] | None = None  # per item, when asked for
    multivector: tuple[object, ...] | None = None  # per item np.ndarray [tokens, token_dims], when asked for
    output_dims: Mapping[str, int] = field(default_factory=dict)  # sizes of the outputs (sparse: vocabulary)
    provenance: Provenance = Provenance()


BatchObserver = Callable[[BatchShape], None]  # called once per forward batch


class AdapterCatalog(Protocol):
    """Read-only view of a model's adapters."""

    def names(self) -> list[str]:
        """Adapters a request may name without a load (for error messages and model lists)."""

    def known(self, name: str) -> bool:
        """Whether `name` is an adapter of this model (metric labels stay bounded by this)."""

    def loadable(self, name: str) -> bool:
        """Known, or one a request for it would load (under an adapter root, or admitted by `lora_allow`)."""

    def describe(self) -> list[dict]: ...


class AdapterAdmin(Protocol):
    async def load(self, name: str, source: str | None = None, *, pin: bool = False) -> tuple[dict, bool]:
        """Load (or find) and wait; returns (description, created). No source: the configured one."""

    async def reload(self, name: str, source: str | None = None) -> dict:
        """Re-read a resident adapter into a fresh slot and switch to it with no gap (in-flight rows finish
        on the old weights); no source: from where it came."""

    async def unload(self, name: str, *, force: bool = False) -> None:
        """A preloaded adapter answers AdapterPinned unless `force`."""


class ServedModel(Protocol):
    config: ModelConfig
    adapters: AdapterCatalog
    admin: AdapterAdmin | None  # optional part: None where adapters cannot be managed from here

    def status(self) -> ModelStatus: ...

    def start(self, on_batch: BatchObserver) -> asyncio.Future:
        """Begin serving (loading continues in the background); the future settles when loading ends."""

    async def stop(self) -> None: ...

    async def encode(self, texts: Sequence[str], options: EncodeOptions) -> EncodeResult:
        """Raises ModelLoading / ModelLoadFailed unless ready (the one readiness check of a request)."""

    async def encode_each(self, texts: Sequence[str], options: EncodeOptions) -> list[EncodeResult]:
        """Every text under each adapter of `options.lora_ids` (None: base): one result per adapter, in order."""
