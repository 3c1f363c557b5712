"""Retrieval metrics on hand-made rankings, checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from server.training.retrieval_metrics import ndcg, rank_documents, recall_at, reciprocal_rank, retrieval_metrics


def test_single_relevant_document_at_each_position():
    ranking = ["d3", "d1", "d7", "d2", "d9", "d4", "d5", "d6", "d8", "d0", "d10"]
    assert recall_at(ranking, {"d3"}, 1) == 1.0
    assert recall_at(ranking, {"d7"}, 1) == 0.0 and recall_at(ranking, {"d7"}, 5) == 1.0
    assert reciprocal_rank(ranking, {"d7"}) == pytest.approx(1 / 3)
    assert ndcg(ranking, {"d7"}) == pytest.approx(1 / math.log2(4))
    assert reciprocal_rank(ranking, {"d10"}) == 0.0 and ndcg(ranking, {"d10"}) == 0.0  # rank 11: past @10


def test_several_relevant_documents():
    ranking = ["a", "x", "b", "y", "z"]
    assert recall_at(ranking, {"a", "b", "c"}, 5) == pytest.approx(2 / 3)
    assert reciprocal_rank(ranking, {"b", "a"}) == 1.0
    expected = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))
    assert ndcg(ranking, {"a", "b", "c"}) == pytest.approx(expected)


def test_means_over_queries():
    rankings = [["a", "b"], ["b", "a"], ["c", "a"]]
    relevant = [{"a"}, {"a"}, {"x"}]
    result = retrieval_metrics(rankings, relevant)
    assert result["recall@1"] == pytest.approx(1 / 3)
    assert result["recall@5"] == pytest.approx(2 / 3)
    assert result["mrr@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert result["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert list(result) == ["recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10"]


def test_bad_input_is_refused():
    with pytest.raises(ValueError):
        retrieval_metrics([["a"]], [])
    with pytest.raises(ValueError):
        retrieval_metrics([["a"]], [set()])


def test_cosine_ranking_orders_by_similarity_and_keeps_ties_in_corpus_order():
    documents = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 0.0]])
    queries = np.array([[0.0, 3.0], [1.0, 0.0]])
    rankings = rank_documents(queries, documents, ["x", "y", "xy", "x2"], depth=3)
    assert rankings[0] == ["y", "xy", "x"]
    assert rankings[1] == ["x", "x2", "xy"]  # x and x2 tie (same direction): corpus order
