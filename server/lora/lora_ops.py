"""The Triton multi-LoRA kernels as torch custom ops (`torch.library.custom_op` with fake implementations),
so a compiled forward traces each as one opaque node and a CUDA graph captures it. Importing this module
imports triton and registers the ops; the static path imports it only when it runs the kernels."""

from __future__ import annotations

import torch

from server.lora import triton_kernels


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
