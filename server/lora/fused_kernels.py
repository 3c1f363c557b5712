"""Triton kernels that add a LoRA update inside the op that consumes the base output (ours: on prefill-shaped
embedding batches the LoRA cost is memory traffic, and a separate expand reads and writes every base output
once more). Each reads the group's shrink `u` (float32) and the slot's scaled B^T at the slot's own rank;
base rows (the zero slot) and linears an adapter leaves alone load no LoRA bytes and still get the op.

- `gate_up_silu`: h = silu(g + dg) * (p + dp) from the gate and up base outputs, in float32, rounded once.
- `add_rmsnorm_`: residual += y + dy; y = rmsnorm(residual) * w (o_proj and down_proj into the next norm).
- `head_norm_rope_`: y += dy, then per head an optional RMSNorm (Qwen3's q/k norms) and RoPE, in place.
Loop bounds are compile-time constants (Triton 3.6's interpreter fails on runtime bounds with numpy 2.4).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from server.lora.triton_kernels import BLOCK_M, _block, _precision


@triton.jit
def _lora_rank(ranks_ptr, slots_ptr, row, zero_slot, slot_count, member, HAS_LORA: tl.constexpr):
    """This row's rank for the member (0 for base rows and for a linear its adapter leaves alone)."""
    slot = tl.load(slots_ptr + row)
    rank = 0
    if HAS_LORA:
        rank = tl.load(ranks_ptr + member * slot_count + slot)
        rank = tl.where(slot == zero_slot, 0, rank)
    return slot, rank


@triton.jit
def _update(u_cols, b_rows, rank, offs_m, offs_n, offs_w, length, stride_br, N: tl.constexpr,
            PRECISION: tl.constexpr):
    """u[tile, :rank] @ B^T[:rank, cols] in float32 (u's member columns and the slot's B^T already offset)."""
    ut = tl.load(u_cols + offs_w[None, :], mask=(offs_m[:, None] < length) & (offs_w[None, :] < rank), other=0.0)
    bt = tl.load(b_rows + offs_w[:, None] * stride_br + offs_n[None, :],
                 mask=(offs_w[:, None] < rank) & (offs_n[None, :] < N), other=0.0)
    return tl.dot(ut, bt.to(tl.float32), input_precision=PRECISION)


@triton.jit
def _gate_up_kernel(g_ptr, p_ptr, h_ptr, u_ptr, btg_ptr, btp_ptr, ranks_ptr, slots_ptr, length, zero_slot,
                    slot_count, member_g, member_p, stride_gr, stride_gl, stride_hr, stride_hl, stride_ur,
                    stride_ul, stride_bs, stride_br, N: tl.constexpr, WIDTH: tl.constexpr,
                    HAS_G: tl.constexpr, HAS_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_W: tl.constexpr, PRECISION: tl.constexpr):
    row = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_w = tl.arange(0, BLOCK_W)
    inside = (offs_m[:, None] < length) & (offs_n[None, :] < N)
    at = row * stride_gr + offs_m[:, None] * stride_gl + offs_n[None, :]
    g = tl.load(g_ptr + at, mask=inside, other=0.0).to(tl.float32)
    p = tl.load(p_ptr + at, mask=inside, other=0.0).to(tl.float32)
    u_rows = u_ptr + row * stride_ur + offs_m[:, None] * stride_ul
    slot, rank = _lora_rank(ranks_ptr, slots_ptr, row, zero_slot, slot_count, member_g, HAS_G)
    if rank > 0:
        g += _update(u_rows + member_g * WIDTH, btg_ptr + slot * stride_bs, rank, offs_m, offs_n, offs_w, length,
                     stride_br, N, PRECISION)
    slot, rank = _lora_rank(ranks_ptr, slots_ptr, row, zero_slot, slot_count, member_p, HAS_P)
    if rank > 0:
        p += _update(u_rows + member_p * WIDTH, btp_ptr + slot * stride_bs, rank, offs_m, offs_n, offs_w, length,
                     stride_br, N, PRECISION)
    h = g / (1.0 + tl.exp(-g)) * p
    h_at = h_ptr + row * stride_hr + offs_m[:, None] * stride_hl + offs_n[None, :]
    tl.store(h_at, h.to(h_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _add_rmsnorm_kernel(y_ptr, res_ptr, w_ptr, u_ptr, bt_ptr, ranks_ptr, slots_ptr, length, zero_slot, slot_count,
                        member, eps, stride_yr, stride_yl, stride_rr, stride_rl, stride_ur, stride_ul, stride_bs,
                        stride_br, N: tl.constexpr, WIDTH: tl.constexpr, FIRST: tl.constexpr,
                        HAS_LORA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_W: tl.constexpr, PRECISION: tl.constexpr):
    row = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_w = tl.arange(0, BLOCK_W)
    rows_in = offs_m[:, None] < length
    slot, rank = _lora_rank(ranks_ptr, slots_ptr, row, zero_slot, slot_count, member, HAS_LORA)
    ut = tl.load(u_ptr + row * stride_ur + offs_m[:, None] * stride_ul + member * WIDTH + offs_w[None, :],
                 mask=rows_in & (offs_w[None, :] < rank), other=0.0)
    y_rows = y_ptr + row * stride_yr + offs_m[:, None] * stride_yl
    res_rows = res_ptr + row * stride_rr + offs_m[:, None] * stride_rl
    squares = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        inside = rows_in & (cols[None, :] < N)
        s = tl.load(y_rows + cols[None, :], mask=inside, other=0.0).to(tl.float32)
        if not FIRST:
            s += tl.load(res_rows + cols[None, :], mask=inside, other=0.0).to(tl.float32)
        if rank > 0:
            bt = tl.load(bt_ptr + slot * stride_bs + offs_w[:, None] * stride_br + cols[None, :],
                         mask=(offs_w[:, None] < rank) & (cols[None, :] < N), other=0.0)
            s += tl.dot(ut, bt.to(tl.float32), input_precision=PRECISION)
        stored = s.to(res_ptr.dtype.element_ty)  # the residual stream as the model's dtype keeps it
        tl.store(res_rows + cols[None, :], stored, mask=inside)
        s = stored.to(tl.float32)
        squares += tl.sum(s * s, axis=1)
    scale = 1.0 / tl.sqrt(squares / N + eps)
    for n0 in range(0, N, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        inside = rows_in & (cols[None, :] < N)
        s = tl.load(res_rows + cols[None, :], mask=inside, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
        tl.store(y_rows + cols[None, :], (s * scale[:, None] * w[None, :]).to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _head_norm_rope_kernel(y_ptr, w_ptr, cos_ptr, sin_ptr, u_ptr, bt_ptr, ranks_ptr, slots_ptr, length, zero_slot,
                           slot_count, member, eps, stride_yr, stride_yl, stride_cl, stride_ur, stride_ul,
                           stride_bs, stride_br, HEAD_DIM: tl.constexpr, WIDTH: tl.constexpr,
                           HAS_LORA: tl.constexpr, HAS_NORM: tl.constexpr, BLOCK_M: tl.constexpr,
                           BLOCK_W: tl.constexpr, PRECISION: tl.constexpr):
    row = tl.program_id(0)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    head = tl.program_id(2)
    offs_d = tl.arange(0, HEAD_DIM)
    partner = (offs_d + HEAD_DIM // 2) % HEAD_DIM  # rotate_half's source column for each column
    offs_w = tl.arange(0, BLOCK_W)
    rows_in = offs_m[:, None] < length
    y_rows = y_ptr + row * stride_yr + offs_m[:, None] * stride_yl + head * HEAD_DIM
    x = tl.load(y_rows + offs_d[None, :], mask=rows_in, other=0.0).to(tl.float32)
    xp = tl.load(y_rows + partner[None, :], mask=rows_in, other=0.0).to(tl.float32)
    slot, rank = _lora_rank(ranks_ptr, slots_ptr, row, zero_slot, slot_count, member, HAS_LORA)
    if rank > 0:
        ut = tl.load(u_ptr + row * stride_ur + offs_m[:, None] * stride_ul + member * WIDTH + offs_w[None, :],
                     mask=rows_in & (offs_w[None, :] < rank), other=0.0)
        b_rows = bt_ptr + slot * stride_bs + offs_w[:, None] * stride_br + head * HEAD_DIM
        bt = tl.load(b_rows + offs_d[None, :], mask=offs_w[:, None] < rank, other=0.0).to(tl.float32)
        btp = tl.load(b_rows + partner[None, :], mask=offs_w[:, None] < rank, other=0.0).to(tl.float32)
        x += tl.dot(ut, bt, input_precision=PRECISION)
        xp += tl.dot(ut, btp, input_precision=PRECISION)
    if HAS_NORM:
        x = x.to(y_ptr.dtype.element_ty).to(tl.float32)  # the projection's output as the model's dtype keeps it
        xp = xp.to(y_ptr.dtype.element_ty).to(tl.float32)
        scale = 1.0 / tl.sqrt(tl.sum(x * x, axis=1) / HEAD_DIM + eps)
        x = x * scale[:, None] * tl.load(w_ptr + offs_d).to(tl.float32)[None, :]
        xp = xp * scale[:, None] * tl.load(w_ptr + partner).to(tl.float32)[None, :]
    cos = tl.load(cos_ptr + offs_m[:, None] * stride_cl + offs_d[None, :], mask=rows_in, other=0.0)
    sin = tl.load(sin_ptr + offs_m[:, None] * stride_cl + offs_d[None, :], mask=rows_in, other=0.0)
    sign = tl.where(offs_d < HEAD_DIM // 2, -1.0, 1.0)
    out = x * cos + sign[None, :] * xp * sin
    tl.store(y_rows + offs_d[None, :], out.to(y_ptr.dtype.element_ty), mask=rows_in)


def _lora_args(u, bt, ranks, like: torch.Tensor) -> tuple:
    """Pointers for a member without LoRA (its kernel's HAS_* flag off): any tensor, never read."""
    return (u if u is not None else like, bt if bt is not None else like, ranks if ranks is not None else like)


def _strides(t: torch.Tensor | None, count: int = 2) -> tuple[int, ...]:
    return tuple(t.stride(i) for i in range(count)) if t is not None else (0,) * count


def gate_up_silu(g: torch.Tensor, p: torch.Tensor, u, bt_g, bt_p, ranks, row_slots: torch.Tensor, zero_slot: int,
                 member_g: int, member_p: int, width: int) -> torch.Tensor:
    """silu(g + dg) * (p + dp) for base outputs g, p [rows, tokens, n] (same strides); bt_* [slots, max_rank, n]
    or None where that linear has no LoRA; `ranks` [members, slots] of the group that shrank `u`."""
    rows, length, features = g.shape
    assert g.stride() == p.stride() and g.stride(2) == 1, "gate and up outputs of one layout"
    h = torch.empty(g.shape, dtype=g.dtype, device=g.device)
    u_, bt_g_, ranks_ = _lora_args(u, bt_g, ranks, g)
    bt_p_ = bt_p if bt_p is not None else g
    bt = bt_g if bt_g is not None else bt_p
    block_n = _block(features, 64)
    grid = (rows, triton.cdiv(length, BLOCK_M), triton.cdiv(features, block_n))
    _gate_up_kernel[grid](g, p, h, u_, bt_g_, bt_p_, ranks_, row_slots, length, zero_slot,
                          ranks.shape[1] if ranks is not None else 0, member_g, member_p, g.stride(0), g.stride(1),
                          h.stride(0), h.stride(1), *_strides(u), *_strides(bt), N=features, WIDTH=width,
                          HAS_G=bt_g is not None, HAS_P=bt_p is not None, BLOCK_M=BLOCK_M, BLOCK_N=block_n,
                          BLOCK_W=_block(width, width), PRECISION=_precision(g.dtype))
    return h


def add_rmsnorm_(y: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, u, bt, ranks,
                 row_slots: torch.Tensor, zero_slot: int, member: int, width: int, first: bool) -> None:
    """residual = (0 if first else residual) + y + dy, then y = rmsnorm(residual) * weight, both in place."""
    rows, length, features = y.shape
    assert y.stride(2) == 1 and residual.stride(2) == 1
    u_, bt_, ranks_ = _lora_args(u, bt, ranks, y)
    grid = (rows, triton.cdiv(length, BLOCK_M))
    _add_rmsnorm_kernel[grid](y, residual, weight, u_, bt_, ranks_, row_slots, length, zero_slot,
                              ranks.shape[1] if ranks is not None else 0, member, eps, y.stride(0), y.stride(1),
                              residual.stride(0), residual.stride(1), *_strides(u), *_strides(bt), N=features,
                              WIDTH=width, FIRST=first, HAS_LORA=bt is not None, BLOCK_M=BLOCK_M,
                              BLOCK_N=_block(features, 256), BLOCK_W=_block(width, width),
                              PRECISION=_precision(y.dtype))


def head_norm_rope_(y: torch.Tensor, weight, eps: float, cos: torch.Tensor, sin: torch.Tensor, u, bt, ranks,
                    row_slots: torch.Tensor, zero_slot: int, member: int, width: int, head_dim: int) -> None:
    """In place on y [rows, tokens, heads * head_dim]: y += dy, per head RMSNorm by `weight` (None: none), then
    RoPE by cos/sin [tokens, head_dim] (float32, rotate-half layout)."""
    rows, length, features = y.shape
    assert y.stride(2) == 1 and cos.stride(1) == 1 and cos.stride() == sin.stride()
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0, "head_dim a power of two, 16 or more"
    u_, bt_, ranks_ = _lora_args(u, bt, ranks, y)
    grid = (rows, triton.cdiv(length, BLOCK_M), features // head_dim)
    _head_norm_rope_kernel[grid](y, weight if weight is not None else y, cos, sin, u_, bt_, ranks_, row_slots,
                                 length, zero_slot, ranks.shape[1] if ranks is not None else 0, member, eps,
                                 y.stride(0), y.stride(1), cos.stride(0), *_strides(u), *_strides(bt),
                                 HEAD_DIM=head_dim, WIDTH=width, HAS_LORA=bt is not None,
                                 HAS_NORM=weight is not None, BLOCK_M=BLOCK_M, BLOCK_W=_block(width, width),
                                 PRECISION=_precision(y.dtype))
