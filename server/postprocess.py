"""Vector post-processing: Matryoshka truncation, L2 normalisation and output dtypes.

Quantised dtypes follow sentence-transformers' fixed-range conventions for unit vectors:
int8 = round(v * 127), uint8 = round((v + 1) * 127.5), binary = sign bits packed 8 per byte
(offset by -128 as int8), ubinary = the same bits as uint8.
"""

from __future__ import annotations

import numpy as np

OUTPUT_DTYPES = ("float32", "float16", "int8", "uint8", "binary", "ubinary")


def finish(vectors: np.ndarray, *, dims: int | None, normalize: bool, output_dtype: str) -> np.ndarray:
    """[rows, hidden] float32 -> [rows, dims] in the requested dtype (bits packed for binary types)."""
    if dims is not None and dims < vectors.shape[1]:
        vectors = vectors[:, :dims]
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if normalize:  # four array operations, not linalg.norm's eight: a lone request pays each in cold caches
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
        vectors = vectors / np.maximum(norms, 1e-12)[:, None]
    return quantize(vectors, output_dtype)


def quantize(vectors: np.ndarray, output_dtype: str) -> np.ndarray:
    if output_dtype == "float32":
        return vectors
    if output_dtype == "float16":
        return vectors.astype(np.float16)
    if output_dtype == "int8":
        return np.clip(np.rint(vectors * 127.0), -127, 127).astype(np.int8)
    if output_dtype == "uint8":
        return np.clip(np.rint((vectors + 1.0) * 127.5), 0, 255).astype(np.uint8)
    if output_dtype in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=1)
        return packed if output_dtype == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    raise ValueError(f"unsupported output dtype {output_dtype!r}")
