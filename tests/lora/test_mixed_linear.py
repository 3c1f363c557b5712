"""MixedLoraLinear's preallocated slot buffers: installs and evictions are in-place copies (no shape or
address changes), mixed ranks, the segment loop, the gathered (BGMV) path and the static per-row path
against a plain reference."""

from __future__ import annotations

import pytest
import torch

from server.lora.mixed_linear import MixedLoraLinear
from server.lora.plan import BMM_MIN_SEGMENTS, BatchPlan

IN, OUT, SLOTS, MAX_RANK = 24, 40, 20, 16
BASE = SLOTS  # base rows sit at the pool's zero slot (the last one), on every path


def make_layer():
    torch.manual_seed(0)
    plan = BatchPlan(zero_slot=SLOTS)
    return MixedLoraLinear(torch.nn.Linear(IN, OUT), plan, SLOTS, MAX_RANK), plan


def adapter(rank: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(rank, IN, generator=generator), torch.randn(OUT, rank, generator=generator), 0.5)


def reference(layer, x, slots, adapters):
    """Each row alone: base + scale * (x A^T) B^T with its own adapter."""
    rows = []
    for row, slot in zip(x, slots):
        y = layer.base(row)
        if slot != BASE and slot in adapters:
            a, b, scale = adapters[slot]
            y = y + scale * (row @ a.t()) @ b.t()
        rows.append(y)
    return torch.stack(rows)


def run(layer, plan, x, slots, static=False):
    """The layer under the segment plan of `slots`, or (`static`) one slot per row with base at the zero slot."""
    if static:
        plan.publish_rows(torch.tensor(slots))
    else:
        plan.publish(slots, "cpu")
    try:
        with torch.no_grad():
            return layer(x)
    finally:
        plan.clear()


def test_installs_and_evictions_keep_the_buffers_in_place():
    layer, _ = make_layer()
    addresses = (layer.a.data_ptr(), layer.bt.data_ptr(), layer.a.shape, layer.bt.shape)
    layer.set_slot(3, *adapter(8, 1))
    layer.set_slot(3, *adapter(4, 2))  # a smaller rank over a larger one: the tail is zeroed
    assert layer.ranks[3] == 4 and layer.a[3, 4:].abs().sum() == 0 and layer.bt[3, 4:].abs().sum() == 0
    layer.clear_slot(3)
    assert layer.live_rank == 0 and layer.a[3].abs().sum() == 0
    assert (layer.a.data_ptr(), layer.bt.data_ptr(), layer.a.shape, layer.bt.shape) == addresses


def test_segment_loop_with_mixed_ranks_matches_rows_alone():
    layer, plan = make_layer()
    adapters = {0: adapter(4, 1), 5: adapter(16, 2), 7: adapter(8, 3)}
    for slot, weights in adapters.items():
        layer.set_slot(slot, *weights)
    slots = [0, 0, 5, 7, 7, 9, BASE, BASE]  # sorted; slot 9: an adapter that does not touch this layer
    x = torch.randn(len(slots), 6, IN)
    assert torch.allclose(run(layer, plan, x, slots), reference(layer, x, slots, adapters), atol=1e-5)


def test_gathered_path_equals_the_loop_and_sees_evictions():
    layer, plan = make_layer()
    adapters = {slot: adapter(4 + slot % 3 * 4, slot) for slot in range(BMM_MIN_SEGMENTS + 2)}
    for slot, weights in adapters.items():
        layer.set_slot(slot, *weights)
    slots = sorted(adapters) + [BASE]
    x = torch.randn(len(slots), 5, IN)
    plan.publish(slots, "cpu")
    assert plan.row_slots is not None  # enough segments for the gathered path
    plan.clear()
    assert torch.allclose(run(layer, plan, x, slots), reference(layer, x, slots, adapters), atol=1e-5)
    layer.clear_slot(4)
    del adapters[4]
    assert torch.allclose(run(layer, plan, x, slots), reference(layer, x, slots, adapters), atol=1e-5)


def test_static_rows_in_any_order_match_rows_alone_and_see_installs_in_place():
    layer, plan = make_layer()
    adapters = {0: adapter(4, 1), 5: adapter(16, 2), 7: adapter(8, 3)}
    for slot, weights in adapters.items():
        layer.set_slot(slot, *weights)
    plan.width = MAX_RANK  # as the backend fixes it at load: ranks 2..16 and later installs at one width
    slots = [7, BASE, 0, 5, BASE, 7, 9, 0]  # unsorted, base rows between adapter rows
    x = torch.randn(len(slots), 6, IN)
    assert torch.allclose(run(layer, plan, x, slots, static=True), reference(layer, x, slots, adapters), atol=1e-5)
    layer.clear_slot(5)
    adapters[9] = adapter(2, 9)
    layer.set_slot(9, *adapters[9])
    del adapters[5]
    assert torch.allclose(run(layer, plan, x, slots, static=True), reference(layer, x, slots, adapters), atol=1e-5)


def test_static_path_refuses_a_flat_input_instead_of_dropping_the_adapters():
    layer, plan = make_layer()
    layer.set_slot(0, *adapter(4, 1))
    plan.width = MAX_RANK
    with pytest.raises(RuntimeError):
        run(layer, plan, torch.randn(2, IN), [0, BASE], static=True)
