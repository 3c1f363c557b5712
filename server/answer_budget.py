"""The bytes an answer may take, counted before a request is queued: one answer (400 past
`max_response_bytes`) and the answers accepted and not yet sent (503 QUEUE_FULL past
`max_pending_response_bytes`). A multivector is tokens x dim floats per item, so these bound memory."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from server import errors

SPARSE_ENTRY_BYTES = 8  # an int32 index and a float32 weight


def answer_bytes(token_counts: Sequence[int], output_types: Sequence[str], sizes: dict[str, int]) -> int:
    """An upper bound of an answer's size as float32 (the largest output dtype): a dense vector per item, a
    multivector of `tokens x dim` per item, a sparse entry per token at most."""
    total = 0
    for tokens in token_counts:
        total += 4 * sizes.get("dense", 0) if "dense" in output_types else 0
        total += 4 * tokens * sizes.get("multivector", 0) if "multivector" in output_types else 0
        total += SPARSE_ENTRY_BYTES * tokens if "sparse" in output_types else 0
    return total


class AnswerBudget:
    """The answer limits of one model: one answer (400 past `per_request`) and the answers accepted and not
    yet sent (503 QUEUE_FULL past `pending_limit`), both in bytes."""

    def __init__(self, per_request: int, pending_limit: int):
        self.per_request, self.pending_limit = per_request, pending_limit
        self.pending = 0

    @contextmanager
    def held(self, size: int) -> Iterator[None]:
        """Count an answer of `size` bytes as pending while the block runs; refuse it if it does not fit."""
        if size > self.per_request:
            raise errors.InvalidInput(f"the answer would take up to {size / 2**20:.1f} MiB, over the limit of "
                                      f"{self.per_request / 2**20:.1f} MiB (max_response_bytes); a multivector "
                                      "is tokens x dim floats per item: send fewer or shorter items", field="items")
        if self.pending + size > self.pending_limit:
            raise errors.QueueFull(f"answers pending take {self.pending / 2**20:.1f} MiB (limit "
                                   f"{self.pending_limit / 2**20:.1f} MiB)")
        self.pending += size
        try:
            yield
        finally:
            self.pending -= size
