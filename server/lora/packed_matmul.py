"""A linear's base matmul through oneDNN on a weight packed once (inductor's freezing packs a compiled CPU
model's weights the same way), with the rows of a call rounded up to one of a few sizes: oneDNN builds a
kernel for each input shape it meets (about 0.3 ms), so a server whose batches vary in rows x length would
otherwise build one for most batches. Used by `backends/packed_linears` and `mixed_linear` on the eager CPU
path; why it is worth it there is in `backends/packed_linears`.

Semantics: y = x @ W.T + b as `F.linear` computes it, to float32 rounding (oneDNN sums in another order);
padding rows are zeros and are cut from the answer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Multiply-adds (tokens x in x out) below which MKL's lower fixed cost wins (measured on the 2-core EPYC: a
# 64 x 64 linear breaks even near 512 tokens, 384 x 384 near 8; `cpu_linears: onednn` packs every call).
CROSSOVER_MACS = 1 << 21
# Weights smaller than this stay unpacked: the gain is microseconds, and under HTTP load (the event loop
# busy beside the forward's threads) the demo's 64-wide model served a fifth fewer c16 x 16 items packed.
SMALLEST_PACKED_WEIGHT = 1 << 16
EXACT_ROWS = 16  # up to this many rows a call keeps its own count; above, 8 sizes per power of two


def worth_packing(weight: torch.Tensor) -> bool:
    return weight.dtype == torch.float32 and weight.numel() >= SMALLEST_PACKED_WEIGHT


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def smallest_input(out_features: int, always: bool) -> int:
    """The fewest input elements (tokens x in) a call needs to run packed (an empty call never is)."""
    return 1 if always else -(-CROSSOVER_MACS // out_features)


def row_bucket(rows: int) -> int:
    """`rows` rounded up to at most 1/8 more: few shapes (about 8 per power of two), little padding."""
    if rows <= EXACT_ROWS:
        return rows
    step = 1 << (rows.bit_length() - 4)
    return -(-rows // step) * step


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    features = x.shape[-1]
    rows = x.numel() // features
    flat = x.reshape(rows, features)
    bucket = row_bucket(rows)
    if bucket != rows:
        flat = F.pad(flat, (0, 0, 0, bucket - rows))
    y = torch.ops.mkldnn._linear_pointwise(flat, packed, bias, "none", [], "")
    return y[:rows].view(*x.shape[:-1], y.shape[-1])
