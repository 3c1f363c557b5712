"""The adapter registry of one model: the only place that knows adapter names. It assigns backend
slots, enforces `max_loras_per_model`, reads each adapter once (preloaded at start, dynamic in the
background), hands out leases, and evicts the least recently used idle adapter when full.

All state changes happen on the event loop, so "is it resident?" and "take a lease" are one atomic
step: a request holds a lease from admission until its rows are answered, and an adapter with
leases is never evicted or unloaded under them. Loads run one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from server import errors
from server.adapters.entry import AdapterEntry, AdapterInfo, AdapterState, Lease
from server.adapters.loader import AdapterLoader
from server.adapters.policy import AdapterSources, SourceRefused
from server.adapters.stats import LoadStats
from server.backends.base import Backend
from server.config import ConfigError

log = logging.getLogger(__name__)
ROOM_WAIT_S = 30.0
NO_ROOM_RETRY_S = 1.0  # how long a "no slot" answer is reused before a request tries for a slot again


class AdapterRegistry:
    def __init__(self, model: str, backend: Backend, *, capacity: int, max_rank: int, failure_ttl_s: float,
                 allow_noop: bool = False):
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
                                        "rank": None, "target_modules": [], "bytes": None, "last_used": None,
                                        "in_flight": 0, "cause": "unloaded by an operator; a request for it, or "
                                                                 "POST .../loras {\"name\": ...}, restores it"})
        return [described[name] for name in sorted(described)]

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
        return Lease(name, entry.slot)

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
            self.load_stats.failed(exc)
            raise
        return self._start_load(name, source, pinned=name in self.configured)

    # -- admin path ------------------------------------------------------------------------------
    async def load(self, name: str, source: str | None = None, *, pin: bool = False) -> tuple[dict, bool]:
        """Load (or find) an adapter and wait for it; returns (description, created). Without a source: the
        resident adapter of that name, wherever it came from, else from where the model's config says (a
        preloaded adapter comes back pinned)."""
        entry = self.entries.get(name)
        if entry is not None and entry.state is AdapterState.FAILED:
            del self.entries[name]
            entry = None
        if source is None:
            source = checked = entry.source if entry is not None else self.source_for(name)
            pin = pin or name in self.configured
        else:
            checked = self._checked(name, source)
        if entry is not None and entry.source not in (source, checked):
            raise errors.AdapterConflict(f"adapter {name!r} is already loaded from {entry.source!r}")
        created = entry is None
        if created:
            entry = self._start_load(name, checked, pinned=pin)
        await entry.settled.wait()
        if entry.state is AdapterState.FAILED:
            raise self._failure(entry, retry_hint=False)  # this request is the retry the hint would advise
        entry.pinned = entry.pinned or pin
        return entry.describe(), created

    async def reload(self, name: str, source: str | None = None) -> dict:
        """Read `name` again (from `source`, else from where it came) into a free slot and switch to it at
        once: requests admitted before the switch finish on the old weights, later ones get the new; the
        old slot is freed once its rows are answered. A failed read leaves the loaded adapter serving."""
        old = self.entries.get(name)
        if old is None or not old.ready:
            raise errors.AdapterNotFound(f"adapter {name!r} is not loaded for model {self.model!r}; load it first")
        fresh = AdapterEntry(name, old.source if source is None else self._checked(name, source), pinned=old.pinned)
        async with self._load_lock:
            self.counters["loads"] += 1
            try:
                await self._make_room(keep=old)
                await self._install(fresh)
            except errors.AdapterCapacityFull as exc:
                self.load_stats.failed(exc)
                raise
            except Exception as exc:
                self.counters["load_failures"] += 1
                self.load_stats.failed(exc)
                raise errors.AdapterLoadFailed(f"adapter {name!r} was not reloaded, the loaded one keeps serving: "
                                               f"{exc}", field="lora_id") from None
        fresh.last_used = old.last_used
        fresh.settled.set()
        old.state = AdapterState.UNLOADING
        self.entries[name] = fresh
        self._retiring.append(old)
        log.info("%s: adapter %r reloaded from %s (slot %d; slot %d frees when its rows finish)", self.model, name,
                 fresh.source, fresh.slot, old.slot)
        while old.leases:
            self._released.clear()
            await self._released.wait()
        await self._remove(old)
        self._retiring.remove(old)
        return fresh.describe()

    def _checked(self, name: str, source: str) -> str:
        try:
            return self.sources.dynamic.check_source(source)
        except SourceRefused as exc:
            raise errors.InvalidInput(f"source refused for adapter {name!r}: {exc}", field="source",
                                      said=(name, source)) from None

    def _failure(self, entry: AdapterEntry, *, retry_hint: bool = True) -> errors.ServingError:
        """A failed entry as the client is told: 503 for want of a slot, else 400 with how long it is
        remembered and (`retry_hint`) how to retry now."""
        if entry.refusal is not None:
            return type(entry.refusal)(f"adapter {entry.name!r} cannot be loaded now: {entry.cause}")
        if not retry_hint:
            return errors.AdapterLoadFailed(f"adapter {entry.name!r} failed to load: {entry.cause}", field="lora_id")
        left = max(0.0, self.failure_ttl_s - (time.monotonic() - entry.failed_at))
        return errors.AdapterLoadFailed(
            f"adapter {entry.name!r} failed to load: {entry.cause} (remembered for another {left:.0f} s, "
            f"lora_failure_ttl_s; to retry now: POST /v1/models/{self.model}/loras {{\"name\": \"{entry.name}\"}})",
            field="lora_id")

    async def unload(self, name: str, *, eviction: bool = False, force: bool = False) -> None:
        """Stop admitting requests for `name`, wait for its in-flight rows, then drop it. `eviction`: an
        outside LRU (scale-out's) chose it, so it counts as one. A preloaded adapter needs `force`."""
        entry = self.entries.get(name)
        if entry is None:
            raise errors.AdapterNotFound(f"adapter {name!r} is not loaded for model {self.model!r}")
        if name in self.configured and not (force or eviction):
            raise errors.AdapterPinned(
                f"adapter {name!r} is preloaded by the model config (lora_paths) and pinned; profiles and "
                f"clients rely on it. Unload it anyway with ?force=true; a request for it, or POST "
                f".../loras {{\"name\": \"{name}\"}}, loads it back from {self.configured[name]!r}")
        await entry.settled.wait()
        if entry.ready:
            entry.state = AdapterState.UNLOADING
            while entry.leases:
                self._released.clear()
                await self._released.wait()
            await self._remove(entry)
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
            try:
                await self._make_room()
                await self._install(entry)
            except Exception as exc:
                self.load_stats.failed(exc)
                entry.state, entry.cause, entry.failed_at = AdapterState.FAILED, str(exc), time.monotonic()
                if isinstance(exc, errors.AdapterCapacityFull):  # the pool's state, not the adapter's failure
                    entry.refusal = exc
                    self._refused[entry.name] = exc, entry.failed_at
                    if self.entries.get(entry.name) is entry:
                        del self.entries[entry.name]
                    log.warning("%s: adapter %r not loaded: %s", self.model, entry.name, exc)
                else:
                    self.counters["load_failures"] += 1
                    log.warning("%s: adapter %r failed to load: %s", self.model, entry.name, exc)
            finally:
                entry.settled.set()

    async def inspect(self, name: str, source: str) -> AdapterInfo:
        """Read and validate without installing (`launch.py check` of adapters loaded on demand)."""
        return AdapterInfo.of(await self.loader.read(name, source))

    async def _install(self, entry: AdapterEntry) -> None:
        """Read and validate the adapter once, then install it at a free slot (timed for /metrics)."""
        log.info("%s: loading adapter %r from %s", self.model, entry.name, entry.source)
        started = time.perf_counter()
        adapter = await self.loader.read(entry.name, entry.source)
        slot = min(set(range(self.capacity)) - self._occupied())
        entry.slot = slot  # reserved while the backend installs, so no other load takes it
        try:
            await self.loader.install(adapter, slot, pinned=entry.pinned)
        except BaseException:
            entry.slot = None
            raise
        entry.info, entry.state = AdapterInfo.of(adapter), AdapterState.READY
        self.load_stats.loaded(time.perf_counter() - started)

    async def _remove(self, entry: AdapterEntry) -> None:
        await self.backend.remove(entry.slot)
        entry.slot = None

    def _occupied(self) -> set[int]:
        return {e.slot for e in (*self.entries.values(), *self._retiring) if e.slot is not None}

    def _check_not_pinned_full(self, keep: AdapterEntry | None = None) -> None:
        """AdapterPoolPinned when every slot is taken and every resident adapter (but `keep`) is pinned."""
        holders = [e for e in (*self.entries.values(), *self._retiring) if e.slot is not None and e is not keep]
        if len(self._occupied()) < self.capacity or not holders:
            return
        if all(e.ready and e.pinned for e in holders):  # a loading or retiring holder frees up on its own
            pinned = ", ".join(sorted(e.name for e in holders))
            raise errors.AdapterPoolPinned(
                f"no free adapter slot: every one of the {self.capacity} slots (max_loras_per_model) holds a pinned "
                f"adapter ({pinned}); an operator must unload one (DELETE /v1/models/{self.model}/loras/<name>"
                f"?force=true) or raise max_loras_per_model")

    def _victim(self, keep: AdapterEntry | None) -> AdapterEntry | None:
        idle = [e for e in self.entries.values() if e.ready and not e.pinned and e.leases == 0 and e is not keep]
        return min(idle, key=lambda e: e.last_used, default=None)

    async def _make_room(self, keep: AdapterEntry | None = None) -> None:
        """A free slot, evicting the least recently used idle adapter (never `keep`) when full."""
        deadline = time.monotonic() + ROOM_WAIT_S
        while len(self._occupied()) >= self.capacity:
            victim = self._victim(keep)
            if victim is not None:
                victim.state = AdapterState.UNLOADING
                log.info("%s: evicting adapter %r (least recently used)", self.model, victim.name)
                await self._remove(victim)
                self.entries.pop(victim.name, None)
                self.counters["evictions"] += 1
                continue
            self._check_not_pinned_full(keep)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.AdapterCapacityFull(f"no free adapter slot: the {self.capacity} resident adapters "
                                                 f"stayed busy for {ROOM_WAIT_S:.0f} s; retry shortly")
            self._released.clear()
            try:
                await asyncio.wait_for(self._released.wait(), remaining)
            except TimeoutError:
                pass
