"""server/lora/plan.py: which slot each row of the running forward uses. Base rows sit at the pool's zero
slot on every path; the segment path groups sorted rows into runs, and past BMM_MIN_SEGMENTS runs switches to
one gathered pair over the adapter rows; the static path publishes one slot per row."""

from __future__ import annotations

import torch

from server.lora.plan import BMM_MIN_SEGMENTS, BatchPlan, Segment, plan_segments

ZERO = 9


def test_runs_of_equal_slots_and_no_segment_for_base_rows():
    assert plan_segments([0, 0, 3, 5, 5, 5, ZERO, ZERO], ZERO) == (Segment(0, 2, 0), Segment(2, 3, 3),
                                                                   Segment(3, 6, 5))
    assert plan_segments([ZERO, ZERO], ZERO) == () and plan_segments([], ZERO) == ()


def test_many_small_segments_become_one_gathered_span_of_the_adapter_rows():
    plan = BatchPlan(zero_slot=100)
    few = list(range(BMM_MIN_SEGMENTS - 1)) + [100]
    plan.publish(few, "cpu")
    assert plan.row_slots is None and len(plan.segments) == BMM_MIN_SEGMENTS - 1
    many = list(range(BMM_MIN_SEGMENTS)) + [100, 100]
    plan.publish(many, "cpu")
    assert plan.span == (0, BMM_MIN_SEGMENTS) and plan.row_slots.tolist() == list(range(BMM_MIN_SEGMENTS))
    plan.clear()
    assert plan.segments == () and plan.row_slots is None and plan.span is None


def test_static_rows_keep_their_order_and_the_zero_slot():
    plan = BatchPlan(zero_slot=ZERO)
    plan.publish_rows(torch.tensor([3, ZERO, 0]))
    assert plan.segments == () and plan.span is None and plan.row_slots.tolist() == [3, ZERO, 0]
