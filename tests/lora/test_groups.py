"""server/lora/groups.py: linears that read one input grouped for the Triton kernels: q/k/v and gate/up of
each layer, one stacked A whose member views are the members' own (installs land in it), ranks per member and
slot kept beside it, and the group's tensors static to dynamo (no size of theirs tied to a batch's)."""

from __future__ import annotations

import torch

from server.lora.groups import group_linears
from server.lora.mixed_linear import MixedLoraLinear
from server.lora.plan import BatchPlan

SLOTS, RANK = 3, 8


def layer_linears() -> dict[str, MixedLoraLinear]:
    plan = BatchPlan(zero_slot=SLOTS)
    shapes = {"q_proj": (16, 32), "k_proj": (16, 8), "v_proj": (16, 8), "o_proj": (32, 16),
              "gate_proj": (16, 24), "up_proj": (16, 24), "down_proj": (24, 16)}
    return {f"layers.0.{name}": MixedLoraLinear(torch.nn.Linear(i, o), plan, SLOTS, RANK)
            for name, (i, o) in shapes.items()}


def test_siblings_that_share_an_input_form_one_group():
    layers = layer_linears()
    groups = group_linears(layers)
    members = sorted(tuple(sorted(m.base.out_features for m in g.members)) for g in groups)
    assert len(groups) == 4  # q/k/v, gate/up, and o and down alone
    assert (8, 8, 32) in members and (24, 24) in members


def test_members_write_through_to_the_stacked_tensor_and_their_ranks():
    layers = layer_linears()
    group_linears(layers)
    k = layers["layers.0.k_proj"]
    k.set_slot(1, torch.ones(4, 16), torch.ones(8, 4), 1.0)
    group = k.group
    assert group.a[1, k.member, :4].sum() == 4 * 16 and group.ranks[k.member, 1] == 4
    assert k.a.data_ptr() == group.a[:, k.member].data_ptr()  # a view, not a copy
    k.clear_slot(1)
    assert group.ranks[k.member, 1] == 0 and group.a[1, k.member].abs().sum() == 0


def test_the_groups_tensors_are_static_to_dynamo():
    layers = layer_linears()
    group = group_linears(layers)[0]
    for tensor in (group.a, group.ranks):
        assert getattr(tensor, "_dynamo_static_indices", set()) == set(range(tensor.dim()))
