"""GPU node: SGLang vs our torch backend vs PEFT on a Qwen3-Embedding-0.6B-shaped model, then tokens/s.

Parity (bf16): cosine >= 0.9999 between each pair for base and every adapter, in one mixed batch.
Speed: tokens/s for base, 1 adapter and 8 mixed adapters on both backends, paired per round.

    pip install -e '.[sglang,bench]'
    python benchmarks/gpu/sglang_parity_bench.py --json benchmarks/out/gpu_parity.json
    python benchmarks/gpu/sglang_parity_bench.py --model-path Qwen/Qwen3-Embedding-0.6B   # real weights
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--model-path", help="real checkpoint instead of random 0.6B-shaped weights")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--json")
    return parser.parse_args(argv)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def main(argv=None) -> dict:
    import lora_overhead as lo
    import sglang
    from peft import PeftModel
    from sglang.srt.managers.io_struct import EmbeddingReqInput
    from transformers import AutoModel

    from server.backends.base import TokenBatch
    from server.build import load_model
    from server.config import ServerSettings, model_config_from_dict

    args = parse_args(argv)
    shape_args = lo.parse_args(["--layers", str(args.layers), "--rank", str(args.rank), "--many", "8",
                                "--rows", str(args.rows), "--tokens", str(args.tokens)])
    with tempfile.TemporaryDirectory(prefix="gpu-parity-") as tmp:
        assets = lo.build_assets(shape_args, Path(tmp))
        model_dir = args.model_path or str(assets["model"])
        adapters = {name: str(path) for name, path in assets["all7"][:8]}
        names = list(adapters)
        generator = torch.Generator().manual_seed(0)
        vocab = 151643 if args.model_path else shape_args.vocab
        ids = torch.randint(0, vocab, (args.rows, args.tokens - 1), generator=generator)
        ids = torch.cat([ids, torch.full((args.rows, 1), vocab - 1 if not args.model_path else 151643)], 1).tolist()
        mixed = [None if i % 9 == 0 else names[i % 8] for i in range(args.rows)]

        config = model_config_from_dict({
            "name": "gpu", "model_path": model_dir, "adapter": "torch", "dtype": "bfloat16",
            "max_seq_len": args.tokens + 8,
            "adapter_options_loadtime": {"lora_paths": adapters, "max_lora_rank": args.rank}})
        settings = ServerSettings(device="cuda", allow_noop_adapters=True)  # random vocab: no text probe
        model = asyncio.run(load_model(config, settings, backend="torch"))
        ours = model.backend
        torch_vectors = ours.embed_sync(TokenBatch(ids, [m and model.adapters.slot_of(m) for m in mixed]))

        base = AutoModel.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
        peft = PeftModel.from_pretrained(base, adapters[names[0]], adapter_name=names[0])
        for name in names[1:]:
            peft.load_adapter(adapters[name], adapter_name=name)
        with torch.inference_mode():
            hidden = peft(input_ids=torch.tensor(ids).cuda(),
                          adapter_names=[m or "__base__" for m in mixed]).last_hidden_state
        peft_vectors = hidden[:, -1].float().cpu().numpy()
        del peft, base
        torch.cuda.empty_cache()

        engine = sglang.Engine(model_path=model_dir, is_embedding=True, enable_lora=True, dtype="bfloat16",
                               lora_paths=[{"lora_name": n, "lora_path": p, "pinned": True}
                                           for n, p in adapters.items()],
                               max_loras_per_batch=9, max_lora_rank=args.rank, lora_target_modules=lo.ALL7,
                               context_length=args.tokens + 8, mem_fraction_static=0.6)
        loop = asyncio.new_event_loop()

        def sglang_embed(adapter_names):
            request = EmbeddingReqInput(input_ids=ids, lora_path=list(adapter_names))
            out = loop.run_until_complete(engine.tokenizer_manager.generate_request(request, None).__anext__())
            return np.asarray([o["embedding"] for o in out], dtype=np.float32)

        sglang_vectors = sglang_embed(mixed)
        parity = {"torch_vs_peft_min_cos": float(cosine(torch_vectors, peft_vectors).min()),
                  "sglang_vs_torch_min_cos": float(cosine(sglang_vectors, torch_vectors).min()),
                  "sglang_vs_peft_min_cos": float(cosine(sglang_vectors, peft_vectors).min())}

        variants = {"base": [None] * args.rows, "one": [names[0]] * args.rows,
                    "mixed8": [names[i % 8] for i in range(args.rows)]}
        runners = {}
        for label, chosen in variants.items():
            slots = [m and model.adapters.slot_of(m) for m in chosen]
            runners[f"torch_{label}"] = (lambda c=slots: ours.embed_sync(TokenBatch(ids, c)))
            runners[f"sglang_{label}"] = (lambda c=chosen: sglang_embed(c))
        times = {name: [] for name in runners}
        for fn in runners.values():
            fn()
        order = list(runners)
        for index in range(args.rounds):
            shift = index % len(order)
            for name in order[shift:] + order[:shift]:
                torch.cuda.synchronize()
                started = time.perf_counter()
                runners[name]()
                torch.cuda.synchronize()
                times[name].append(time.perf_counter() - started)
        engine.shutdown()
    tokens = args.rows * args.tokens
    report = {"parity": parity, "parity_ok": min(parity.values()) >= 0.9999,
              "tokens_per_s": {n: round(tokens / statistics.median(t), 1) for n, t in times.items()},
              "overhead_vs_base": {
                  n: round(statistics.median(a / b for a, b in zip(t, times[n.split("_")[0] + "_base"])) - 1, 4)
                  for n, t in times.items() if not n.endswith("_base")},
              "device": torch.cuda.get_device_name(), "layers": args.layers, "rows": args.rows, "tokens": args.tokens,
              "torch": torch.__version__, "sglang": sglang.__version__}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return report


if __name__ == "__main__":
    main()
