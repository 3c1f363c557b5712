"""The eager CPU path's linears through oneDNN with each weight packed once at load (`lora/packed_matmul`).
torch's own `F.linear` goes to MKL's sgemm, which re-reads the plain row-major weight for every batch and,
on AMD cores, takes a slower path: on the 2-core EPYC here a MiniLM-sized linear ran 1.3-2.7x faster packed,
from 4 tokens to 480 (benchmarks/RESULTS.md). A oneDNN call costs about 10 us more than MKL's, so a call
under `CROSSOVER_MACS` keeps `F.linear`. The plain weight stays in place (what reads the model's parameters
sees it unchanged): a packed model holds its linear weights twice.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from server.lora.mixed_linear import MixedLoraLinear
from server.lora.packed_matmul import pack_weight, packed_linear, smallest_input, worth_packing

log = logging.getLogger(__name__)
SELF_CHECK_ATOL = 1e-4  # a packed linear that differs from F.linear by more on a random input is not used


class PackedLinear(nn.Module):
    """An `nn.Linear` of the model that no adapter wraps, run packed when the call is large enough."""

    def __init__(self, linear: nn.Linear, always: bool = False):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = pack_weight(linear.weight)
        self.packed_from = smallest_input(linear.out_features, always)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() < self.packed_from:
            return F.linear(x, self.weight, self.bias)
        return packed_linear(x, self.packed, self.bias)


@torch.inference_mode()
def pack_linears(model: nn.Module, always: bool = False) -> int:
    """Pack the float32 linears of `model` from `SMALLEST_PACKED_WEIGHT` up (the adapters' wrapped ones keep
    their wrapper and run their base through the packed weight), each run packed from `CROSSOVER_MACS` up;
    `always`: every float32 linear, every call. Returns how many, 0 when oneDNN failed its check here and
    nothing was changed."""
    def chosen(weight: torch.Tensor) -> bool:
        return weight.dtype == torch.float32 and (always or worth_packing(weight))

    wrapped = [m for m in model.modules() if isinstance(m, MixedLoraLinear) and chosen(m.base.weight)]
    bases = {id(m.base) for m in model.modules() if isinstance(m, MixedLoraLinear)}
    plain = [(name, m) for name, m in model.named_modules()
             if type(m) is nn.Linear and id(m) not in bases and chosen(m.weight)]
    first = next(iter([*(m.base for m in wrapped), *(m for _, m in plain)]), None)
    if first is None or not _agrees(first):
        return 0
    for layer in wrapped:
        layer.packed = pack_weight(layer.base.weight)
        layer.packed_from = smallest_input(layer.base.out_features, always)
    for name, linear in plain:
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, PackedLinear(linear, always))
    return len(wrapped) + len(plain)


def _agrees(linear: nn.Linear) -> bool:
    """oneDNN runs here and gives what F.linear gives on one of the model's own linears."""
    x = torch.randn(3, 5, linear.in_features, generator=torch.Generator().manual_seed(0))
    try:
        got = packed_linear(x, pack_weight(linear.weight), linear.bias)
    except RuntimeError as exc:  # a torch without oneDNN's linear on this CPU
        log.warning("oneDNN linears unavailable here, keeping torch's: %s", exc)
        return False
    error = (got - F.linear(x, linear.weight, linear.bias)).abs().max().item()
    if not error <= SELF_CHECK_ATOL:
        log.warning("oneDNN linears differ from torch's by %.3g here, keeping torch's", error)
        return False
    return True
