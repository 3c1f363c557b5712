"""Adapter residency for one model: background loads, remembered failures, LRU eviction, leases.

All state changes happen on the event loop, so "is it resident?" and "take a lease" are one atomic
step: a request holds a lease from admission until its rows are answered, and an adapter with
leases is never evicted or unloaded under them. Loads run one at a time in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from server import errors
from server.backends.base import AdapterInfo, Backend
from server.lora.policy import DynamicSources, SourceRefused
from server.sources import resolve_source

log = logging.getLogger(__name__)
ROOM_WAIT_S = 30.0


@dataclass(eq=False)
class AdapterEntry:
    name: str
    source: str
    pinned: bool
    state: str = "loading"  # loading | ready | failed | unloading
    info: AdapterInfo | None = None
    cause: str | None = None
    failed_at: float = 0.0
    last_used: float = field(default_factory=time.time)
    leases: int = 0
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # load finished (ready or failed)

    def describe(self) -> dict:
        info = self.info
        return {"name": self.name, "state": self.state, "source": self.source, "pinned": self.pinned,
                "rank": info.rank if info else None, "target_modules": list(info.target_modules) if info else [],
                "bytes": info.nbytes if info else None, "last_used": self.last_used, "in_flight": self.leases,
                "cause": self.cause}


def lora_loading(name: str) -> errors.ApiError:
    return errors.ApiError(503, "LORA_LOADING", f"adapter {name!r} is loading; retry shortly", {"Retry-After": "1"})


class AdapterManager:
    def __init__(self, model: str, backend: Backend, *, capacity: int, failure_ttl_s: float):
        self.model = model
        self.backend = backend
        self.capacity = capacity
        self.failure_ttl_s = failure_ttl_s
        self.sources = DynamicSources()
        self.catalog: dict[str, str] = {}  # configured adapters loaded on first use (scale-out replicas)
        self.entries: dict[str, AdapterEntry] = {}
        self.counters = {"loads": 0, "load_failures": 0, "evictions": 0}
        self._load_lock = asyncio.Lock()
        self._released = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()

    def register_preloaded(self, sources: dict[str, str]) -> None:
        for name, info in self.backend.adapters().items():
            entry = AdapterEntry(name, sources.get(name, info.source), pinned=True, state="ready", info=info)
            entry.settled.set()
            self.entries[name] = entry

    def ready_names(self) -> list[str]:
        return sorted(n for n, e in self.entries.items() if e.state == "ready")

    def _unknown(self, lora_id: str, reason: str) -> errors.ApiError:
        on_demand = f"configured: {', '.join(sorted(self.catalog))}; " if self.catalog else ""
        return errors.invalid_input(f"unknown lora_id {lora_id!r} for model {self.model!r}: {reason}; "
                                    f"loaded: {', '.join(self.ready_names()) or 'none'}; {on_demand}"
                                    f"dynamic sources: {self.sources.describe()}")

    # -- request path (event loop only) ----------------------------------------------------------
    def acquire(self, lora_id: str) -> None:
        """Take a lease on a resident adapter, or raise: 503 LORA_LOADING (load started) or 400."""
        entry = self._find_or_start(lora_id)
        if entry.state != "ready":
            raise lora_loading(lora_id)
        entry.leases += 1
        entry.last_used = time.time()

    async def ensure(self, lora_id: str) -> None:
        """Make `lora_id` resident and wait for it (scale-out's multiplexed loader); raises 400 on failure.
        Concurrent callers share one load."""
        entry = self._find_or_start(lora_id)
        await entry.settled.wait()
        if entry.state == "failed":
            raise errors.invalid_input(f"adapter {lora_id!r} failed to load: {entry.cause}")

    def _find_or_start(self, lora_id: str) -> AdapterEntry:
        """The entry for `lora_id`, starting a background load from the catalog or a dynamic source."""
        entry = self.entries.get(lora_id)
        if entry is not None and entry.state == "failed":
            if time.monotonic() - entry.failed_at < self.failure_ttl_s:
                raise errors.invalid_input(f"adapter {lora_id!r} failed to load: {entry.cause}")
            del self.entries[lora_id]
            entry = None
        if entry is not None:
            return entry
        return self._start_load(lora_id, self.source_for(lora_id), pinned=False)

    def source_for(self, lora_id: str) -> str:
        """Where a non-resident adapter would load from (the catalog, then dynamic sources), else 400."""
        source = self.catalog.get(lora_id)
        if source is None:
            try:
                source = self.sources.locate(lora_id)
            except SourceRefused as exc:
                raise self._unknown(lora_id, str(exc)) from None
        if source is None:
            raise self._unknown(lora_id, "not preloaded and not found under any adapter root")
        return source

    def release(self, lora_id: str) -> None:
        entry = self.entries.get(lora_id)
        if entry is not None and entry.leases > 0:
            entry.leases -= 1
            if entry.leases == 0:
                self._released.set()

    # -- admin path ------------------------------------------------------------------------------
    async def load(self, name: str, source: str, *, pin: bool = False) -> tuple[AdapterEntry, bool]:
        """Load (or find) an adapter and wait for it; returns (entry, created). Raises 400/409."""
        try:
            checked = self.sources.check_source(source)
        except SourceRefused as exc:
            raise errors.invalid_input(f"source refused for adapter {name!r}: {exc}") from None
        entry = self.entries.get(name)
        if entry is not None and entry.state == "failed":
            del self.entries[name]
            entry = None
        if entry is not None and entry.source not in (source, checked):
            raise errors.ApiError(409, "LORA_CONFLICT", f"adapter {name!r} is already loaded from {entry.source!r}")
        created = entry is None
        if created:
            entry = self._start_load(name, checked, pinned=pin)
        await entry.settled.wait()
        if entry.state == "failed":
            raise errors.invalid_input(f"adapter {name!r} failed to load: {entry.cause}")
        entry.pinned = entry.pinned or pin
        return entry, created

    async def unload(self, name: str, *, eviction: bool = False) -> None:
        """Stop admitting requests for `name`, wait for its in-flight rows, then drop it. `eviction`: an
        outside LRU (scale-out's) chose it, so it counts as one."""
        entry = self.entries.get(name)
        if entry is None:
            raise errors.ApiError(404, "LORA_NOT_FOUND", f"adapter {name!r} is not loaded for model {self.model!r}")
        await entry.settled.wait()
        if entry.state == "ready":
            entry.state = "unloading"
            while entry.leases:
                self._released.clear()
                await self._released.wait()
            await self.backend.unload_adapter_async(name)
            self.counters["evictions"] += eviction
        self.entries.pop(name, None)

    # -- loading and eviction --------------------------------------------------------------------
    def _start_load(self, name: str, source: str, *, pinned: bool) -> AdapterEntry:
        entry = AdapterEntry(name, source, pinned=pinned)
        self.entries[name] = entry
        task = asyncio.get_running_loop().create_task(self._load(entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return entry

    async def _load(self, entry: AdapterEntry) -> None:
        async with self._load_lock:
            self.counters["loads"] += 1
            log.info("%s: loading adapter %r from %s", self.model, entry.name, entry.source)
            try:
                await self._make_room()
                folder = await asyncio.to_thread(resolve_source, entry.source, kind="adapter")
                entry.info = await self.backend.load_adapter_async(entry.name, str(folder), pinned=entry.pinned)
                entry.state = "ready"
            except Exception as exc:
                self.counters["load_failures"] += 1
                entry.state, entry.cause, entry.failed_at = "failed", str(exc), time.monotonic()
                log.warning("%s: adapter %r failed to load: %s", self.model, entry.name, exc)
            finally:
                entry.settled.set()

    def _victim(self) -> AdapterEntry | None:
        idle = [e for e in self.entries.values() if e.state == "ready" and not e.pinned and e.leases == 0]
        return min(idle, key=lambda e: e.last_used, default=None)

    async def _make_room(self) -> None:
        deadline = time.monotonic() + ROOM_WAIT_S
        while len(self.backend.adapters()) >= self.capacity:
            victim = self._victim()
            if victim is not None:
                victim.state = "unloading"
                log.info("%s: evicting adapter %r (least recently used)", self.model, victim.name)
                await self.backend.unload_adapter_async(victim.name)
                self.entries.pop(victim.name, None)
                self.counters["evictions"] += 1
                continue
            resident = [e for e in self.entries.values() if e.state == "ready"]
            if resident and all(e.pinned for e in resident):
                raise RuntimeError(f"no room: all {len(resident)} resident adapters are pinned "
                                   f"(max_loras_per_model {self.capacity})")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"no room: the {self.capacity} resident adapters stayed busy for {ROOM_WAIT_S:.0f} s")
            self._released.clear()
            try:
                await asyncio.wait_for(self._released.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
