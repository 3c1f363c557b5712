"""Each row's raw outputs -> what a request is answered with: dense vectors finished as before (dims,
normalisation, dtype), multivectors normalised per token and converted like dense (never truncated), sparse
weights as they are (float32); and the bytes an answer can take, which the response and queue limits count."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from server import errors
from server.backends.base import RowOutputs, SparseVector
from server.options import EncodeOptions
from server.postprocess import finish

SPARSE_ENTRY_BYTES = 8  # an int32 index and a float32 weight


@dataclass(frozen=True)
class Answers:
    """The outputs of a request's items, each present when asked for."""

    dense: np.ndarray | None = None  # [items, dims] in the requested dtype
    sparse: tuple[SparseVector, ...] | None = None
    multivector: tuple[np.ndarray, ...] | None = None  # each [tokens, token_dims] in the requested dtype


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


def finish_rows(rows: Sequence[RowOutputs], options: EncodeOptions, *, dims: int | None,
                normalize: bool) -> Answers:
    """Post-process the rows of one request, each with the outputs it asked for."""
    wanted = options.output_types
    dense = None
    if "dense" in wanted:
        dense = finish(np.stack([row.dense for row in rows]), dims=dims, normalize=normalize,
                       output_dtype=options.output_dtype)
    multivector = None
    if "multivector" in wanted:
        multivector = tuple(finish(row.multivector, dims=None, normalize=normalize, output_dtype=options.output_dtype)
                            for row in rows)
    sparse = tuple(row.sparse for row in rows) if "sparse" in wanted else None
    return Answers(dense=dense, sparse=sparse, multivector=multivector)
