"""Each row's raw outputs -> what a request is answered with: dense vectors finished as before (dims,
normalisation, dtype), multivectors normalised per token and converted like dense (never truncated), sparse
weights as they are (float32). What an answer may take is `answer_budget`'s."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.backends.base import RowOutputs, SparseVector
from server.options import EncodeOptions
from server.postprocess import finish


@dataclass(frozen=True)
class Answers:
    """The outputs of a request's items, each present when asked for."""

    dense: np.ndarray | None = None  # [items, dims] in the requested dtype
    sparse: tuple[SparseVector, ...] | None = None
    multivector: tuple[np.ndarray, ...] | None = None  # each [tokens, token_dims] in the requested dtype


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
