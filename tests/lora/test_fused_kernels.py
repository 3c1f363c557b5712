"""The fused LoRA kernels (Triton's interpreter on the CPU, tiny shapes) against float64 references: mixed
ranks, base rows at the zero slot, a member its adapter leaves alone, linears without LoRA, lengths and
widths that are not multiples of the blocks; fp32 at 1e-5 and bf16 against the float64 result."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from server.lora import fused_kernels  # noqa: E402

SLOTS, MAX_RANK, WIDTH = 4, 16, 16  # slot 4 is the zero slot
ROW_SLOTS = torch.tensor([0, SLOTS, 1, 2, 3])
RANKS = torch.tensor([[8, 4, 0, 16, 0], [16, 0, 2, 8, 0]], dtype=torch.int32)  # two members x five slots
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


def lora_parts(features: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """u [rows, tokens, 2 * WIDTH] (float32, as the shrink leaves it) and B^T [2][slots + 1, MAX_RANK, out]."""
    u = torch.randn(5, 19, 2 * WIDTH)
    bts = torch.randn(2, SLOTS + 1, MAX_RANK, features, dtype=dtype) / WIDTH
    for member in range(2):
        for slot in range(SLOTS + 1):
            bts[member, slot, int(RANKS[member, slot]):] = float("nan")  # past the rank: never read
    return u, bts


def update(u: torch.Tensor, bt: torch.Tensor, member: int) -> torch.Tensor:
    """The float64 LoRA update per row: zero for base rows and ranks of 0."""
    out = torch.zeros(u.shape[0], u.shape[1], bt.shape[-1], dtype=torch.float64)
    for row, slot in enumerate(ROW_SLOTS.tolist()):
        rank = int(RANKS[member, slot])
        if slot != SLOTS and rank:
            out[row] = u[row, :, member * WIDTH:member * WIDTH + rank].double() @ bt[slot, :rank].double()
    return out


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("with_gate", "with_up"), [(True, True), (False, True), (True, False)])
def test_gate_up_silu(dtype, with_gate, with_up):
    torch.manual_seed(0)
    features = 40
    u, bts = lora_parts(features, dtype)
    g, p = (torch.randn(5, 19, features, dtype=dtype) for _ in range(2))
    h = fused_kernels.gate_up_silu(g, p, u, bts[0] if with_gate else None, bts[1] if with_up else None, RANKS,
                                   ROW_SLOTS, SLOTS, 0, 1, WIDTH)
    gate = g.double() + (update(u, bts[0], 0) if with_gate else 0)
    up = p.double() + (update(u, bts[1], 1) if with_up else 0)
    reference = torch.nn.functional.silu(gate) * up
    assert (h.double() - reference).abs().max() <= TOLERANCE[dtype] * max(1.0, reference.abs().max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("first", "with_lora", "features"), [(False, True, 48), (True, False, 40),
                                                              (False, False, 300)])
def test_add_rmsnorm(dtype, first, with_lora, features):
    torch.manual_seed(1)
    u, bts = lora_parts(features, dtype)
    y, residual = (torch.randn(5, 19, features, dtype=dtype) for _ in range(2))
    weight = torch.rand(features, dtype=dtype) + 0.5
    total = y.double() + (0 if first else residual.double()) + (update(u, bts[1], 1) if with_lora else 0)
    y_out, residual_out = y.clone(), residual.clone()
    fused_kernels.add_rmsnorm_(y_out, residual_out, weight, 1e-6, u if with_lora else None,
                               bts[1] if with_lora else None, RANKS if with_lora else None, ROW_SLOTS, SLOTS, 1,
                               WIDTH, first)
    tolerance = TOLERANCE[dtype]
    assert (residual_out.double() - total).abs().max() <= tolerance * max(1.0, total.abs().max())
    assert (y_out.double() - rms(total, weight, 1e-6)).abs().max() <= tolerance * 4


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("head_dim", "with_norm", "with_lora"), [(16, True, True), (32, False, True),
                                                                  (16, True, False)])
def test_head_norm_rope(dtype, head_dim, with_norm, with_lora):
    torch.manual_seed(2)
    heads = 3
    u, bts = lora_parts(heads * head_dim, dtype)
    y = torch.randn(5, 19, heads * head_dim, dtype=dtype)
    weight = torch.rand(head_dim, dtype=dtype) + 0.5 if with_norm else None
    angles = torch.arange(19)[:, None] * (1.0 / 100 ** (torch.arange(0, head_dim, 2) / head_dim))[None, :]
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()
    heads_view = (y.double() + (update(u, bts[0], 0) if with_lora else 0)).view(5, 19, heads, head_dim)
    if with_norm:
        heads_view = rms(heads_view, weight, 1e-6)
    reference = heads_view * cos.double()[:, None] + rotate_half(heads_view) * sin.double()[:, None]
    fused_kernels.head_norm_rope_(y, weight, 1e-6, cos, sin, u if with_lora else None, bts[0] if with_lora else None,
                                  RANKS if with_lora else None, ROW_SLOTS, SLOTS, 0, WIDTH, head_dim)
    got = y.double().view(5, 19, heads, head_dim)
    assert (got - reference).abs().max() <= TOLERANCE[dtype] * max(1.0, reference.abs().max())
