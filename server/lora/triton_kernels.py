"""Triton kernels of the multi-LoRA static path (ours: the mixed-adapter batch is the product). In the
right-padded [rows, tokens, features] layout a tile of BLOCK_M tokens lies inside one row, so it has one
adapter slot: the grid is fixed by the batch shape (graph-safe), there is no per-batch sorting or segment
metadata beyond the row-slot tensor (SGLang's csgmv and vLLM's punica ops sort tokens into segments), and
programs whose row is at the zero slot (base) or whose adapter leaves that linear alone (rank 0) return
at once.

- `shrink`: u = x @ A[slot]^T for every member of a group of linears that share their input (q/k/v,
  gate/up), from one stacked A [slots, members, max_rank, in], so the input is read once per tile.
- `expand`: y += u_member @ (scale * B)^T[slot], added in place into the base output.
Loop bounds are compile-time constants (Triton 3.6's interpreter fails on runtime bounds with numpy 2.4).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 16
MIN_BLOCK = 16  # tl.dot needs 16 or more along each dimension


@triton.jit
def _shrink_kernel(x_ptr, a_ptr, ranks_ptr, slots_ptr, u_ptr, length, zero_slot, slot_count,
                   stride_xr, stride_xl, stride_as, stride_ag, stride_ar, stride_ur, stride_ul,
                   K: tl.constexpr, WIDTH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr,
                   BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    row = tl.program_id(0)
    tile = tl.program_id(1)
    member = tl.program_id(2)
    slot = tl.load(slots_ptr + row)
    if slot == zero_slot:
        return
    if tl.load(ranks_ptr + member * slot_count + slot) == 0:
        return
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_w = tl.arange(0, BLOCK_W)
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + row * stride_xr + offs_m[:, None] * stride_xl
    a_cols = a_ptr + slot * stride_as + member * stride_ag + offs_w[None, :] * stride_ar
    acc = tl.zeros((BLOCK_M, BLOCK_W), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        xt = tl.load(x_rows + ks[None, :], mask=(offs_m[:, None] < length) & (ks[None, :] < K), other=0.0)
        at = tl.load(a_cols + ks[:, None], mask=(offs_w[None, :] < WIDTH) & (ks[:, None] < K), other=0.0)
        acc += tl.dot(xt, at, input_precision=PRECISION)
    u_out = u_ptr + row * stride_ur + offs_m[:, None] * stride_ul + member * WIDTH + offs_w[None, :]
    tl.store(u_out, acc.to(u_ptr.dtype.element_ty), mask=(offs_m[:, None] < length) & (offs_w[None, :] < WIDTH))


@triton.jit
def _expand_kernel(u_ptr, bt_ptr, ranks_ptr, slots_ptr, y_ptr, length, zero_slot, u_offset,
                   stride_ur, stride_ul, stride_bs, stride_br, stride_yr, stride_yl,
                   N: tl.constexpr, WIDTH: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_W: tl.constexpr, PRECISION: tl.constexpr):
    row = tl.program_id(0)
    tile = tl.program_id(1)
    col = tl.program_id(2)
    slot = tl.load(slots_ptr + row)
    if slot == zero_slot:
        return
    if tl.load(ranks_ptr + slot) == 0:
        return
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = col * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_w = tl.arange(0, BLOCK_W)
    rows_in = offs_m[:, None] < length
    ut = tl.load(u_ptr + row * stride_ur + offs_m[:, None] * stride_ul + u_offset + offs_w[None, :],
                 mask=rows_in & (offs_w[None, :] < WIDTH), other=0.0)
    bt = tl.load(bt_ptr + slot * stride_bs + offs_w[:, None] * stride_br + offs_n[None, :],
                 mask=(offs_w[:, None] < WIDTH) & (offs_n[None, :] < N), other=0.0)
    update = tl.dot(ut, bt, input_precision=PRECISION)
    y_out = y_ptr + row * stride_yr + offs_m[:, None] * stride_yl + offs_n[None, :]
    inside = rows_in & (offs_n[None, :] < N)
    y = tl.load(y_out, mask=inside, other=0.0)
    tl.store(y_out, (y.to(tl.float32) + update).to(y_ptr.dtype.element_ty), mask=inside)


def _block(size: int, most: int) -> int:
    return max(MIN_BLOCK, min(most, triton.next_power_of_2(size)))


def _precision(dtype: torch.dtype) -> str | None:
    """fp32 stays exact (no TF32); half types take Triton's default (the option applies to fp32 only)."""
    return "ieee" if dtype == torch.float32 else None


def shrink(x: torch.Tensor, a: torch.Tensor, ranks: torch.Tensor, row_slots: torch.Tensor, zero_slot: int,
           width: int) -> torch.Tensor:
    """u [rows, tokens, members * width] for x [rows, tokens, in] and a [slots, members, max_rank, in];
    entries of skipped rows (and of members an adapter leaves alone) are left unwritten: `expand` skips
    exactly those."""
    rows, length, features = x.shape
    members = a.shape[1]
    x = x.contiguous()
    u = x.new_empty((rows, length, members * width))
    grid = (rows, triton.cdiv(length, BLOCK_M), members)
    _shrink_kernel[grid](x, a, ranks, row_slots, u, length, zero_slot, ranks.shape[1],
                         x.stride(0), x.stride(1), a.stride(0), a.stride(1), a.stride(2), u.stride(0), u.stride(1),
                         K=features, WIDTH=width, BLOCK_M=BLOCK_M, BLOCK_W=_block(width, width),
                         BLOCK_K=_block(features, 64), PRECISION=_precision(x.dtype))
    return u


def expand(y: torch.Tensor, u: torch.Tensor, bt: torch.Tensor, ranks: torch.Tensor, row_slots: torch.Tensor,
           zero_slot: int, member: int, width: int) -> None:
    """y [rows, tokens, out] += u[..., member's columns] @ bt[slot, :width] in place; bt is
    [slots, max_rank, out] (scale folded in), `ranks` this linear's rank per slot."""
    rows, length, features = y.shape
    assert y.is_contiguous() and bt.stride(2) == 1, "expand writes into a contiguous base output"
    block_n = _block(features, 64)
    grid = (rows, triton.cdiv(length, BLOCK_M), triton.cdiv(features, block_n))
    _expand_kernel[grid](u, bt, ranks, row_slots, y, length, zero_slot, member * width,
                         u.stride(0), u.stride(1), bt.stride(0), bt.stride(1), y.stride(0), y.stride(1),
                         N=features, WIDTH=width, BLOCK_M=BLOCK_M, BLOCK_N=block_n, BLOCK_W=_block(width, width),
                         PRECISION=_precision(y.dtype))
