"""HTTP vs in process on the GPU: a random model at Qwen3-Embedding-0.6B shapes with the real Qwen3
tokenizer and three all-seven rank-16 adapters (legal, medical, finance), items of 100-300 words, adapters
round-robin with base; benchmarks/serve_load.py drives both sides and reports the HTTP efficiency ratio.
The served model is configured as torch_bench's in-process model (same shapes, adapter pool and rank), so
whichever compiles second reads inductor's cache. Also: seconds to ready (cold on a fresh node) and, with
`--restart`, again with the compile cache warm; compile counts at ready and after the load.

    python benchmarks/gpu/serve_bench.py --restart --json benchmarks/out/gpu/serve_bench.json   # H100, bf16
    python benchmarks/gpu/serve_bench.py --layers 1 --hidden 64 ... --dtype float32 --concurrency 1,2  # smoke
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

BENCHMARKS = Path(__file__).resolve().parents[1]  # the scripts this one drives
QWEN3_VOCAB = 151669  # the real tokenizer's ids must index the embedding (torch_bench uses it too)


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="28")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--concurrency", default="1,64")
    parser.add_argument("--items", default="1,16")
    parser.add_argument("--words", default="100,300")
    parser.add_argument("--requests", default="400")
    parser.add_argument("--seconds", default="30")
    parser.add_argument("--restart", action="store_true", help="start the server once more: ready with a warm cache")
    parser.add_argument("--json")
    return parser.parse_known_args(argv)


def write_config(folder: Path, shape_argv: list[str], own) -> Path:
    """The model and adapters (built as lora_overhead builds them) and a model YAML serving them."""
    bench = load("lora_overhead")
    args = bench.parse_args([*shape_argv, "--layers", own.layers, "--vocab", str(QWEN3_VOCAB), "--many", "8",
                             "--dtype", own.dtype])
    assets = bench.build_assets(args, folder)
    adapters = dict(zip(("legal", "medical", "finance"), (str(path) for _, path in assets["all7"])))
    os.environ["SIE_MAX_LORAS_PER_MODEL"] = str(bench.pool_slots(args))  # the server and the in-process side
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(bench.model_config(args, assets["model"], adapters, max_seq_len=1024,
                                                      pooling="last")))
    return path


def warm_restart(config: Path, model: str, log_path: Path) -> dict:
    """Seconds to ready for a second start on this node (inductor's cache now warm), and what it compiled."""
    serve_load = load("serve_load")
    process, url, ready_s = serve_load.start_server(str(config), log_path=log_path)
    try:
        return {"ready_s": round(ready_s, 2), "startup": serve_load.startup_info(url, model)}
    finally:
        serve_load.stop_server(process)


def main(argv=None) -> dict:
    own, shape_argv = parse_args(argv)
    model = "bench/qwen3-0.6b-shaped"
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        config = write_config(Path(tmp), shape_argv, own)
        argv = ["--config", str(config), "--model", model, "--compare-inprocess",
                "--concurrency", own.concurrency, "--items", own.items, "--words", own.words,
                "--requests", own.requests, "--seconds", own.seconds, "--server-log", str(Path(tmp) / "server.log")]
        report = load("serve_load").main(argv)
        if own.restart:
            report["restart"] = warm_restart(config, model, Path(tmp) / "restart.log")
            print(json.dumps({"restart": report["restart"]}, indent=2), flush=True)
    if own.json:
        Path(own.json).parent.mkdir(parents=True, exist_ok=True)
        Path(own.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
