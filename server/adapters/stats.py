"""What the registry counts for /metrics, read at scrape time: adapter load times (a cumulative histogram,
and count and seconds by the tier a load read from) and failed loads by cause."""

from __future__ import annotations

from dataclasses import dataclass, field

from server import errors
from server.adapters.loader import NO_EFFECT
from server.lora.peft_format import AdapterError
from server.sources import SourceError

LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CAUSES = ("invalid_adapter", "no_effect", "source", "no_slot", "other")
LOAD_TIERS = ("disk", "host")  # where a load read the adapter from


def failure_cause(exc: BaseException) -> str:
    """A bounded label for why a load failed."""
    if isinstance(exc, errors.AdapterCapacityFull):
        return "no_slot"
    if isinstance(exc, AdapterError):
        return "no_effect" if NO_EFFECT in str(exc) else "invalid_adapter"
    if isinstance(exc, (SourceError, errors.InvalidInput)):
        return "source"
    return "other"


@dataclass
class LoadStats:
    buckets: list[int] = field(default_factory=lambda: [0] * len(LOAD_BUCKETS))  # cumulative counts
    count: int = 0
    total_s: float = 0.0
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0))
    by_tier: dict[str, list] = field(default_factory=lambda: {tier: [0, 0.0] for tier in LOAD_TIERS})

    def loaded(self, seconds: float, tier: str = "disk") -> None:
        self.count += 1
        self.total_s += seconds
        self.by_tier[tier][0] += 1
        self.by_tier[tier][1] += seconds
        for index, bound in enumerate(LOAD_BUCKETS):
            if seconds <= bound:
                self.buckets[index] += 1

    def failed(self, exc: BaseException) -> None:
        self.failures[failure_cause(exc)] += 1
