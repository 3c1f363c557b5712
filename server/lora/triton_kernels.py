"""Triton kernels of the multi-LoRA static path (ours: the mixed-adapter batch is the product). In the
right-padded [rows, tokens, features] layout a tile of BLOCK_M tokens lies inside one row, so it has one
adapter slot: the grid is fixed by the batch shape (graph-safe), there is no per-batch sorting or segment
metadata beyond the row-slot tensor (SGLang's csgmv and vLLM's punica ops sort tokens into segments), and
programs whose row is at the zero slot (base) or whose adapter leaves that linear alone (rank 0) return
at once.

- `shrink`: u = x @ A[slot]^T for every member of a group of linears that share their input (q/k/v,
  gate/up), from one stacked A [slots, members, max_rank, in]; one program per (row, token tile)
  covers every member, so the input is read once per group (the members' columns side by side in one
  dot). u is float32 whatever the model's dtype: rounding it to bf16 was the larger half of the
  kernels' bf16 error, and it is a few dozen columns.
- `expand`: y += u_member @ (scale * B)^T[slot], added in place into the base output, rounded once.
The width (the model's `max_lora_rank`) is a compile-time constant; each program reads and writes only its
slot's own rank of it (masked loads: a rank-16 adapter in a rank-64 pool moves rank-16 bytes).
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
                   K: tl.constexpr, WIDTH: tl.constexpr, MEMBERS: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    row = tl.program_id(0)
    tile = tl.program_id(1)
    slot = tl.load(slots_ptr + row)
    if slot == zero_slot:
        return
    offs_c = tl.arange(0, BLOCK_C)  # every member's columns side by side: one x tile feeds them all
    member = offs_c // WIDTH
    within = offs_c % WIDTH
    in_group = offs_c < MEMBERS * WIDTH
    ranks = tl.load(ranks_ptr + member * slot_count + slot, mask=in_group, other=0)
    if tl.max(ranks, axis=0) == 0:
        return
    live = in_group & (within < ranks)
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + row * stride_xr + offs_m[:, None] * stride_xl
    a_cols = a_ptr + slot * stride_as + member[None, :] * stride_ag + within[None, :] * stride_ar
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + offs_k
        xt = tl.load(x_rows + ks[None, :], mask=(offs_m[:, None] < length) & (ks[None, :] < K), other=0.0)
        at = tl.load(a_cols + ks[:, None], mask=live[None, :] & (ks[:, None] < K), other=0.0)
        acc += tl.dot(xt, at, input_precision=PRECISION)
    u_out = u_ptr + row * stride_ur + offs_m[:, None] * stride_ul + offs_c[None, :]
    tl.store(u_out, acc, mask=(offs_m[:, None] < length) & live[None, :])


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
    rank = tl.load(ranks_ptr + slot)
    if rank == 0:
        return
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = col * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_w = tl.arange(0, BLOCK_W)
    rows_in = offs_m[:, None] < length
    ut = tl.load(u_ptr + row * stride_ur + offs_m[:, None] * stride_ul + u_offset + offs_w[None, :],
                 mask=rows_in & (offs_w[None, :] < rank), other=0.0)
    bt = tl.load(bt_ptr + slot * stride_bs + offs_w[:, None] * stride_br + offs_n[None, :],
                 mask=(offs_w[:, None] < rank) & (offs_n[None, :] < N), other=0.0)
    update = tl.dot(ut.to(tl.float32), bt.to(tl.float32), input_precision=PRECISION)
    y_out = y_ptr + row * stride_yr + offs_m[:, None] * stride_yl + offs_n[None, :]
    inside = rows_in & (offs_n[None, :] < N)
    y = tl.load(y_out, mask=inside, other=0.0)
    tl.store(y_out, (y.to(tl.float32) + update).to(y_ptr.dtype.element_ty), mask=inside)


def _block(size: int, most: int) -> int:
    return max(MIN_BLOCK, min(most, triton.next_power_of_2(size)))


def _precision(dtype: torch.dtype) -> str | None:
    """An fp32 model stays exact (no TF32); a half model takes Triton's default (TF32 for the expand's fp32
    operands: u keeps 10 mantissa bits there instead of bf16's 7; the option does not apply to half operands)."""
    return "ieee" if dtype == torch.float32 else None


def shrink(x: torch.Tensor, a: torch.Tensor, ranks: torch.Tensor, row_slots: torch.Tensor, zero_slot: int,
           width: int) -> torch.Tensor:
    """u [rows, tokens, members * width] (float32) for x [rows, tokens, in] and a [slots, members, max_rank,
    in]; entries of skipped rows, of members an adapter leaves alone and past each slot's rank are left
    unwritten: `expand` reads none of them."""
    rows, length, features = x.shape
    members = a.shape[1]
    x = x.contiguous()
    u = x.new_empty((rows, length, members * width), dtype=torch.float32)
    grid = (rows, triton.cdiv(length, BLOCK_M))
    _shrink_kernel[grid](x, a, ranks, row_slots, u, length, zero_slot, ranks.shape[1],
                         x.stride(0), x.stride(1), a.stride(0), a.stride(1), a.stride(2), u.stride(0), u.stride(1),
                         K=features, WIDTH=width, MEMBERS=members, BLOCK_M=BLOCK_M,
                         BLOCK_C=_block(members * width, triton.next_power_of_2(members * width)),
                         BLOCK_K=_block(features, 64),
                         PRECISION=_precision(x.dtype))
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
                         PRECISION=_precision(bt.dtype))
