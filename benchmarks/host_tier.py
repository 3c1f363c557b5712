"""Loading an adapter again from the host tier vs from disk, on this machine.

(a) The served demo model through the registry (the real path): an evicted adapter loaded again from disk
(read, validate, digest, install, the effect-check forward) vs from host memory (install only); medians of
rounds, as `sie_adapter_load_seconds_by_tier` records them.
(b) A Qwen3-Embedding-0.6B-shaped adapter (rank 16, all seven linears, 28 layers, float32): reading and
validating the PEFT folder (from the page cache) vs the copy the host tier's load makes of the same bytes.

    .venv/bin/python benchmarks/host_tier.py [--rounds 7] [--layers 28]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES_06B = {"q_proj": (1024, 2048), "k_proj": (1024, 1024), "v_proj": (1024, 1024), "o_proj": (2048, 1024),
              "gate_proj": (1024, 3072), "up_proj": (1024, 3072), "down_proj": (3072, 1024)}


def served_demo(rounds: int) -> dict:
    """Median seconds of a disk load and of a host load of `retail` through the registry of the demo model."""
    from server.backends.torch_backend import TorchBackend
    from server.config import ServerSettings, load_model_config
    from server.demo_assets import ensure_builtin
    from server.local_model import LocalModel

    root = Path(tempfile.mkdtemp())
    for name in ("retail", "travel"):
        shutil.copytree(ensure_builtin("builtin:qwen3-tiny/dynamic") / name, root / name)
    config = dataclasses.replace(load_model_config(Path("model_configs/demo.yaml")), lora_roots=(str(root),))
    seconds = {"disk": [], "host": []}

    async def run(host_bytes: int, tier: str) -> None:
        settings = ServerSettings(max_loras_per_model=4, adapter_host_bytes=host_bytes)
        model = LocalModel(config, settings, TorchBackend(config, settings, "cpu"))
        await model.load()
        stats = model.adapters.load_stats.by_tier[tier]
        for _ in range(rounds + 1):
            await model.adapters.ensure("travel")  # evicts retail
            count, total = stats[0], stats[1]
            await model.adapters.ensure("retail")  # evicts travel; retail from `tier`
            if stats[0] > count:
                seconds[tier].append(stats[1] - total)
        await model.stop()

    asyncio.run(run(0, "disk"))
    asyncio.run(run(1 << 30, "host"))
    return {tier: statistics.median(values[1:]) for tier, values in seconds.items()}


def shaped_adapter(rounds: int, layers: int = 28) -> dict:
    """Median seconds to read and validate a 0.6B-shaped adapter folder vs to copy its weights in memory."""
    from server.lora.peft_format import load_peft_adapter

    folder = Path(tempfile.mkdtemp()) / "adapter"
    folder.mkdir()
    tensors, shapes = {}, {}
    for layer in range(layers):
        for linear, (fan_in, fan_out) in SHAPES_06B.items():
            group = "self_attn" if linear in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            path = f"layers.{layer}.{group}.{linear}"
            shapes[path] = (fan_in, fan_out)
            tensors[f"base_model.model.{path}.lora_A.weight"] = torch.randn(16, fan_in) * 0.01
            tensors[f"base_model.model.{path}.lora_B.weight"] = torch.randn(fan_out, 16) * 0.01
    save_file(tensors, folder / "adapter_model.safetensors")
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": 16, "lora_alpha": 32, "target_modules": list(SHAPES_06B), "bias": "none"}))
    read, copy = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        adapter = load_peft_adapter("shaped", folder, base_shapes=shapes, max_rank=64)
        read.append(time.perf_counter() - started)
        started = time.perf_counter()
        _ = [(m.a.clone(), m.b.clone()) for m in adapter.modules.values()]
        copy.append(time.perf_counter() - started)
    return {"bytes": adapter.nbytes, "disk": statistics.median(read), "host": statistics.median(copy)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--layers", type=int, default=28, help="layers of the 0.6B-shaped adapter")
    args = parser.parse_args(argv)
    demo, shaped = served_demo(args.rounds), shaped_adapter(args.rounds, args.layers)
    print("| case | from disk | from host memory | ratio |")
    print("|---|---|---|---|")
    print(f"| demo adapter through the registry (install and effect check included) | {demo['disk'] * 1e3:.1f} ms | "
          f"{demo['host'] * 1e3:.1f} ms | {demo['disk'] / demo['host']:.1f}x |")
    print(f"| 0.6B-shaped rank-16 adapter, all seven linears ({shaped['bytes'] / 2**20:.0f} MiB float32): read and "
          f"validate vs copy | {shaped['disk'] * 1e3:.1f} ms | {shaped['host'] * 1e3:.1f} ms | "
          f"{shaped['disk'] / shaped['host']:.1f}x |")
    return {"served_demo_s": demo, "shaped_adapter_s": shaped}


if __name__ == "__main__":
    main()
