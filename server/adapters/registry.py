"""The adapter registry of one model: the only place that knows adapter names. This half holds the names
and their state, what a request may name, and the leases: all on the event loop, so "is it resident?" and
"take a lease" are one atomic step; a request holds a lease from admission until its rows are answered, and
an adapter with leases is never evicted or unloaded under them. Loading, eviction and the admin path are
the other half (`adapters/loading`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from server import errors
from server.adapters.entry import AdapterEntry, AdapterState, Lease
from server.adapters.host_tier import HostTier
from server.adapters.loader import AdapterLoader
from server.adapters.loading import AdapterLoading
from server.adapters.policy import AdapterSources, SourceRefused
from server.adapters.stats import LoadStats
from server.backends.base import Backend
from server.config import ConfigError

log = logging.getLogger(__name__)
NO_ROOM_RETRY_S = 1.0  # how long a "no slot" answer is reused before a request tries for a slot again


class AdapterRegistry(AdapterLoading):
    def __init__(self, model: str, backend: Backend, *, capacity: int, max_rank: int, failure_ttl_s: float,
                 allow_noop: bool = False, host_bytes: int = 0):
        self.loader = AdapterLoader(model, backend, max_rank=max_rank, allow_noop=allow_noop)
        self.model = model
        self.backend = backend
        self.capacity = capacity  # max_loras_per_model: resident adapters, and so backend slots
        self.failure_ttl_s = failure_ttl_s
        self.sources = AdapterSources()
        self.configured: Mapping[str, str] = {}  # preloaded from the model config: restorable by name
        self.entries: dict[str, AdapterEntry] = {}
        self._retiring: list[AdapterEntry] = []  # replaced by a reload, their slot freed once their rows finish
        self.counters = {"loads": 0, "load_failures": 0, "evictions": 0}
        self.load_stats = LoadStats()
        self.host = HostTier(host_bytes)  # evicted adapters' weights, so loading one again is a copy
        self._load_lock = asyncio.Lock()
        self._released = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        # name -> (why no slot could be had, when): answered for NO_ROOM_RETRY_S, never listed as a failure
        self._refused: dict[str, tuple[errors.AdapterCapacityFull, float]] = {}

    # -- start -----------------------------------------------------------------------------------
    async def open(self, *, sources: AdapterSources, preload: Mapping[str, str], probe: list[int] | None = None,
                   on_loaded: Callable[[str], None] = lambda name: None) -> None:
        """Set the source policy and make every preloaded adapter resident (pinned); raises on the first
        adapter that cannot be served. `probe`: token ids for the adapter-effect check (None: weights only)."""
        self.sources, self.configured, self.loader.probe = sources, dict(preload), probe
        self.check_preload(preload)
        for name, source in preload.items():
            entry = AdapterEntry(name, source, pinned=True)
            await self._install(entry)
            entry.settled.set()
            self.entries[name] = entry
            on_loaded(name)

    def check_preload(self, preload: Mapping[str, str]) -> None:
        if len(preload) > self.capacity:
            raise ConfigError(f"model {self.model}: {len(preload)} preloaded adapters exceed max_loras_per_model "
                              f"({self.capacity})")

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- what is known ---------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Resident adapters: what a request may name without a load."""
        return sorted(n for n, e in self.entries.items() if e.ready)

    def known(self, name: str) -> bool:
        return name in self.entries or name in self.configured or name in self.sources.catalog

    def loadable(self, name: str) -> bool:
        """Known, or one a request could load (a folder under an adapter root, a hub id `lora_allow` admits)."""
        if self.known(name):
            return True
        try:
            self.sources.locate(name)
        except SourceRefused:
            return False
        return True

    def describe(self) -> list[dict]:
        """Every entry, and each configured adapter that was unloaded (state `unloaded`, restorable)."""
        described = {name: entry.describe() for name, entry in self.entries.items()}
        for name, source in self.configured.items():
            described.setdefault(name, {"name": name, "state": "unloaded", "source": source, "pinned": False,
                                        "rank": None, "target_modules": [], "bytes": None, "digest": None, "tier": None,
                                        "last_used": None,
                                        "in_flight": 0, "cause": "unloaded by an operator; a request for it, or "
                                                                 "POST .../loras {\"name\": ...}, restores it"})
        for name, entry in described.items():
            if entry["tier"] is None:
                entry["tier"] = "host" if name in self.host else "disk"
        return [described[name] for name in sorted(described)]

    def tiers(self) -> dict[str, str]:
        """Where each adapter the registry knows of sits: device (a slot), host (the host tier) or disk."""
        placed = {name: "disk" for name in self.configured}
        placed.update((name, "host") for name in self.host.held)
        placed.update((name, "device") for name in self.names())
        return placed

    def slot_of(self, name: str) -> int | None:
        entry = self.entries.get(name)
        return entry.slot if entry is not None and entry.ready else None

    def name_at(self, slot: int) -> str | None:
        return next((n for n, e in self.entries.items() if e.slot == slot), None)

    # -- request path (event loop only) ----------------------------------------------------------
    def acquire(self, name: str) -> Lease:
        """A lease on a resident adapter, or raise AdapterLoading (a load has started) or UnknownAdapter."""
        entry = self._find_or_start(name)
        if not entry.ready:
            raise errors.AdapterLoading(f"adapter {name!r} is loading; retry shortly")
        entry.leases += 1
        entry.last_used = time.time()
        return Lease(name, entry.slot, entry.info.digest if entry.info else "")

    def release(self, lease: Lease) -> None:
        entry = self.entries.get(lease.name)
        if entry is None or entry.slot != lease.slot:
            entry = next((e for e in self._retiring if e.slot == lease.slot), None)
        if entry is not None and entry.leases > 0:
            entry.leases -= 1
            if entry.leases == 0:
                self._released.set()

    async def ensure(self, name: str) -> None:
        """Make `name` resident and wait for it (scale-out's multiplexed loader); concurrent callers share
        one load."""
        entry = self._find_or_start(name)
        await entry.settled.wait()
        if entry.state is AdapterState.FAILED:
            raise self._failure(entry)

    def source_for(self, name: str) -> str:
        """Where a non-resident adapter would load from, else UnknownAdapter naming what is allowed."""
        if name in self.configured:
            return self.configured[name]
        try:
            return self.sources.locate(name)
        except SourceRefused as exc:
            raise errors.UnknownAdapter(f"unknown lora_id {name!r} for model {self.model!r}: {exc}; "
                                        f"loaded: {', '.join(self.names()) or 'none'}; "
                                        f"{self.sources.describe()}", field="lora_id", said=(name,)) from None

    def _find_or_start(self, name: str) -> AdapterEntry:
        entry = self.entries.get(name)
        if entry is not None and entry.state is AdapterState.FAILED:
            if time.monotonic() - entry.failed_at < self.failure_ttl_s:
                raise self._failure(entry)
            del self.entries[name]
            entry = None
        if entry is not None:
            return entry
        refused, when = self._refused.pop(name, (None, 0.0))
        if refused is not None and time.monotonic() - when < NO_ROOM_RETRY_S:
            self._refused[name] = refused, when
            raise type(refused)(refused.message)
        source = self.source_for(name)
        try:
            self._check_not_pinned_full()  # no load to wait for: say so now, not after a LORA_LOADING
        except errors.AdapterPoolPinned as exc:
            self._count_failure(exc)
            raise
        return self._start_load(name, source, pinned=name in self.configured)

    # -- leases ----------------------------------------------------------------------------------
    async def _until_idle(self, entry: AdapterEntry) -> None:
        """Wait until no request holds a lease on `entry` (it admits no new ones once it is unloading)."""
        while entry.leases:
            self._released.clear()
            await self._released.wait()

    def _count_failure(self, exc: Exception) -> None:
        """A load that did not end resident: counted by cause; a full pool is not the adapter's failure."""
        self.load_stats.failed(exc)
        self.counters["load_failures"] += not isinstance(exc, errors.AdapterCapacityFull)
