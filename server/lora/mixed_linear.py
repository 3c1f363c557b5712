"""Mixed-adapter LoRA linear: one forward pass, a different adapter per row of the batch.

This is the product's own hot path, so it is ours rather than PEFT's. The backend sorts a batch's
rows by adapter slot once per batch and publishes the resulting row segments in a shared
`BatchPlan`; every wrapped linear then adds, for each segment, `(x_seg @ A.T) @ (scale * B).T`
in place into the base output with `addmm_` on contiguous views (Punica's SGMV, as a loop over
at most `max_loras_per_batch` segments). PEFT's mixed batch instead gathers `x[idx]` and
scatter-adds per adapter in every layer, which costs copies and index kernels, not FLOPs.

Each linear keeps every slot's adapter in two buffers allocated once, `A` as [slots, max_rank, in]
and the scaled `B` transposed as [slots, max_rank, out], so installs and evictions are in-place copies
and the tensors the forward reads never change shape or address. The segment loop reads each adapter at
its own rank (padding every adapter to the largest rank would waste FLOPs when ranks differ). With many
small segments (one or two rows per adapter) the per-call cost of tiny GEMMs dominates, so past
`BMM_MIN_SEGMENTS` the adapter rows go through one gathered batched matmul per linear instead (Punica's
BGMV shape), at the largest installed rank: measured on 2 CPU cores, 64 one-row adapters cost +21% over
base with the loop and +10% with bmm.

The static path (CUDA, compiled forwards, CUDA graphs) always takes the gathered shape over every row,
at the model's `max_lora_rank` (fixed at load), with base rows reading an extra all-zero slot: no Python
per segment and no shape that depends on the batch's mix of adapters or on which adapters are installed.
On CUDA that shape runs as Triton kernels (`lora/groups`, `lora/lora_ops`): one shrink per group of linears
sharing an input, an expand added into the base output, base rows and untouched linears skipped; the
gathered bmm pair stays as the control.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from server.lora.packed_matmul import packed_linear
from server.lora.peft_format import LoraAdapter
from server.lora.plan import BatchPlan


class MixedLoraLinear(nn.Module):
    """A base `nn.Linear` plus preallocated per-slot LoRA buffers applied to the rows of the current plan.
    The buffers hold `slots` adapters and, last, the plan's zero slot."""

    def __init__(self, base: nn.Linear, plan: BatchPlan, slots: int, max_rank: int):
        super().__init__()
        self.base = base
        self.plan = plan
        weight = base.weight
        self.register_buffer("a", weight.new_zeros(slots + 1, max_rank, base.in_features), persistent=False)
        self.register_buffer("bt", weight.new_zeros(slots + 1, max_rank, base.out_features), persistent=False)
        self.ranks = [0] * (slots + 1)  # 0: nothing installed at that slot for this layer
        self.live_rank = 0  # the largest installed rank (the gathered path's width)
        self.group = None  # lora/groups.LoraGroup on the Triton kernel path: its `a` is a view of the group's
        self.member = 0
        self.packed: torch.Tensor | None = None  # the base weight packed for oneDNN (lora/packed_matmul),
        self.packed_from = 1  # used for inputs of at least this many elements

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def set_slot(self, slot: int, a: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
        rank = a.shape[0]
        self.a[slot].zero_()
        self.bt[slot].zero_()
        self.a[slot, :rank].copy_(a)
        self.bt[slot, :rank].copy_((b * scaling).t())
        self._set_rank(slot, rank)

    def _set_rank(self, slot: int, rank: int) -> None:
        self.ranks[slot] = rank
        self.live_rank = max(self.ranks)
        if self.group is not None:
            self.group.set_rank(self.member, slot, rank)

    def clear_slot(self, slot: int) -> None:
        if self.ranks[slot]:
            self.a[slot].zero_()
            self.bt[slot].zero_()
            self._set_rank(slot, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not self.base(x): one module call fewer per linear.
        packed = self.packed
        y = (F.linear(x, self.base.weight, self.base.bias) if packed is None or x.numel() < self.packed_from
             else packed_linear(x, packed, self.base.bias))
        plan = self.plan
        # The CPU's gathered path falls back to its segments for a flat input; the static path has none, so
        # a flat input there must fail in the bmm rather than silently lose the adapters.
        if plan.ops is not None:  # Triton kernels (static path): a flat input fails in them, never skips them
            if plan.width:
                self.group.apply(self.member, x, y, plan, plan.ops)
            return y
        if plan.row_slots is not None and (x.dim() == 3 or plan.span is None):
            width = plan.width or self.live_rank
            if width:
                self._gathered(x, y, plan.row_slots, plan.span, width)
            return y
        if not self.live_rank:
            return y
        for seg in plan.segments:
            rank = self.ranks[seg.slot]
            if not rank:  # this adapter does not touch this layer
                continue
            xs = x[seg.start:seg.stop].reshape(-1, x.shape[-1])
            ys = y[seg.start:seg.stop].view(-1, y.shape[-1])
            ys.addmm_(xs @ self.a[seg.slot, :rank].t(), self.bt[seg.slot, :rank])
        return y

    def _gathered(self, x: torch.Tensor, y: torch.Tensor, row_slots: torch.Tensor, span: tuple[int, int] | None,
                  width: int) -> None:
        """One bmm pair over the rows of `span` at rank `width`: each row gathers its slot's A and B. Slots
        this layer lacks, and ranks below the width, are zeros in the buffers: a zero update."""
        a = self.a[:, :width].index_select(0, row_slots)  # [rows, width, in]
        bt = self.bt[:, :width].index_select(0, row_slots)  # [rows, width, out]
        if span is not None:
            x, y = x[span[0]:span[1]], y[span[0]:span[1]]
        y.baddbmm_(torch.bmm(x, a.transpose(1, 2)), bt)


def wrap_linears(model: nn.Module, linears: dict[str, nn.Linear], plan: BatchPlan, *, slots: int,
                 max_rank: int) -> dict[str, MixedLoraLinear]:
    """Replace each named Linear in `model` by a MixedLoraLinear sharing `plan`, with buffers for `slots`
    adapters of rank up to `max_rank`."""
    wrapped = {}
    for name, linear in linears.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = MixedLoraLinear(linear, plan, slots, max_rank)
        setattr(parent, leaf, layer)
        wrapped[name] = layer
    return wrapped


def install_adapter(layers: dict[str, MixedLoraLinear], slot: int, adapter: LoraAdapter) -> None:
    """Copy the adapter into `slot` of every layer it targets, clearing the slot where it targets none."""
    for path, layer in layers.items():
        module = adapter.modules.get(path)
        if module is None:
            layer.clear_slot(slot)
        else:
            layer.set_slot(slot, module.a, module.b, module.scaling)


def pool_bytes(layers: dict[str, MixedLoraLinear]) -> int:
    """Memory the preallocated adapter buffers take."""
    return sum(layer.a.nbytes + layer.bt.nbytes for layer in layers.values())


def remove_adapter(layers: dict[str, MixedLoraLinear], slot: int) -> None:
    for layer in layers.values():
        layer.clear_slot(slot)
