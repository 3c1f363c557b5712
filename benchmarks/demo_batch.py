"""ms per forward batch on the demo model: base rows vs rows mixed over the three demo adapters.

Paired per round (variants interleaved, order rotated), median over rounds, as docs/spec/SPEC.md §7 asks.
Usage: python benchmarks/demo_batch.py [--rows 32] [--tokens 64] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import torch

from server.backends.base import TokenBatch
from server.build import load_model
from server.config import ServerSettings, load_model_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="model_configs/demo.yaml")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    model = asyncio.run(load_model(load_model_config(args.config), ServerSettings(device="cpu"), backend="torch"))
    backend = model.backend
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 150000, (args.rows, args.tokens), generator=generator).tolist()
    slots = sorted(model.adapters.slot_of(name) for name in model.adapters.names())
    variants = {"base": [None] * args.rows, "mixed3": [slots[i % len(slots)] for i in range(args.rows)],
                "mixed3+base": [([None] + slots)[i % (len(slots) + 1)] for i in range(args.rows)]}
    for adapters in variants.values():  # warm-up
        backend.embed_sync(TokenBatch(ids, adapters))
    times = {name: [] for name in variants}
    order = list(variants)
    for round_index in range(args.rounds):
        rotated = order[round_index % len(order):] + order[:round_index % len(order)]
        for name in rotated:
            start = time.perf_counter()
            backend.embed_sync(TokenBatch(ids, variants[name]))
            times[name].append((time.perf_counter() - start) * 1e3)
    report = {"rows": args.rows, "tokens": args.tokens, "rounds": args.rounds, "threads": torch.get_num_threads(),
              "median_ms": {n: round(statistics.median(t), 3) for n, t in times.items()},
              "overhead_vs_base": {n: round(statistics.median(a / b for a, b in zip(t, times["base"])) - 1, 4)
                                   for n, t in times.items() if n != "base"}}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
