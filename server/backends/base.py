"""The backend contract: token ids + one adapter slot per row in, one pooled vector per row out (and, for a
model with sparse or multivector heads, each row's requested outputs from the same forward).

The server owns tokenisation, templates, truncation, batching, post-processing and every adapter name
(the adapter registry assigns slots). A backend loads the base model, installs validated adapter
weights at a slot, removes them, and runs forwards. Async only; errors it raises are domain errors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from server import errors
from server.lora.peft_format import LoraAdapter

DENSE_ONLY = frozenset({"dense"})


@dataclass(frozen=True)
class TokenBatch:
    """Rows to embed: `input_ids[i]` (ending with the pooling EOS) under adapter slot `slots[i]` (None = base),
    asking for the output types `outputs[i]` (dense alone when not given)."""

    input_ids: Sequence[Sequence[int]]
    slots: Sequence[int | None]
    outputs: Sequence[frozenset[str]] = ()

    def __post_init__(self) -> None:
        if not self.outputs:
            object.__setattr__(self, "outputs", (DENSE_ONLY,) * len(self.input_ids))
        if not len(self.input_ids) == len(self.slots) == len(self.outputs):
            raise ValueError("input_ids, slots and outputs must have one entry per row")

    @property
    def dense_only(self) -> bool:
        """Every row asks for its pooled vector alone: the backend's (compiled, graphed) `embed` serves it."""
        return all(kinds == DENSE_ONLY for kinds in self.outputs)

    def split(self, at: int) -> tuple[TokenBatch, TokenBatch]:
        return (TokenBatch(self.input_ids[:at], self.slots[:at], self.outputs[:at]),
                TokenBatch(self.input_ids[at:], self.slots[at:], self.outputs[at:]))


@dataclass(frozen=True)
class SparseVector:
    """Non-zero weights by token id: `indices` int32 ascending, `values` float32 > 0."""

    indices: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class RowOutputs:
    """One row's requested outputs, raw: dense pooled and multivector rows not normalised."""

    dense: np.ndarray | None = None  # [hidden]
    sparse: SparseVector | None = None
    multivector: np.ndarray | None = None  # [tokens, dim]: every position after the first, padding excluded


@dataclass(frozen=True)
class BackendInfo:
    """What the rest of the server needs to know about a started backend."""

    hidden_size: int
    linear_shapes: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # LoRA-capable: path -> (in, out)
    max_input_tokens: int | None = None  # a backend-side limit below the model's max_seq_len, if any
    description: str = ""  # one line for logs and `launch.py check`
    embeds: bool = True  # False for the dry run, which loads no weights
    outputs: Mapping[str, int] = field(default_factory=dict)  # output type -> its size; {} means dense only

    def output_dims(self) -> dict[str, int]:
        """Each output the model gives -> its size (dense: hidden size, sparse: vocabulary, multivector: per token)."""
        return dict(self.outputs) if self.outputs else {"dense": self.hidden_size}


@dataclass(frozen=True)
class EngineStats:
    """What a compiling backend's start-up did: graphs dynamo compiled, CUDA graphs captured of those
    planned, and the seconds of each warm-up phase (compile, graph_capture before ready,
    graph_capture_background after it)."""

    compiles: int = 0
    graphs_captured: int = 0
    graphs_planned: int = 0
    phases: Mapping[str, float] = field(default_factory=dict)


class Backend(ABC):
    """One loaded base model with adapter slots."""

    @abstractmethod
    async def start(self, slots: int) -> None:
        """Load the base model with room for `slots` resident adapters (the registry's capacity; it
        installs at slots 0..slots-1). Blocking work runs off the event loop."""

    @property
    @abstractmethod
    def info(self) -> BackendInfo:
        """Valid once `start` returned."""

    @abstractmethod
    async def embed(self, batch: TokenBatch) -> np.ndarray:
        """Pooled (not normalised) float32 vectors, shape [rows, hidden_size], in row order."""

    async def embed_outputs(self, batch: TokenBatch) -> list[RowOutputs]:
        """Each row's requested outputs (`batch.outputs`) from one forward. Backends with output heads
        override it; a dense-only backend answers dense rows through `embed`."""
        others = set().union(*(batch.outputs or [DENSE_ONLY])) - DENSE_ONLY
        if others:
            raise errors.NotSupported(f"this backend gives dense vectors only, not {', '.join(sorted(others))}")
        return [RowOutputs(dense=vector) for vector in await self.embed(batch)]

    @abstractmethod
    async def install(self, slot: int, adapter: LoraAdapter, *, pinned: bool = False) -> None:
        """Make a validated adapter's weights resident at `slot` (`pinned`: a hint that it stays)."""

    @abstractmethod
    async def remove(self, slot: int) -> None:
        """Drop the weights at `slot`."""

    async def warm_up(self) -> None:  # noqa: B027 - optional; most backends have nothing to prepare
        """Called once the start-up adapters are installed, before the model is ready: compile, capture
        graphs, or anything else the first request should not pay for. Work that can wait (the remaining
        CUDA graphs) may go on between batches after it returns."""

    def engine_stats(self) -> EngineStats:
        """Compile and graph counts and warm-up phase seconds (none for a backend that compiles nothing)."""
        return EngineStats()

    @abstractmethod
    async def close(self) -> None:
        """Release the model and any helper processes."""
