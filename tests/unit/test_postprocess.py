"""Post-processing: Matryoshka truncation re-normalises; quantised dtypes follow the documented ranges."""

from __future__ import annotations

import numpy as np
import pytest

from server.postprocess import finish


def test_normalise_and_truncate():
    vectors = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    out = finish(vectors, dims=2, normalize=True, output_dtype="float32")
    assert out.shape == (2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], [0.6, 0.8], atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_no_normalise_keeps_values():
    vectors = np.array([[3.0, 4.0]], dtype=np.float32)
    np.testing.assert_array_equal(finish(vectors, dims=None, normalize=False, output_dtype="float32"), vectors)


@pytest.mark.parametrize("dtype, expected", [
    ("float16", np.array([[0.6, -0.8]], dtype=np.float16)),
    ("int8", np.array([[76, -102]], dtype=np.int8)),
    ("uint8", np.array([[204, 25]], dtype=np.uint8)),  # (-0.8f + 1) * 127.5 = 25.49999
])
def test_scalar_dtypes(dtype, expected):
    out = finish(np.array([[0.6, -0.8]], dtype=np.float32), dims=None, normalize=True, output_dtype=dtype)
    assert out.dtype == expected.dtype
    np.testing.assert_array_equal(out, expected)


def test_binary_dtypes_pack_sign_bits():
    vector = np.array([[1, -1, 1, 1, -1, -1, -1, 1, 1, -1, -1, -1, -1, -1, -1, -1]], dtype=np.float32)
    ubinary = finish(vector, dims=None, normalize=True, output_dtype="ubinary")
    binary = finish(vector, dims=None, normalize=True, output_dtype="binary")
    np.testing.assert_array_equal(ubinary, np.array([[0b10110001, 0b10000000]], dtype=np.uint8))
    np.testing.assert_array_equal(binary, (ubinary.astype(np.int16) - 128).astype(np.int8))
