"""The narrow backend contract: token ids + one adapter name per row in, one pooled vector per row out.

The server owns tokenisation, templates, truncation, adapter names, batching and post-processing;
a backend only runs the model and keeps adapters resident.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np


@dataclass(frozen=True)
class TokenBatch:
    """Rows to embed: `input_ids[i]` (ending with the pooling EOS) under adapter `adapters[i]` (None = base)."""

    input_ids: Sequence[Sequence[int]]
    adapters: Sequence[str | None]

    def __post_init__(self) -> None:
        if len(self.input_ids) != len(self.adapters):
            raise ValueError("input_ids and adapters must have one entry per row")


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    source: str
    rank: int
    target_modules: tuple[str, ...]
    nbytes: int
    pinned: bool = False


class AdapterNotLoaded(KeyError):
    """A row named an adapter the backend does not hold."""


class Backend(ABC):
    """One loaded base model with resident LoRA adapters."""

    hidden_size: int
    max_input_tokens: int | None = None  # a backend-side limit below the model's max_seq_len, if any

    @abstractmethod
    def start(self) -> None:
        """Load the model and the preloaded adapters (blocking; the server calls it off the event loop)."""

    @abstractmethod
    async def embed(self, batch: TokenBatch) -> np.ndarray:
        """Pooled (not normalised) float32 vectors, shape [rows, hidden_size], in row order."""

    @abstractmethod
    def load_adapter(self, name: str, folder: str, *, pinned: bool = False) -> AdapterInfo:
        """Validate and make an adapter resident (blocking); raises AdapterError with the cause."""

    @abstractmethod
    def unload_adapter(self, name: str) -> None:
        """Drop a resident adapter (blocking)."""

    async def load_adapter_async(self, name: str, folder: str, *, pinned: bool = False) -> AdapterInfo:
        """Called on the serving loop; backends with a native async API (SGLang) override it."""
        return await asyncio.to_thread(self.load_adapter, name, folder, pinned=pinned)

    async def unload_adapter_async(self, name: str) -> None:
        await asyncio.to_thread(self.unload_adapter, name)

    @abstractmethod
    def adapters(self) -> Mapping[str, AdapterInfo]:
        """The resident adapters by served name."""

    def close(self) -> None:
        """Release the model and any helper processes."""
