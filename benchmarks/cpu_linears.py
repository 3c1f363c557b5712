"""The eager CPU path's linears: torch's `F.linear` (MKL's sgemm) against oneDNN on a weight packed once
(`backends/packed_linears`), per linear at a model's shapes and token counts, and the whole forward of the
served model with `cpu_linears: auto` (packed) against `cpu_linears: torch`, both loaded in this process and
timed alternately on the backend's worker thread; medians of rounds.

    python benchmarks/cpu_linears.py                      # MiniLM (make real), 2 threads
    python benchmarks/cpu_linears.py --config model_configs/demo.yaml --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import importlib
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEXT = "How do I waterproof a bathroom floor before laying tiles in a new building?"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "model_configs" / "all-minilm-l6-v2.yaml"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", default="4,20,480", help="token counts for the per-linear table")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--json")
    return parser.parse_args(argv)


def timed(fn, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def per_linear(shapes: dict, tokens: list[int], rounds: int) -> dict:
    """Microseconds per call, F.linear and packed, for each distinct (in, out) at each token count."""
    import torch
    import torch.nn.functional as F

    from server.backends.packed_linears import pack_weight, packed_linear

    table = {}
    for (features_in, features_out) in sorted(set(shapes.values())):
        weight, bias = torch.randn(features_out, features_in), torch.randn(features_out)
        packed = pack_weight(weight)
        for count in tokens:
            x = torch.randn(1, count, features_in)
            calls = {"torch": functools.partial(F.linear, x, weight, bias),
                     "packed": functools.partial(packed_linear, x, packed, bias)}
            times = {name: [] for name in calls}
            with torch.inference_mode():
                for _ in range(rounds):
                    for name, call in calls.items():
                        timed(call, 5)
                        times[name].append(timed(call, 50) * 1e6)
            torch_us, packed_us = (statistics.median(times[n]) for n in ("torch", "packed"))
            table[f"{features_in}x{features_out} at {count} tokens"] = {
                "torch_us": round(torch_us, 1), "packed_us": round(packed_us, 1),
                "speedup": round(torch_us / packed_us, 2)}
    return table


async def whole_forward(config, rounds: int) -> dict:
    """ms of the served model's forward of one text's ids (the backend's `embed_sync`), packed and not."""
    from server.backends.base import TokenBatch
    from server.build import load_model
    from server.config import ServerSettings

    models = {"packed": await load_model(config, ServerSettings(), backend="torch"),
              "torch": await load_model(dataclasses.replace(config, cpu_linears="torch"), ServerSettings(),
                                        backend="torch")}
    try:
        times = {name: [] for name in models}
        for index in range(rounds * 20):
            for name in (list(models) if index % 2 == 0 else list(reversed(models))):
                backend = models[name].backend
                batch = TokenBatch(models[name].tokenizer.tokenize([TEXT]).input_ids, [None])
                forward = functools.partial(backend.embed_sync, batch)
                seconds = backend._executor.submit(timed, forward, 1).result()
                times[name].append(seconds * 1e3)
        shapes = models["packed"].backend.info.linear_shapes
        return {"forward_ms": {name: round(statistics.median(v), 3) for name, v in times.items()}, "shapes": shapes}
    finally:
        for model in models.values():
            await model.stop()


def main(argv=None) -> dict:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    importlib.import_module("server")  # before torch: libgomp's spin as the server sets it (server/__init__.py)
    import torch

    from server.config import load_model_config

    torch.set_num_threads(args.threads)
    config = load_model_config(args.config)
    forward = asyncio.run(whole_forward(config, args.rounds))
    linears = per_linear(forward.pop("shapes"), [int(t) for t in args.tokens.split(",")], args.rounds)
    print("| linear | F.linear us | packed us | speed-up |\n|---|---:|---:|---:|")
    for name, row in linears.items():
        print(f"| {name} | {row['torch_us']} | {row['packed_us']} | {row['speedup']}x |")
    ms = forward["forward_ms"]
    print(f"forward of one text: torch's linears {ms['torch']} ms, packed {ms['packed']} ms "
          f"({ms['torch'] / ms['packed']:.2f}x)")
    result = {"linears": linears, **forward, "threads": args.threads, "config": args.config}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
