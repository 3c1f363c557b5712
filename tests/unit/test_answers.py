"""server/answers.py: each output of a request finished as asked."""

from __future__ import annotations

import numpy as np

from server.answers import finish_rows
from server.backends.base import RowOutputs, SparseVector
from server.options import EncodeOptions


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
