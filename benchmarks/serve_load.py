"""HTTP load generator for the server (loopback only, bounded in requests and time).

Sweeps concurrency x items per request over a mix of adapters and base; reports req/s, items/s,
tokens/s, p50/p95/p99 latency, errors by code and the padded fraction of the forward batches' tokens
(from `sie_batch_tokens_total`), as JSON and a PNG. `--compare-inprocess` runs the same requests through
the engine in-process (no HTTP, the same SIE_* settings) and prints the HTTP efficiency ratio.

    python benchmarks/serve_load.py --json benchmarks/out/serve_load.json --compare-inprocess
    python benchmarks/serve_load.py --url http://127.0.0.1:8080 --api openai --concurrency 1,8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgpack

REPO = Path(__file__).resolve().parents[1]
ADAPTERS = [None, "legal", "medical", "finance"]
WORDS = ["contract", "court", "patient", "revenue", "market", "clinical", "statute", "dosage", "portfolio",
         "appeal", "invoice", "symptom", "merger", "liability", "therapy", "dividend"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running server (default: start the demo config on loopback)")
    parser.add_argument("--config", default=str(REPO / "model_configs" / "demo.yaml"))
    parser.add_argument("--model", default="demo/qwen3-tiny")
    parser.add_argument("--api", choices=["sie", "openai"], default="sie")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--items", default="1,16", help="items per request")
    parser.add_argument("--requests", type=int, default=200, help="requests per cell (upper bound)")
    parser.add_argument("--seconds", type=float, default=20.0, help="time cap per cell")
    parser.add_argument("--compare-inprocess", action="store_true")
    parser.add_argument("--device", default="auto", help="the in-process side's device (the server picks auto)")
    parser.add_argument("--words", type=lambda v: tuple(int(x) for x in v.split(",")), default=(4, 40),
                        help="words per item: MIN,MAX")
    parser.add_argument("--replicas", type=int, help="start the server scaled out on Ray Serve (needs .[ray])")
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds the server may take to be ready")
    parser.add_argument("--server-log", help="write the started server's log here (default: discard it)")
    parser.add_argument("--json", help="write the report here (and a PNG beside it)")
    args = parser.parse_args(argv)
    if args.url and not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        parser.error("--url must be a loopback address")
    return args


def workload(count: int, items: int, seed: int = 0,
             words: tuple[int, int] = (4, 40)) -> list[tuple[list[str], str | None]]:
    rng = random.Random(seed)
    return [([" ".join(rng.choices(WORDS, k=rng.randint(*words))) for _ in range(items)], ADAPTERS[i % len(ADAPTERS)])
            for i in range(count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def summarise(latencies, tokens, statuses, items, elapsed) -> dict:
    ok = sum(1 for s in statuses if s == "200")
    errors = {}
    for status in statuses:
        if status != "200":
            errors[status] = errors.get(status, 0) + 1
    return {"requests": len(statuses), "ok": ok, "seconds": round(elapsed, 3),
            "req_per_s": round(ok / elapsed, 2), "items_per_s": round(ok * items / elapsed, 1),
            "tokens_per_s": round(sum(tokens) / elapsed, 1),
            "p50_ms": round(percentile(latencies, 0.50) * 1e3, 2),
            "p95_ms": round(percentile(latencies, 0.95) * 1e3, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1e3, 2), "errors": errors}


async def drive(send, jobs, concurrency: int, seconds: float) -> tuple[list, list, list, float]:
    """Run `jobs` with `concurrency` workers, stopping new requests after `seconds`."""
    latencies, tokens, statuses = [], [], []
    queue = list(reversed(jobs))
    deadline = time.perf_counter() + seconds

    async def worker():
        while queue and time.perf_counter() < deadline:
            texts, adapter = queue.pop()
            started = time.perf_counter()
            status, used = await send(texts, adapter)
            latencies.append(time.perf_counter() - started)
            tokens.append(used)
            statuses.append(status)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, tokens, statuses, time.perf_counter() - started


def http_sender(client: httpx.AsyncClient, args):
    async def send_sie(texts, adapter):
        params = {"options": {"lora_id": adapter}} if adapter else {}
        body = msgpack.packb({"items": [{"text": t} for t in texts], "params": params}, use_bin_type=True)
        response = await client.post(f"/v1/encode/{args.model}", content=body,
                                     headers={"Content-Type": "application/msgpack"})
        if response.status_code != 200:
            return error_code(response), 0
        return "200", msgpack.unpackb(response.content, raw=False)["usage"]["input_tokens"]

    async def send_openai(texts, adapter):
        model = f"{args.model}:{adapter}" if adapter else args.model
        response = await client.post("/v1/embeddings", json={"model": model, "input": texts,
                                                             "encoding_format": "base64"})
        if response.status_code != 200:
            return error_code(response), 0
        return "200", response.json()["usage"]["prompt_tokens"]

    return send_openai if args.api == "openai" else send_sie


def error_code(response: httpx.Response) -> str:
    try:
        body = response.json()
        detail = body.get("detail") or body.get("error") or {}
        return f"{response.status_code} {detail.get('code', '')}".strip()
    except ValueError:
        return str(response.status_code)


def start_server(config: str, replicas: int | None = None, ready_timeout: float = 600.0,
                 log_path: Path | None = None) -> tuple[subprocess.Popen, str, float]:
    """The server on a free loopback port, its log in `log_path`; (process, url, seconds to ready). A server
    that never gets ready raises with the end of its log."""
    sys.path.insert(0, str(REPO))
    from tests.conftest import free_port, wait_ready

    port = free_port()
    scale = ["--replicas", str(replicas)] if replicas else []
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "launch.py", "--config", config, "--port", str(port),
                                "--log-level", "info" if log_path else "warning", *scale], cwd=REPO,
                               stdout=log, stderr=log, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=ready_timeout, process=process)
    except RuntimeError as exc:
        stop_server(process)
        tail = log_path.read_text()[-3000:] if log_path else ""
        raise RuntimeError(f"{exc}\n{tail}") from None
    return process, url, time.perf_counter() - started


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


def startup_info(url: str, model: str) -> dict | None:
    """The served model's start-up phases, compile count and CUDA graphs (None when scaled out)."""
    return httpx.get(f"{url}/v1/models/{model}", timeout=10).json().get("startup")


async def run_cell(send, args, concurrency: int, items: int, meter=None) -> dict:
    """One cell; `meter()` gives the server's (real, padding) token totals, for the padded fraction."""
    load = workload(args.requests, items, words=args.words)
    before = await meter() if meter else None
    latencies, tokens, statuses, elapsed = await drive(send, load, concurrency, args.seconds)
    cell = summarise(latencies, tokens, statuses, items, elapsed)
    after = await meter() if meter else None
    if before is not None and after is not None and after[0] > before[0]:
        real, padding = after[0] - before[0], after[1] - before[1]
        cell["padded_fraction"] = round(padding / (real + padding), 4)
    return cell


async def sweep(send, args, cells, meter=None) -> dict:
    await drive(send, workload(8, 4, seed=99), 4, 10)  # warm-up
    return {f"c{c}_i{i}": await run_cell(send, args, c, i, meter) for c, i in cells}


def http_meter(client: httpx.AsyncClient, model: str):
    """(real, padding) from the server's `sie_batch_tokens_total`; None where it has none (scaled out)."""
    from prometheus_client.parser import text_string_to_metric_families

    async def meter():
        totals = {}
        for family in text_string_to_metric_families((await client.get("/metrics")).text):
            for sample in family.samples:
                if sample.name == "sie_batch_tokens_total" and sample.labels.get("model") == model:
                    totals[sample.labels["kind"]] = sample.value
        return (totals["real"], totals.get("padding", 0.0)) if "real" in totals else None

    return meter


async def inprocess_sweep(args, cells) -> dict:
    sys.path.insert(0, str(REPO))
    from server.build import load_model
    from server.config import load_model_config, load_server_settings
    from server.options import EncodeOptions

    # The same SIE_* settings as the server it is compared with (which inherits this environment).
    settings = load_server_settings(env=os.environ, overrides={"device": args.device})
    started = time.perf_counter()
    model = await load_model(load_model_config(args.config), settings, backend="torch")
    args.inprocess_ready = {"ready_s": round(time.perf_counter() - started, 2),
                            "compiles": model.backend.engine_stats().compiles}
    model.batcher.start()
    totals = [0, 0]

    def observe(batch):
        totals[0] += batch.tokens
        totals[1] += batch.padded_tokens - batch.tokens

    model.batcher.on_batch = observe

    async def send(texts, adapter):
        result = await model.encode(texts, EncodeOptions(lora_id=adapter))
        return "200", result.input_tokens

    async def meter():
        return tuple(totals)

    try:
        return await sweep(send, args, cells, meter)
    finally:
        await model.batcher.stop()
        await model.backend.close()


async def main_async(args) -> dict:
    cells = [(int(c), int(i)) for i in args.items.split(",") for c in args.concurrency.split(",")]
    process, url, server = None, args.url, {}
    if url is None:
        log_path = Path(args.server_log) if args.server_log else None
        process, url, server["ready_s"] = start_server(args.config, args.replicas, args.ready_timeout, log_path)
        server["startup_at_ready"] = startup_info(url, args.model)
    try:
        # Drop idle connections before uvicorn's 5 s keep-alive closes them under a request being sent.
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256, keepalive_expiry=3)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            http = await sweep(http_sender(client, args), args, cells, http_meter(client, args.model))
        if process is not None:
            server["startup_after_load"] = startup_info(url, args.model)  # a recompile under load shows here
    finally:
        if process is not None:
            stop_server(process)
    report = {"api": args.api, "model": args.model, "replicas": args.replicas, "http": http,
              "cells": [f"c{c}_i{i}" for c, i in cells], "cpu_count": os.cpu_count(), "server": server}
    if args.compare_inprocess:
        inproc = await inprocess_sweep(args, cells)
        report["inprocess"], report["inprocess_model"] = inproc, args.inprocess_ready
        report["http_efficiency"] = {k: round(http[k]["items_per_s"] / inproc[k]["items_per_s"], 3)
                                     for k in http if inproc[k]["items_per_s"]}
        single = "c1_i1"
        if single in http:
            report["single_item_p50_overhead_ms"] = round(http[single]["p50_ms"] - inproc[single]["p50_ms"], 2)
    return report


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = report["cells"]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.4
    xs = range(len(cells))
    ax.bar([x - width / 2 for x in xs], [report["http"][c]["items_per_s"] for c in cells], width, label="HTTP")
    if "inprocess" in report:
        ax.bar([x + width / 2 for x in xs], [report["inprocess"][c]["items_per_s"] for c in cells], width,
               label="in-process")
    ax.set_xticks(list(xs), cells, rotation=30)
    ax.set_ylabel("items/s")
    ax.set_title(f"{report['model']} ({report['api']} API), c=concurrency, i=items per request")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = asyncio.run(main_async(args))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
        chart(report, Path(args.json).with_suffix(".png"))
    return report


if __name__ == "__main__":
    main()
