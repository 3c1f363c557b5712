"""Kernel launches per decoder layer: transformers' forward with the Triton LoRA kernels (each expand into
its base output) against the fused decoder forward, on one mixed batch (adapters on all seven linears and
base rows), counted eagerly by server/backends/launch_count.py. Per layer = count(2 layers) - count(1 layer);
the rest is the forward's fixed part (embedding, rotary tables, pooling input). Tiny shapes: a count does not
depend on them. Runs on the CPU in Triton's interpreter.

    python benchmarks/launches.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def counts(family: str, layers: int) -> dict[str, int]:
    from server.backends import fused_decoder
    from server.backends.hf_model import prepared_causal_mask
    from server.backends.launch_count import count_launches
    from server.lora import lora_ops
    from tests.backends.test_fused_decoder import SLOTS, fused_family

    with tempfile.TemporaryDirectory() as folder:
        model, plan, _ = fused_family(family, Path(folder), num_hidden_layers=layers)
    ids = torch.randint(1, 300, (3, 10))
    plan.publish_rows(torch.tensor([0, SLOTS, 1]))
    with torch.inference_mode():
        fused = count_launches(lambda: fused_decoder.FusedDecoder(model, plan, lora_ops)(ids))
        unfused = count_launches(lambda: model(input_ids=ids, attention_mask=prepared_causal_mask(model),
                                                use_cache=False))
    plan.clear()
    return {"kernels_alone": unfused.total, "fused": fused.total}


def main() -> dict:
    result = {}
    for family in ("qwen3", "llama"):
        one, two = counts(family, 1), counts(family, 2)
        result[family] = {path: {"per_layer": two[path] - one[path], "fixed": 2 * one[path] - two[path]}
                          for path in one}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
