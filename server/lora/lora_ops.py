"""The Triton multi-LoRA kernels, and the fused ops that consume their shrink, as torch custom ops
(`torch.library.custom_op` with fake implementations), so a compiled forward traces each as one opaque
node and a CUDA graph captures it. Importing this module imports triton and registers the ops; the static
path imports it only when it runs the kernels."""

from __future__ import annotations

import torch

from server.lora import fused_kernels, triton_kernels


@torch.library.custom_op("mle_lora::shrink", mutates_args=())
def shrink(x: torch.Tensor, a: torch.Tensor, ranks: torch.Tensor, row_slots: torch.Tensor, zero_slot: int,
           width: int) -> torch.Tensor:
    return triton_kernels.shrink(x, a, ranks, row_slots, zero_slot, width)


@shrink.register_fake
def _shrink_shape(x, a, ranks, row_slots, zero_slot, width):
    return x.new_empty((x.shape[0], x.shape[1], a.shape[1] * width), dtype=torch.float32)


@torch.library.custom_op("mle_lora::expand_", mutates_args=("y",))
def expand_(y: torch.Tensor, u: torch.Tensor, bt: torch.Tensor, ranks: torch.Tensor, row_slots: torch.Tensor,
            zero_slot: int, member: int, width: int) -> None:
    triton_kernels.expand(y, u, bt, ranks, row_slots, zero_slot, member, width)


@expand_.register_fake
def _expand_shape(y, u, bt, ranks, row_slots, zero_slot, member, width) -> None:
    return None


@torch.library.custom_op("mle_lora::gate_up_silu", mutates_args=())
def gate_up_silu(g: torch.Tensor, p: torch.Tensor, u: torch.Tensor | None, bt_g: torch.Tensor | None,
                 bt_p: torch.Tensor | None, ranks: torch.Tensor | None, row_slots: torch.Tensor, zero_slot: int,
                 member_g: int, member_p: int, width: int) -> torch.Tensor:
    return fused_kernels.gate_up_silu(g, p, u, bt_g, bt_p, ranks, row_slots, zero_slot, member_g, member_p, width)


@gate_up_silu.register_fake
def _gate_up_shape(g, p, u, bt_g, bt_p, ranks, row_slots, zero_slot, member_g, member_p, width):
    return torch.empty_like(g)


@torch.library.custom_op("mle_lora::add_rmsnorm_", mutates_args=("y", "residual"))
def add_rmsnorm_(y: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, u: torch.Tensor | None,
                 bt: torch.Tensor | None, ranks: torch.Tensor | None, row_slots: torch.Tensor, zero_slot: int,
                 member: int, width: int, first: bool) -> None:
    fused_kernels.add_rmsnorm_(y, residual, weight, eps, u, bt, ranks, row_slots, zero_slot, member, width, first)


@add_rmsnorm_.register_fake
def _add_rmsnorm_shape(y, residual, weight, eps, u, bt, ranks, row_slots, zero_slot, member, width, first) -> None:
    return None


@torch.library.custom_op("mle_lora::head_norm_rope_", mutates_args=("y",))
def head_norm_rope_(y: torch.Tensor, weight: torch.Tensor | None, eps: float, cos: torch.Tensor, sin: torch.Tensor,
                    u: torch.Tensor | None, bt: torch.Tensor | None, ranks: torch.Tensor | None,
                    row_slots: torch.Tensor, zero_slot: int, member: int, width: int, head_dim: int) -> None:
    fused_kernels.head_norm_rope_(y, weight, eps, cos, sin, u, bt, ranks, row_slots, zero_slot, member, width,
                                  head_dim)


@head_norm_rope_.register_fake
def _head_norm_rope_shape(y, weight, eps, cos, sin, u, bt, ranks, row_slots, zero_slot, member, width,
                          head_dim) -> None:
    return None
