"""The Triton shrink and expand kernels (in Triton's interpreter on the CPU, at tiny shapes) against a
float64 reference: mixed ranks, base rows at the zero slot, an adapter that leaves a member linear alone,
lengths and features that are not multiples of the blocks, fp32 and fp16 (u always float32), and nothing
past a slot's rank read (the width is the pool's max rank, adapters are narrower)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from server.lora import triton_kernels  # noqa: E402

SLOTS, MAX_RANK = 4, 32  # slot 4 is the zero slot


def stacked(members: int, features: int, ranks: list[list[int]], dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A [slots + 1, members, max_rank, features] with zeros past each (member, slot) rank, and the ranks."""
    a = torch.zeros(SLOTS + 1, members, MAX_RANK, features, dtype=dtype)
    for member, member_ranks in enumerate(ranks):
        for slot, rank in enumerate(member_ranks):
            a[slot, member, :rank] = torch.randn(rank, features, dtype=dtype) / features ** 0.5
    return a, torch.tensor([r + [0] for r in ranks], dtype=torch.int32)


def active(slot: int, rank: int) -> bool:
    return slot != SLOTS and rank > 0


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.float16, 2e-2)])
@pytest.mark.parametrize(("features", "width"), [(40, 8), (96, 16)])
def test_shrink_matches_float64(dtype, tolerance, features, width):
    torch.manual_seed(0)
    ranks = [[8, 4, 0, width], [width, 0, 2, 8], [1, 8, 8, 0]]  # member 0..2 x slots 0..3
    a, rank_table = stacked(3, features, ranks, dtype)
    x = torch.randn(5, 20, features, dtype=dtype)
    row_slots = torch.tensor([0, SLOTS, 1, 2, 3])
    u = triton_kernels.shrink(x, a, rank_table, row_slots, SLOTS, width)
    assert u.shape == (5, 20, 3 * width) and u.dtype == torch.float32
    for row, slot in enumerate(row_slots.tolist()):
        for member in range(3):
            if not active(slot, int(rank_table[member, slot])):
                continue
            rank = int(rank_table[member, slot])
            reference = x[row].double() @ a[slot, member, :rank].double().T
            got = u[row, :, member * width:member * width + rank].double()
            assert (got - reference).abs().max() <= tolerance, (row, member)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.float16, 2e-2)])
@pytest.mark.parametrize(("features", "width"), [(24, 8), (80, 16)])
def test_expand_adds_in_place_and_skips_base_rows(dtype, tolerance, features, width):
    torch.manual_seed(1)
    members = 2
    ranks = torch.tensor([[8, 4, 0, width, 0], [width, 0, 2, 8, 0]], dtype=torch.int32)
    u = torch.randn(5, 19, members * width)  # the shrink's output: float32 whatever the model's dtype
    bt = torch.randn(SLOTS + 1, MAX_RANK, features, dtype=dtype) / width
    row_slots = torch.tensor([0, SLOTS, 1, 2, 3])
    for member in range(members):
        y0 = torch.randn(5, 19, features, dtype=dtype)
        y = y0.clone()
        triton_kernels.expand(y, u, bt, ranks[member], row_slots, SLOTS, member, width)
        for row, slot in enumerate(row_slots.tolist()):
            if not active(slot, int(ranks[member, slot])):
                assert torch.equal(y[row], y0[row]), (row, member)  # untouched: not even rounded
                continue
            rank = int(ranks[member, slot])
            update = u[row, :, member * width:member * width + rank].double() @ bt[slot, :rank].double()
            assert (y[row].double() - (y0[row].double() + update)).abs().max() <= tolerance, (row, member)


def test_nothing_past_a_slots_rank_is_read():
    """Buffers past each adapter's rank hold NaN here: a kernel that read them would spread it."""
    torch.manual_seed(2)
    width, features = 16, 32
    a, rank_table = stacked(2, features, [[4, 8, 16, 0], [8, 0, 2, 4]], torch.float32)
    bt = torch.randn(SLOTS + 1, MAX_RANK, features)
    for member in range(2):
        for slot in range(SLOTS):
            rank = int(rank_table[member, slot])
            a[slot, member, rank:] = float("nan")
    for slot in range(SLOTS):
        bt[slot, int(rank_table[1, slot]):] = float("nan")
    x, y = torch.randn(5, 17, features), torch.zeros(5, 17, features)
    row_slots = torch.tensor([0, 1, 2, 3, SLOTS])
    u = triton_kernels.shrink(x, a, rank_table, row_slots, SLOTS, width)
    triton_kernels.expand(y, u, bt, rank_table[1], row_slots, SLOTS, 1, width)
    assert torch.isfinite(y).all()
    for row, slot in enumerate(row_slots.tolist()[:SLOTS]):
        rank = int(rank_table[1, slot])
        expected = (x[row].double() @ a[slot, 1, :rank].double().T) @ bt[slot, :rank].double()
        assert (y[row].double() - expected).abs().max() <= 1e-5, row


def test_custom_ops_trace_as_single_nodes():
    """The ops' fake implementations let a compiled function trace them (dynamo + fake tensors)."""
    from server.lora import lora_ops

    a, rank_table = stacked(2, 32, [[8, 8, 8, 8], [8, 0, 8, 8]], torch.float32)
    bt = torch.randn(SLOTS + 1, MAX_RANK, 16)
    row_slots = torch.tensor([0, 3, SLOTS])

    def lora(x, y):
        u = lora_ops.shrink(x, a, rank_table, row_slots, SLOTS, 8)
        lora_ops.expand_(y, u, bt, rank_table[1], row_slots, SLOTS, 1, 8)
        return y

    x, y = torch.randn(3, 17, 32), torch.randn(3, 17, 16)
    expected = lora(x, y.clone())
    nodes = []

    def inspecting(gm, example_inputs):
        nodes.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    got = torch.compile(lora, backend=inspecting, fullgraph=True)(x, y.clone())
    torch._dynamo.reset()
    assert "mle_lora.shrink.default" in nodes and "mle_lora.expand_.default" in nodes, nodes
    assert torch.allclose(got, expected, atol=1e-6)
