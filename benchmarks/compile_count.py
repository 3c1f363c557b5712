"""How many graphs dynamo compiles for the static forward of the demo model (`compile: on`, the Triton LoRA
kernels in Triton's interpreter, dynamo's `eager` backend so that counting takes seconds, not inductor's
minutes): after the load's warm-up, after a batch of every CUDA graph bucket's shape, after other shapes
with mixed adapters, and after an eviction, a reload and an install of a wider adapter.

    TRITON_INTERPRET=1 python benchmarks/compile_count.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    import torch
    from torch._dynamo.testing import CompileCounter

    from server.backends.base import TokenBatch
    from server.backends.cuda_graphs import plan_buckets
    from server.build import load_model
    from server.config import ServerSettings, load_model_config
    from server.demo_assets import ALL_LINEARS, ensure_builtin
    from server.demo_lora import build_adapter
    from server.lora.peft_format import load_peft_adapter

    counter, compile_ = CompileCounter(), torch.compile
    torch.compile = lambda fn, **kw: compile_(fn, **{**kw, "backend": counter})  # whatever backend the code asks
    config = dataclasses.replace(load_model_config(REPO / "model_configs" / "demo.yaml"), compile="on",
                                 lora_kernels="triton", max_seq_len=128)
    model = asyncio.run(load_model(config, ServerSettings(), backend="torch"))
    counts = {"after warm-up": counter.frame_count}
    names = [None, "legal", "medical", "finance"]

    def run(rows: int, length: int, adapters=None) -> None:
        adapters = adapters or [names[i % 4] for i in range(rows)]
        ids = [[100 + (i * 7 + j) % 300 for j in range(length)] for i in range(rows)]
        model.backend.embed_sync(TokenBatch(ids, [None if a is None else model.adapters.slot_of(a) for a in adapters]))

    for bucket in plan_buckets(128, 512, 64):
        run(bucket.rows, bucket.length)
    counts["after every bucket shape"] = counter.frame_count
    for rows, length in [(3, 5), (5, 33), (7, 17), (1, 1), (2, 2), (9, 40)]:
        run(rows, length)
    counts["after other shapes, mixed adapters"] = counter.frame_count
    asyncio.run(model.adapters.unload("medical", force=True))
    asyncio.run(model.adapters.load("medical"))
    with tempfile.TemporaryDirectory() as tmp:
        build_adapter(ensure_builtin("builtin:qwen3-tiny"), Path(tmp) / "wide", seed=9, targets=ALL_LINEARS, rank=32)
        wide = load_peft_adapter("wide", Path(tmp) / "wide", base_shapes=model.backend.info.linear_shapes,
                                 max_rank=config.adapters.max_lora_rank)
    free = model.adapters.capacity - 1
    asyncio.run(model.backend.install(free, wide))
    model.backend.embed_sync(TokenBatch([[5] * 20] * 3, [free, None, model.adapters.slot_of("legal")]))
    counts["after an eviction, a reload, a rank-32 install"] = counter.frame_count
    asyncio.run(model.stop())
    print("| step | graphs compiled so far |\n|---|---|")
    for step, count in counts.items():
        print(f"| {step} | {count} |")
    return counts


if __name__ == "__main__":
    main()
