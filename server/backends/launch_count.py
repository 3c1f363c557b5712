"""Counts the ops of a forward that launch a kernel (views and metadata ops excluded, each custom op once),
so the fused forward's launches per layer can be compared with transformers' own, on the CPU as on a GPU."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from torch.utils._python_dispatch import TorchDispatchMode

NO_KERNEL = frozenset({"aten::detach", "aten::alias", "aten::lift_fresh", "aten::empty", "aten::empty_like",
                       "aten::empty_strided", "aten::_to_copy_noop", "aten::sym_size", "aten::sym_stride"})


@dataclass(frozen=True)
class Launches:
    total: int
    by_op: tuple[tuple[str, int], ...]

    def per_layer(self, layers: int) -> float:
        return self.total / layers


class _Counting(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if not func.is_view and name not in NO_KERNEL:
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


def count_launches(run) -> Launches:
    """Run `run()` once (eagerly) and count its kernel-launching ops; a custom op counts as one."""
    with _Counting() as mode:
        run()
    return Launches(total=sum(mode.ops.values()), by_op=tuple(sorted(mode.ops.items())))
