"""Soak: the demo server under loopback load above capacity, with bad requests, hot-loads, evictions and
optionally one SIGTERM-restart cycle; every good answer is checked against a reference vector.

    python benchmarks/soak.py --duration 60 --json benchmarks/out/soak.json --restart
    python benchmarks/soak.py --requests 4000 --duration 240 --restart   # a fixed count, the time a limit
    python benchmarks/soak.py --duration 600 --json benchmarks/out/soak-10min.json --restart

Report keys: sent, answered_by_status, lost (sent, never answered: the connection closed or reset under
the request), lost_by_error (which error each was), timed_out (sent, no answer within the client's
--timeout: counted apart, a slow answer is not a dropped one), refused (connection refused, never sent: the
restart gap), wrong_vectors, server_errors (5xx other than 503), rss_growth_mb. `--busy N` keeps N other
processes spinning on the CPU throughout (a shared, loaded machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import msgpack
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODEL = "demo/qwen3-tiny"
ADAPTERS = [None, "legal", "medical", "finance", "retail", "travel"]
WEIGHTS = [3, 2, 2, 2, 1, 1]
WORDS = ["contract", "court", "patient", "revenue", "market", "clinical", "statute", "dosage", "portfolio",
         "appeal", "invoice", "symptom", "merger", "liability", "therapy", "dividend", "refund", "itinerary"]
BAD_BODIES = [
    ({"items": []}, "application/json"),
    ({"items": [{"text": "x"}], "params": {"options": {"lora_id": "no-such-adapter"}}}, "application/json"),
    ({"items": [{"text": "x"}], "params": {"output_dtype": "int3"}}, "application/json"),
    ({"items": [{"text": "word " * 3000}], "params": {"options": {"overflow_policy": "error"}}}, "application/json"),
    (b"\xc1\xc1\xc1", "application/msgpack"),
    (b"{broken", "application/json"),
    ({"items": [{"text": ""}]}, "application/msgpack"),
    ({"items": [{"text": "x"}], "params": {"options": {"profile": "nope"}}}, "application/msgpack"),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds at most (the limit)")
    parser.add_argument("--requests", type=int, default=None,
                        help="stop after this many requests (default: run for the whole duration)")
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--bad-fraction", type=float, default=0.10)
    parser.add_argument("--restart", action="store_true", help="one SIGTERM + restart cycle half way through")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0, help="the client's seconds for one answer")
    parser.add_argument("--busy", type=int, default=0, help="processes kept spinning on the CPU meanwhile")
    parser.add_argument("--json")
    return parser.parse_args(argv)


def text_pool(rng: random.Random, size: int = 48) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=rng.randint(3, 60))) for _ in range(size)]


def references(texts: list[str]) -> dict[tuple[int, str | None], np.ndarray]:
    """Vectors from an in-process torch backend holding every adapter (the server's own numerics)."""
    import dataclasses

    from transformers import AutoTokenizer

    from server.backends.base import TokenBatch
    from server.build import load_model
    from server.config import ServerSettings, load_model_config
    from server.demo_assets import ensure_builtin
    from server.tokenization import TextTokenizer

    config = load_model_config(REPO / "model_configs" / "demo.yaml")
    paths = dict(config.adapters.lora_paths)
    dynamic = ensure_builtin("builtin:qwen3-tiny/dynamic")
    paths.update({name: str(dynamic / name) for name in ("retail", "travel")})
    config = dataclasses.replace(config, adapters=dataclasses.replace(config.adapters, lora_paths=paths))
    model = asyncio.run(load_model(config, ServerSettings(device="cpu"), backend="torch"))
    backend = model.backend
    tokenizer = TextTokenizer(AutoTokenizer.from_pretrained(ensure_builtin(config.model_path)),
                              max_seq_len=config.max_seq_len, query_template=config.query_template,
                              default_instruction=config.default_instruction)
    ids = tokenizer.tokenize(texts).input_ids
    table = {}
    for adapter in ADAPTERS:
        slot = None if adapter is None else model.adapters.slot_of(adapter)
        vectors = backend.embed_sync(TokenBatch(ids, [slot] * len(ids)))
        for i, vector in enumerate(vectors):
            table[(i, adapter)] = vector / np.linalg.norm(vector)
    asyncio.run(backend.close())
    return table


class Server:
    def __init__(self, port: int, queue_items: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.args = [sys.executable, "launch.py", "--config", "model_configs/demo.yaml", "--port", str(port),
                     "--log-level", "warning", "--max-loras-per-model", "4", "--max-queue-items", str(queue_items),
                     "--max-items-per-request", "64",
                     "--shutdown-grace-s", "20"]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        from tests.conftest import wait_ready

        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (read after the process exits, closed in stop())
        self.process = subprocess.Popen(self.args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        try:
            wait_ready(self.url, timeout=180, process=self.process)
        except RuntimeError as exc:
            self.log.seek(0)
            raise RuntimeError(f"{exc}:\n{self.log.read()[-2000:]}") from None

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=90)


class Tally:
    def __init__(self, limit: int | None = None):
        self.limit = limit  # requests to start at most (None: no count, only the duration)
        self.started = 0
        self.sent = self.lost = self.timed_out = self.refused = self.wrong = self.server_errors = 0
        self.by_status: dict[str, int] = {}
        self.lost_by_error: dict[str, int] = {}

    def take(self) -> bool:
        """Whether another request may start (the count is not spent)."""
        if self.limit is not None and self.started >= self.limit:
            return False
        self.started += 1
        return True

    def answered(self, response: httpx.Response) -> None:
        key = str(response.status_code)
        try:
            code = (response.json().get("detail") or {}).get("code") if response.status_code != 200 else None
        except ValueError:
            code = None
        key = f"{key} {code}" if code else key
        self.by_status[key] = self.by_status.get(key, 0) + 1
        if response.status_code >= 500 and response.status_code != 503:
            self.server_errors += 1


async def one_request(client, rng, texts, table, tally: Tally, bad_fraction: float) -> None:
    if rng.random() < bad_fraction:
        body, content_type = rng.choice(BAD_BODIES)
        content = body if isinstance(body, bytes) else (
            msgpack.packb(body) if content_type == "application/msgpack" else json.dumps(body).encode())
        picks, adapter = [], None
    else:
        picks = [rng.randrange(len(texts)) for _ in range(rng.randint(1, 8))]
        adapter = rng.choices(ADAPTERS, WEIGHTS)[0]
        params = {"options": {"lora_id": adapter}} if adapter else {}
        content = msgpack.packb({"items": [{"id": str(i), "text": texts[i]} for i in picks], "params": params})
        content_type = "application/msgpack"
    try:
        response = await client.post(f"/v1/encode/{MODEL}", content=content,
                                      headers={"Content-Type": content_type, "Accept": "application/json"})
    except httpx.ConnectError:
        tally.refused += 1
        tally.started -= 1  # never sent: it does not count against --requests
        return
    except httpx.TimeoutException:
        tally.sent += 1
        tally.timed_out += 1
        return
    except httpx.HTTPError as exc:
        tally.sent += 1
        tally.lost += 1
        name = f"{type(exc).__name__}: {exc}"[:120]
        tally.lost_by_error[name] = tally.lost_by_error.get(name, 0) + 1
        return
    tally.sent += 1
    tally.answered(response)
    if response.status_code == 200:
        if not picks:
            tally.wrong += 1  # a bad request must never be answered with vectors
            return
        items = response.json()["items"]
        if [item["id"] for item in items] != [str(i) for i in picks]:
            tally.wrong += 1
            return
        for i, item in zip(picks, items):
            vector = np.array(item["dense"]["values"], dtype=np.float32)
            if np.abs(vector - table[(i, adapter)]).max() > 1e-5:
                tally.wrong += 1
    elif picks == [] and response.status_code not in (400, 413, 503):
        tally.wrong += 1


async def drive(server: Server, args, texts, table, tally: Tally, until: float) -> None:
    rng = random.Random(args.seed)
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    async with httpx.AsyncClient(base_url=server.url, timeout=args.timeout, limits=limits) as client:
        async def worker(index: int):
            local = random.Random(args.seed * 1000 + index)
            while time.monotonic() < until and tally.take():
                await one_request(client, local, texts, table, tally, args.bad_fraction)
                if tally.refused and local.random() < 0.5:
                    await asyncio.sleep(0.05)  # do not spin on a closed port during a restart
        await asyncio.gather(*(worker(i) for i in range(args.concurrency)))
    del rng


def main(argv=None) -> dict:
    args = parse_args(argv)
    busy = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
    try:
        return soak(args)
    finally:
        for process in busy:
            process.kill()


SPIN = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def soak(args) -> dict:
    from tests.conftest import free_port

    texts = text_pool(random.Random(args.seed))
    table = references(texts)
    server = Server(free_port(), queue_items=max(64, args.concurrency * 4))
    server.start()
    tally, exit_codes, started = Tally(args.requests), [], time.monotonic()
    end = started + args.duration
    rss_start = None

    async def run() -> None:
        nonlocal rss_start
        warm_until = min(end, time.monotonic() + min(10.0, args.duration / 6))
        if args.requests is not None:  # warm up on a sixth of the count, so the restart phase gets the rest
            tally.limit = args.requests // 6
        await drive(server, args, texts, table, tally, warm_until)
        tally.limit = args.requests
        rss_start = server.rss_mb()
        if args.restart:
            half = time.monotonic() + (end - time.monotonic()) / 2
            half_count = None if tally.limit is None else tally.started + (tally.limit - tally.started) / 2
            load = asyncio.create_task(drive(server, args, texts, table, tally, end))
            # Half way: by time, or by count when one is set (whichever comes first).
            while time.monotonic() < half and not load.done() and (half_count is None or tally.started < half_count):
                await asyncio.sleep(0.05)
            exit_codes.append(await asyncio.to_thread(server.stop))
            await asyncio.to_thread(server.start)
            await asyncio.sleep(min(10.0, max(0.0, (end - time.monotonic()) / 4)))  # warm the new process
            rss_start = server.rss_mb()
            await load
        else:
            await drive(server, args, texts, table, tally, end)

    try:
        asyncio.run(run())
        rss_end = server.rss_mb()
    finally:
        exit_codes.append(server.stop())
    report = {"duration_s": round(time.monotonic() - started, 1), "concurrency": args.concurrency,
              "requests_limit": args.requests, "sent": tally.sent,
              "answered_by_status": dict(sorted(tally.by_status.items())), "lost": tally.lost,
              "lost_by_error": tally.lost_by_error, "timed_out": tally.timed_out, "refused": tally.refused,
              "wrong_vectors": tally.wrong, "server_errors": tally.server_errors,
              "rss_growth_mb": round(rss_end - rss_start, 1), "restarts": int(args.restart),
              "exit_codes": exit_codes, "busy": args.busy}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    return report


if __name__ == "__main__":
    main()
