"""The host-memory tier below the backend's slots: adapters evicted (or unloaded) keep their validated
weights in host memory, least recently used first out past a byte budget, so loading one again is a copy
into a slot, not a disk read, validation and effect check. On CUDA the copies are pinned (page-locked), so
that copy runs at the bus's speed. A copy whose folder changed on disk since it was read is not used."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from server.lora.peft_format import LoraAdapter, LoraModule

log = logging.getLogger(__name__)


def folder_stamp(folder: str) -> tuple | None:
    """(name, size, modification time) of each file in an adapter folder; None where it is not a folder here."""
    path = Path(folder)
    try:
        return tuple(sorted((entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
                            for entry in os.scandir(path) if entry.is_file()))
    except OSError:
        return None


def pinned(adapter: LoraAdapter) -> LoraAdapter:
    """The adapter's weights in page-locked memory when CUDA is present (else as they are)."""
    if not torch.cuda.is_available():
        return adapter
    modules = {path: LoraModule(m.a.pin_memory(), m.b.pin_memory(), m.scaling) for path, m in adapter.modules.items()}
    return LoraAdapter(name=adapter.name, source=adapter.source, modules=modules, digest=adapter.digest)


@dataclass(frozen=True)
class HeldAdapter:
    source: str  # the source it was loaded from (a load from another source does not use it)
    adapter: LoraAdapter
    stamp: tuple | None  # its folder's files when read


class HostTier:
    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes
        self.held: OrderedDict[str, HeldAdapter] = OrderedDict()
        self.bytes = 0

    def keep(self, name: str, source: str, adapter: LoraAdapter, stamp: tuple | None) -> None:
        """Hold `adapter` (most recently used), dropping the least recently used past the budget; one larger
        than the whole budget is not held."""
        self.drop(name)
        if adapter.nbytes > self.budget:
            return
        self.held[name] = HeldAdapter(source, pinned(adapter), stamp)
        self.bytes += adapter.nbytes
        while self.bytes > self.budget:
            oldest, held = self.held.popitem(last=False)
            self.bytes -= held.adapter.nbytes
            log.info("host tier: dropped adapter %r (least recently used past %d bytes)", oldest, self.budget)

    def take(self, name: str, source: str) -> HeldAdapter | None:
        """The held copy of `name` loaded from `source` (no longer held: it goes back into a slot), or None
        when there is none, or its folder changed since it was read."""
        held = self.held.get(name)
        if held is None or held.source != source:
            return None
        self.drop(name)
        if held.stamp is not None and folder_stamp(held.adapter.source) != held.stamp:
            log.info("host tier: adapter %r changed on disk; reading it again", name)
            return None
        return held

    def drop(self, name: str) -> None:
        held = self.held.pop(name, None)
        if held is not None:
            self.bytes -= held.adapter.nbytes

    def __contains__(self, name: str) -> bool:
        return name in self.held
