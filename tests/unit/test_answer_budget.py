"""server/answer_budget.py: the bytes an answer may take, and the budget of one answer and of those pending."""

from __future__ import annotations

import pytest

from server import errors
from server.answer_budget import AnswerBudget, answer_bytes

SIZES = {"dense": 1024, "sparse": 250002, "multivector": 1024}


def test_answer_bytes_counts_each_output_as_float32():
    assert answer_bytes([10, 20], ("dense",), SIZES) == 2 * 4096
    assert answer_bytes([8192], ("multivector",), SIZES) == 8192 * 1024 * 4  # 32 MiB for one long bge-m3 text
    assert answer_bytes([10], ("sparse",), SIZES) == 80  # at most one entry per token
    assert answer_bytes([10], ("dense", "sparse", "multivector"), SIZES) == 4096 + 80 + 40960


def test_budget_refuses_one_big_answer_and_too_many_pending():
    budget = AnswerBudget(per_request=100, pending_limit=150)
    with pytest.raises(errors.InvalidInput, match="max_response_bytes"), budget.held(101):
        pass
    with budget.held(100):
        assert budget.pending == 100
        with pytest.raises(errors.QueueFull), budget.held(60):
            pass
        with budget.held(50):
            assert budget.pending == 150
    assert budget.pending == 0
    with pytest.raises(RuntimeError), budget.held(10):
        raise RuntimeError("a failed forward still frees its share")
    assert budget.pending == 0
