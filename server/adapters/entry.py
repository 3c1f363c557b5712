"""One adapter's record in the registry (state, slot, leases, info) and the lease a request holds."""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import dataclass, field

from server.lora.peft_format import LoraAdapter


class AdapterState(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    UNLOADING = "unloading"


@dataclass(frozen=True)
class AdapterInfo:
    """What was loaded: read from the validated PEFT folder."""

    source: str
    rank: int
    target_modules: tuple[str, ...]
    nbytes: int
    digest: str = ""  # of the weights as loaded: answers name the adapter that made each vector by it

    @classmethod
    def of(cls, adapter: LoraAdapter) -> AdapterInfo:
        return cls(adapter.source, adapter.rank, adapter.target_modules, adapter.nbytes, adapter.digest)


@dataclass(frozen=True)
class Lease:
    """A request's hold on a resident adapter: its rows run at `slot` and it is not evicted meanwhile;
    `digest` names the weights at that slot."""

    name: str
    slot: int
    digest: str = ""


@dataclass(eq=False)
class AdapterEntry:
    name: str
    source: str
    pinned: bool
    state: AdapterState = AdapterState.LOADING
    slot: int | None = None
    info: AdapterInfo | None = None
    cause: str | None = None
    failed_at: float = 0.0
    refusal: Exception | None = None  # failed for want of a slot, not for what the adapter is: not remembered
    last_used: float = field(default_factory=time.time)
    leases: int = 0
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # load finished (ready or failed)
    host_copy: tuple[LoraAdapter, tuple | None] | None = None  # (weights, folder stamp) for the host tier

    @property
    def ready(self) -> bool:
        return self.state is AdapterState.READY

    def describe(self) -> dict:
        info = self.info
        return {"name": self.name, "state": self.state.value, "source": self.source, "pinned": self.pinned,
                "rank": info.rank if info else None, "target_modules": list(info.target_modules) if info else [],
                "bytes": info.nbytes if info else None, "digest": info.digest if info else None,
                "tier": "device" if self.ready else None,
                "last_used": self.last_used, "in_flight": self.leases,
                "cause": self.cause}
