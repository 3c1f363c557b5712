"""Retrieval metrics over ranked document ids with binary relevance: recall@k, MRR@10 and NDCG@10,
averaged over queries (the BEIR / MTEB definitions)."""

from __future__ import annotations

import math
from collections.abc import Sequence, Set

import numpy as np

RECALL_AT = (1, 5, 10)
CUTOFF = 10


def recall_at(ranking: Sequence[str], relevant: Set[str], k: int) -> float:
    return len(set(ranking[:k]) & relevant) / len(relevant)


def reciprocal_rank(ranking: Sequence[str], relevant: Set[str], cutoff: int = CUTOFF) -> float:
    for position, doc in enumerate(ranking[:cutoff], start=1):
        if doc in relevant:
            return 1.0 / position
    return 0.0


def ndcg(ranking: Sequence[str], relevant: Set[str], cutoff: int = CUTOFF) -> float:
    gain = sum(1.0 / math.log2(position + 1)
               for position, doc in enumerate(ranking[:cutoff], start=1) if doc in relevant)
    ideal = sum(1.0 / math.log2(position + 1) for position in range(1, min(len(relevant), cutoff) + 1))
    return gain / ideal


def retrieval_metrics(rankings: Sequence[Sequence[str]], relevant: Sequence[Set[str]]) -> dict[str, float]:
    """Mean metrics over queries; `rankings[i]` is query i's documents best first, `relevant[i]` non-empty."""
    if len(rankings) != len(relevant) or not rankings:
        raise ValueError("one ranking and one non-empty relevant set per query are needed")
    if any(not r for r in relevant):
        raise ValueError("every query needs at least one relevant document")
    scores = {f"recall@{k}": [recall_at(r, rel, k) for r, rel in zip(rankings, relevant)] for k in RECALL_AT}
    scores[f"mrr@{CUTOFF}"] = [reciprocal_rank(r, rel) for r, rel in zip(rankings, relevant)]
    scores[f"ndcg@{CUTOFF}"] = [ndcg(r, rel) for r, rel in zip(rankings, relevant)]
    return {name: float(np.mean(values)) for name, values in scores.items()}


def rank_documents(queries: np.ndarray, documents: np.ndarray, ids: Sequence[str],
                   depth: int = CUTOFF) -> list[list[str]]:
    """Cosine ranking: for each query vector, the ids of its `depth` most similar documents."""
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    d = documents / np.maximum(np.linalg.norm(documents, axis=1, keepdims=True), 1e-12)
    scores = q @ d.T
    # Stable sort on the negated scores: ties keep corpus order, so rankings are reproducible.
    order = np.argsort(-scores, axis=1, kind="stable")[:, :depth]
    return [[ids[j] for j in row] for row in order]
