"""Loading, reloading, unloading and evicting adapters for the registry (its admin path and what a request's
first use starts): one load at a time, each adapter read once, installed at a free slot, the least recently
used idle adapter evicted when the pool is full, and a full pool said as such (never the adapter's failure)."""

from __future__ import annotations

import asyncio
import logging
import time

from server import errors
from server.adapters.entry import AdapterEntry, AdapterInfo, AdapterState
from server.adapters.host_tier import folder_stamp
from server.adapters.policy import SourceRefused

log = logging.getLogger("server.adapters.registry")
ROOM_WAIT_S = 30.0


class AdapterLoading:
    """The loading half of `AdapterRegistry` (a mixin over its state: entries, slots, counters)."""

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
                await self._install(fresh, from_host=False)
            except errors.AdapterCapacityFull as exc:
                self._count_failure(exc)
                raise
            except Exception as exc:
                self._count_failure(exc)
                raise errors.AdapterLoadFailed(f"adapter {name!r} was not reloaded, the loaded one keeps serving: "
                                               f"{exc}", field="lora_id") from None
        fresh.last_used = old.last_used
        fresh.settled.set()
        old.state = AdapterState.UNLOADING
        self.entries[name] = fresh
        self._retiring.append(old)
        log.info("%s: adapter %r reloaded from %s (slot %d; slot %d frees when its rows finish)", self.model, name,
                 fresh.source, fresh.slot, old.slot)
        await self._until_idle(old)
        await self._remove(old, keep=False)  # replaced: its weights are not the adapter's any more
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
            await self._until_idle(entry)
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
                self._count_failure(exc)
                entry.state, entry.cause, entry.failed_at = AdapterState.FAILED, str(exc), time.monotonic()
                if isinstance(exc, errors.AdapterCapacityFull):  # the pool's state, not the adapter's failure
                    entry.refusal = exc
                    self._refused[entry.name] = exc, entry.failed_at
                    if self.entries.get(entry.name) is entry:
                        del self.entries[entry.name]
                    log.warning("%s: adapter %r not loaded: %s", self.model, entry.name, exc)
                else:
                    log.warning("%s: adapter %r failed to load: %s", self.model, entry.name, exc)
            finally:
                entry.settled.set()

    async def inspect(self, name: str, source: str) -> AdapterInfo:
        """Read and validate without installing (`launch.py check` of adapters loaded on demand)."""
        return AdapterInfo.of(await self.loader.read(name, source))

    async def _install(self, entry: AdapterEntry, *, from_host: bool = True) -> None:
        """Install the adapter at a free slot: from the host tier when it holds an unchanged copy (a copy: it
        was read, validated and checked before), else read and validated from its source once (timed by tier
        for /metrics)."""
        started = time.perf_counter()
        held = self.host.take(entry.name, entry.source) if from_host else None
        if held is None:
            self.host.drop(entry.name)
            log.info("%s: loading adapter %r from %s", self.model, entry.name, entry.source)
            adapter = await self.loader.read(entry.name, entry.source)
            stamp = await asyncio.to_thread(folder_stamp, adapter.source)
        else:
            adapter, stamp = held.adapter, held.stamp
            log.info("%s: loading adapter %r from host memory", self.model, entry.name)
        slot = min(set(range(self.capacity)) - self._occupied())
        entry.slot = slot  # reserved while the backend installs, so no other load takes it
        try:
            await self.loader.install(adapter, slot, pinned=entry.pinned, check=held is None)
        except BaseException:
            entry.slot = None
            raise
        entry.info, entry.state, entry.host_copy = AdapterInfo.of(adapter), AdapterState.READY, (adapter, stamp)
        self.load_stats.loaded(time.perf_counter() - started, tier="disk" if held is None else "host")

    async def _remove(self, entry: AdapterEntry, *, keep: bool = True) -> None:
        """Free the entry's slot; with `keep`, its weights stay in the host tier (within its budget)."""
        await self.backend.remove(entry.slot)
        entry.slot = None
        if keep and entry.host_copy is not None:
            self.host.keep(entry.name, entry.source, *entry.host_copy)
        entry.host_copy = None

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
