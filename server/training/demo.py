"""`make demo-adapter`: for each real model, train an adapter on the FAQ's train split, serve the model
with `launch.py`, hot-load the adapter through the admin API, evaluate base vs adapter on the held-out
split through the SIE SDK, and write `benchmarks/out/demo-adapter/<model>.json|png`.

Usage: python -m server.training.demo [--port N] [all-minilm-l6-v2] [smollm2-135m]   (default: a free port)
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from server.cache import cache_dir
from server.config import load_model_config
from server.training.evaluate import EvalTask, evaluate, markdown_table, write_report
from server.training.faq import faq_records, split_faq, write_split
from server.training.train import TrainSettings, log_progress, train_adapter

log = logging.getLogger("demo")
ADAPTER = "zaragoza-construction-faq"
OUT = Path("benchmarks/out/demo-adapter")


@dataclass(frozen=True)
class Recipe:
    config: str
    train: TrainSettings


RECIPES = {
    "all-minilm-l6-v2": Recipe("model_configs/all-minilm-l6-v2.yaml", TrainSettings(
        rank=16, alpha=32, epochs=3, batch_size=32, learning_rate=2e-4, max_seq_len=256, seed=0)),
    "smollm2-135m": Recipe("model_configs/smollm2-135m.yaml", TrainSettings(
        rank=16, alpha=32, targets=("q_proj", "k_proj", "v_proj", "o_proj"), steps=60, batch_size=16,
        learning_rate=2e-3, max_seq_len=128, seed=0)),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def served(config_path: str, timeout: float = 300.0, port: int | None = None):
    """`launch.py --config <config_path>` on loopback (`port`, else a free one) until the block ends; yields
    its URL."""
    import httpx

    port = port or free_port()
    process = subprocess.Popen([sys.executable, "launch.py", "--config", config_path, "--port", str(port),
                                "--log-level", "warning"])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server for {config_path} exited with status {process.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server for {config_path} was not ready in {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)


def hot_load(url: str, model: str, adapter: str) -> dict:
    import httpx

    response = httpx.post(f"{url}/v1/models/{model}/loras", json={"name": adapter}, timeout=300)
    if response.status_code not in (200, 201):
        raise RuntimeError(f"hot-loading {adapter} failed: {response.status_code} {response.text}")
    return response.json()


def run_model(slug: str, split, out_dir: Path, port: int | None = None) -> dict:
    recipe = RECIPES[slug]
    config = load_model_config(recipe.config)
    adapter_dir = Path(config.lora_roots[0]) / ADAPTER
    log.info("%s: training %s on %d pairs", slug, ADAPTER, len(split.train))
    started = time.perf_counter()
    losses = train_adapter(config, split.train, recipe.train, adapter_dir, on_step=log_progress)
    trained_s = time.perf_counter() - started
    with served(recipe.config, port=port) as url:
        hot_load(url, config.name, ADAPTER)
        report = evaluate(EvalTask(url=url, model=config.name, pairs=split.test, corpus=split.corpus,
                                   adapters=[ADAPTER]))
    report["training"] = {"pairs": len(split.train), "steps": len(losses), "seconds": round(trained_s, 1),
                          "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
                          "settings": asdict(recipe.train)}
    json_path, png_path = write_report(report, out_dir, slug)
    log.info("%s: wrote %s and %s", slug, json_path, png_path)
    return report


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per encode call otherwise
    port = None
    if argv[:1] == ["--port"]:
        if len(argv) < 2 or not argv[1].isdigit():
            print("error: --port needs a port number", file=sys.stderr)
            return 2
        port, argv = int(argv[1]), argv[2:]
    slugs = argv or list(RECIPES)
    unknown = [s for s in slugs if s not in RECIPES]
    if unknown:
        print(f"error: unknown demo model(s) {', '.join(unknown)}; choose from {', '.join(RECIPES)}",
              file=sys.stderr)
        return 2
    split = split_faq(faq_records())
    paths = write_split(split, cache_dir() / "demo" / ADAPTER)
    log.info("FAQ split: %d train, %d test, %d documents (%s)", len(split.train), len(split.test),
             len(split.corpus), paths["train"].parent)
    started = time.perf_counter()
    tables = {slug: markdown_table(run_model(slug, split, OUT, port)) for slug in slugs}
    for slug, table in tables.items():
        print(f"\n{slug} (held-out questions, all {len(split.corpus)} answers ranked)\n{table}", flush=True)
    print(json.dumps({"total_seconds": round(time.perf_counter() - started, 1)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
