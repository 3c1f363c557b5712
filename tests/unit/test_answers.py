"""Answers: the bytes an answer may take, the answer budget, and each output finished as asked."""

from __future__ import annotations

import numpy as np
import pytest

from server import errors
from server.answers import AnswerBudget, answer_bytes, finish_rows
from server.backends.base import RowOutputs, SparseVector
from server.options import EncodeOptions

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


def test_finish_rows_applies_dims_to_dense_only_and_dtype_to_both():
    rows = [RowOutputs(dense=np.array([3.0, 4.0, 0.0, 0.0], np.float32),
                       sparse=SparseVector(np.array([2, 9], np.int32), np.array([0.5, 1.5], np.float32)),
                       multivector=np.array([[3.0, 4.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]], np.float32))]
    options = EncodeOptions(output_types=("dense", "sparse", "multivector"), output_dtype="float16")
    answers = finish_rows(rows, options, dims=2, normalize=True)
    assert answers.dense.shape == (1, 2) and answers.dense.dtype == np.float16
    np.testing.assert_allclose(answers.dense[0], [0.6, 0.8], atol=1e-3)
    assert answers.multivector[0].shape == (2, 4) and answers.multivector[0].dtype == np.float16
    np.testing.assert_allclose(answers.multivector[0], [[0.6, 0.8, 0, 0], [0, 0, 0, 1]], atol=1e-3)
    assert answers.sparse[0].values.dtype == np.float32
    dense_only = finish_rows([RowOutputs(dense=np.array([1.0, 0.0], np.float32))], EncodeOptions(), dims=None,
                             normalize=False)
    assert dense_only.sparse is None and dense_only.multivector is None and dense_only.dense.shape == (1, 2)
