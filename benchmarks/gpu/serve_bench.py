"""HTTP vs in process on the GPU: a random model at Qwen3-Embedding-0.6B shapes with the real Qwen3
tokenizer and three all-seven rank-16 adapters (legal, medical, finance), items of 100-300 words, adapters
round-robin with base; benchmarks/serve_load.py drives both sides and reports the HTTP efficiency ratio.

    python benchmarks/gpu/serve_bench.py --json benchmarks/out/gpu/serve_bench.json      # H100, bf16
    python benchmarks/gpu/serve_bench.py --layers 1 --hidden 64 ... --dtype float32 --concurrency 1,2  # smoke
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
from pathlib import Path

import yaml

BENCHMARKS = Path(__file__).resolve().parents[1]  # the scripts this one drives
QWEN3_VOCAB = 151669  # the real tokenizer's ids must index the embedding


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
    parser.add_argument("--json")
    return parser.parse_known_args(argv)


def write_config(folder: Path, shape_argv: list[str], own) -> Path:
    """The model and adapters (built as lora_overhead builds them) and a model YAML serving them."""
    bench = load("lora_overhead")
    args = bench.parse_args([*shape_argv, "--layers", own.layers, "--vocab", str(QWEN3_VOCAB), "--many", "8"])
    assets = bench.build_assets(args, folder)
    adapters = dict(zip(("legal", "medical", "finance"), (str(path) for _, path in assets["all7"])))
    config = {"name": "bench/qwen3-0.6b-shaped", "model_path": str(assets["model"]), "adapter": "torch",
              "dtype": own.dtype, "max_seq_len": 1024, "pooling": "last",
              "adapter_options_loadtime": {"lora_paths": adapters, "max_loras_per_batch": 8,
                                           "max_lora_rank": args.rank}}
    path = folder / "model.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def main(argv=None) -> dict:
    own, shape_argv = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        config = write_config(Path(tmp), shape_argv, own)
        argv = ["--config", str(config), "--model", "bench/qwen3-0.6b-shaped", "--compare-inprocess",
                "--concurrency", own.concurrency, "--items", own.items, "--words", own.words,
                "--requests", own.requests, "--seconds", own.seconds]
        return load("serve_load").main(argv + (["--json", own.json] if own.json else []))


if __name__ == "__main__":
    main()
