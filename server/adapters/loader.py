"""Bringing one adapter in: its source read and validated once (PEFT format, the base model's shapes,
the rank limit), the weights installed at a slot, and the effect check: an adapter whose update is zero,
or that a backend installs without applying, is refused with the cause "adapter has no effect"."""

from __future__ import annotations

import asyncio
import logging

from server.backends.base import Backend, TokenBatch
from server.lora.peft_format import AdapterError, LoraAdapter, load_peft_adapter
from server.sources import resolve_source

log = logging.getLogger(__name__)
NO_EFFECT = "adapter has no effect"


class AdapterLoader:
    def __init__(self, model: str, backend: Backend, *, max_rank: int, allow_noop: bool = False):
        self.model = model
        self.backend = backend
        self.max_rank = max_rank
        self.allow_noop = allow_noop
        self.probe: list[int] | None = None  # token ids embedded with and without each new adapter

    async def read(self, name: str, source: str) -> LoraAdapter:
        folder = await asyncio.to_thread(resolve_source, source, kind="adapter")
        if str(folder) != source:
            log.info("%s: adapter %r is the folder %s", self.model, name, folder)
        adapter = await asyncio.to_thread(load_peft_adapter, name, folder, max_rank=self.max_rank,
                                          base_shapes=self.backend.info.linear_shapes)
        if adapter.changes_nothing and not self.allow_noop:
            raise AdapterError(f"adapter {name!r}: {NO_EFFECT}: every lora_A or lora_B is zero (a trainer that "
                               "saved its initial weights?); allow_noop_adapters serves it anyway")
        return adapter

    async def install(self, adapter: LoraAdapter, slot: int, *, pinned: bool, check: bool = True) -> None:
        """Install at `slot` and check the effect (`check`: not for weights that passed it before, from the host
        tier); on any failure the slot is left empty."""
        await self.backend.install(slot, adapter, pinned=pinned)
        try:
            if check:
                await self._check_effect(adapter.name, slot)
        except BaseException:
            await self._remove_quietly(slot)
            raise

    async def _check_effect(self, name: str, slot: int) -> None:
        if self.probe is None or self.allow_noop:
            return
        base, adapted = await self.backend.embed(TokenBatch([self.probe, self.probe], [None, slot]))
        scale = max(float(abs(base).max()), 1.0)
        if float(abs(adapted - base).max()) <= 1e-6 * scale:
            raise AdapterError(f"adapter {name!r}: {NO_EFFECT}: a probe embedded with it equals the base vector "
                               "(the backend drops its deltas?); allow_noop_adapters serves it anyway")

    async def _remove_quietly(self, slot: int) -> None:
        try:
            await self.backend.remove(slot)
        except Exception:
            log.exception("%s: removing a refused adapter from slot %d failed", self.model, slot)
