"""Which adapter slot each row of the running forward uses, as every MixedLoraLinear reads it.

Two shapes: row segments for the eager CPU path (rows sorted by slot, one GEMM pair per segment), and a
per-row slot tensor over every row for the static path (CUDA, compiled forwards, CUDA graphs), where
base rows point at an all-zero slot so the shapes never depend on the batch's mix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BMM_MIN_SEGMENTS = 16


@dataclass(frozen=True)
class Segment:
    start: int
    stop: int
    slot: int


class BatchPlan:
    """Which adapter slot each row of the forward now running uses (one per backend, set by its worker thread
    for each batch), with the adapter pool's constants every wrapped linear reads it with.

    Base rows are at `zero_slot`, everywhere: a slot no adapter is ever installed at (a zero update).
    `row_slots` is None on the segment path; otherwise it holds one slot per row of `span` (None: every
    row). `width` is the static path's rank width, the model's `max_lora_rank`, set once at load so that no
    install ever changes a compiled or captured shape; 0 (the segment path) reads each layer's live rank."""

    def __init__(self, zero_slot: int) -> None:
        self.zero_slot = zero_slot  # a slot no adapter is ever installed at: a zero update
        self.segments: tuple[Segment, ...] = ()
        self.row_slots: torch.Tensor | None = None
        self.span: tuple[int, int] | None = None
        self.width = 0
        self.ops = None  # lora/lora_ops when the static path runs the Triton kernels, else None

    def publish(self, sorted_slots: list[int], device: torch.device | str) -> None:
        """Segment path, for rows sorted by slot (base rows, at the zero slot, last); past `BMM_MIN_SEGMENTS`
        small segments the adapter rows (contiguous) go through one gathered bmm instead."""
        segments = plan_segments(sorted_slots, self.zero_slot)
        self.segments, self.row_slots, self.span = segments, None, None
        if len(segments) >= BMM_MIN_SEGMENTS:
            slots = [seg.slot for seg in segments for _ in range(seg.stop - seg.start)]
            self.row_slots = torch.tensor(slots, device=device)
            self.span = (segments[0].start, segments[-1].stop)

    def publish_rows(self, row_slots: torch.Tensor) -> None:
        """Static path: one slot per row of the whole batch (base rows at `zero_slot`)."""
        self.segments, self.row_slots, self.span = (), row_slots, None

    def clear(self) -> None:
        self.segments, self.row_slots, self.span = (), None, None


def plan_segments(sorted_slots: list[int], zero_slot: int) -> tuple[Segment, ...]:
    """Runs of equal slots in an already slot-sorted row list; base rows (at `zero_slot`) get no segment."""
    segments = []
    start = 0
    for row in range(1, len(sorted_slots) + 1):
        if row == len(sorted_slots) or sorted_slots[row] != sorted_slots[start]:
            if sorted_slots[start] != zero_slot:
                segments.append(Segment(start, row, sorted_slots[start]))
            start = row
    return tuple(segments)
