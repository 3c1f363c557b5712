"""Linears that read the same input (q/k/v, gate/up; query/key/value in encoders) as one group for the
Triton kernels: one stacked A [slots + 1, members, max_rank, in], whose per-member views are the members'
own `a` (so installs and the torch paths are unchanged), and each member's rank per slot on the device.
One `shrink` per group reads the input once; each member then `expand`s into its own base output (or, in the
fused decoder forward, adds its update inside the op that consumes that output).

The group's tensors are not module buffers, so they are marked static for dynamo: under
`torch.compile(dynamic=True)` a plain tensor attribute gets symbolic sizes, and duck sizing then ties equal
sizes together (2 members with a 2-row warm-up batch), so the next batch of another row count recompiled."""

from __future__ import annotations

import weakref

import torch

SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("query", "key", "value"))


class LoraGroup:
    def __init__(self, members: list) -> None:
        first = members[0]
        slots, max_rank, features = first.a.shape
        self.a = first.a.new_zeros(slots, len(members), max_rank, features)
        self.ranks = torch.zeros(len(members), slots, dtype=torch.int32, device=first.a.device)
        self.members = members
        for index, member in enumerate(members):
            self.a[:, index].copy_(member.a)
            self.ranks[index] = torch.tensor(member.ranks, dtype=torch.int32)
            member.a = self.a[:, index]
            member.group, member.member = self, index
        torch._dynamo.mark_static(self.a)
        torch._dynamo.mark_static(self.ranks)
        self._u: torch.Tensor | None = None  # the shrink of the input now flowing through the group
        self._source: weakref.ref | None = None  # which input `_u` belongs to (eager only)

    def set_rank(self, member: int, slot: int, rank: int) -> None:
        self.ranks[member, slot] = rank

    def apply(self, member: int, x: torch.Tensor, y: torch.Tensor, plan, ops) -> None:
        """y += the member's LoRA update for x. The first member (or an input the group has not seen)
        runs the shrink; the others reuse it, and the last one lets it go."""
        eager = not torch.compiler.is_compiling()
        stale = eager and (self._source is None or self._source() is not x)
        if member == 0 or self._u is None or stale:
            self._u = ops.shrink(x, self.a, self.ranks, plan.row_slots, plan.zero_slot, plan.width)
            if eager:
                self._source = weakref.ref(x)
        ops.expand_(y, self._u, self.members[member].bt, self.ranks[member], plan.row_slots, plan.zero_slot,
                    member, plan.width)
        if member == len(self.members) - 1:
            self._u, self._source = None, None


def group_linears(layers: dict) -> list[LoraGroup]:
    """A group for each set of sibling linears named in SHARED_INPUT (with one input size), and one of
    its own for every other linear."""
    groups, grouped = [], set()
    by_parent: dict[str, dict[str, str]] = {}
    for name in layers:
        parent, _, leaf = name.rpartition(".")
        by_parent.setdefault(parent, {})[leaf] = name
    for siblings in by_parent.values():
        for leaves in SHARED_INPUT:
            names = [siblings[leaf] for leaf in leaves if leaf in siblings]
            if len(names) > 1 and len({layers[n].in_features for n in names}) == 1:
                groups.append(LoraGroup([layers[n] for n in names]))
                grouped.update(names)
    return groups + [LoraGroup([layer]) for name, layer in layers.items() if name not in grouped]
