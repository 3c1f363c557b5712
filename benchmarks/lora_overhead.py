"""LoRA overhead of our mixed-adapter forward vs the base model and vs PEFT, in process (no HTTP).

A random-weight model with Qwen3-Embedding-0.6B layer shapes and rank-16 adapters; every variant runs
the same batch, variants interleaved with the order rotated each round, and each overhead is the
median over rounds of the paired ratio t_variant / t_base - 1 (docs/spec/SPEC.md §7).

    python benchmarks/lora_overhead.py --quick --json out.json      # < 3 min on 2 CPU cores
    python benchmarks/lora_overhead.py --layers 28 --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]
ALL7 = QKVO + ["gate_proj", "up_proj", "down_proj"]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--vocab", type=int, default=16384, help="embedding lookups cost nothing; keep it small")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--many", type=int, default=64, help="distinct adapters in the 'mixed64' variant")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="2 layers, 32 x 64 tokens, 12 rounds")
    parser.add_argument("--no-peft", action="store_true")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="the model config's setting")
    parser.add_argument("--cuda-graphs", default="auto", choices=["auto", "on", "off"])
    parser.add_argument("--lora-kernels", default="auto", choices=["auto", "fused", "triton", "torch"],
                        help="the static path's LoRA: Triton kernels fused into their consumers, the kernels "
                             "alone, or the gathered bmm pair (the control)")
    parser.add_argument("--json", help="write the report here (and a PNG chart beside it)")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.tokens, args.rounds = 2, 64, 12
    return args


def build_assets(args, folder: Path) -> dict:
    """Random base model plus rank-r PEFT adapters (qkvo x 8, all-7 x max(8, many)) written to disk."""
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import Qwen3Config, Qwen3Model

    from server.demo_assets import qwen_tokenizer_dir

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                         intermediate_size=args.intermediate, max_position_embeddings=8192)
    model = Qwen3Model(config)
    dtype = getattr(torch, args.dtype)
    model.to(dtype).save_pretrained(folder / "model")  # as served: half the bytes to write and read in bf16
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):  # the server loads one
        shutil.copy(qwen_tokenizer_dir() / name, folder / "model" / name)
    shapes = {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    adapters = {"qkvo": [], "all7": []}
    for kind, targets, count in (("qkvo", QKVO, 8), ("all7", ALL7, max(8, args.many))):
        for i in range(count):
            name = f"{kind}{i}"
            out = folder / name
            LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=targets).save_pretrained(out)
            tensors = {}
            for path, (fan_in, fan_out) in shapes.items():
                if path.rsplit(".", 1)[-1] in targets:
                    a, b = torch.randn(args.rank, fan_in) / fan_in ** 0.5, torch.randn(fan_out, args.rank) * 0.01
                    tensors[f"base_model.model.{path}.lora_A.weight"] = a.to(dtype)
                    tensors[f"base_model.model.{path}.lora_B.weight"] = b.to(dtype)
            save_file(tensors, out / "adapter_model.safetensors")
            adapters[kind].append((name, out))
    return {"model": folder / "model", **adapters}


def pool_slots(args) -> int:
    """Adapter slots of the benchmark model: every adapter built, plus one free. The GPU benchmarks' server
    uses the same number, so its compiled graphs are the in-process model's (inductor's cache hits)."""
    return 8 + max(8, args.many) + 1


def model_config(args, model: Path, lora_paths: dict[str, str], **extra) -> dict:
    """The benchmark model's YAML content, shared by the in-process table and the served model."""
    return {"name": "bench/qwen3-0.6b-shaped", "model_path": str(model), "adapter": "torch", "dtype": args.dtype,
            "compile": args.compile, "cuda_graphs": args.cuda_graphs, "lora_kernels": args.lora_kernels,
            "adapter_options_loadtime": {"lora_paths": lora_paths, "max_loras_per_batch": 8,
                                         "max_lora_rank": args.rank}, **extra}


def our_model(args, assets):
    """Our torch backend with every adapter installed by the registry, as the server loads it."""
    from server.build import load_model
    from server.config import ServerSettings, model_config_from_dict

    every = assets["qkvo"] + assets["all7"]
    config = model_config_from_dict(model_config(args, assets["model"], {n: str(p) for n, p in every}))
    config = dataclasses.replace(config, adapters=dataclasses.replace(config.adapters, max_loras_per_batch=len(every)))
    # The random model's vocabulary may be smaller than the tokenizer's, so the text probe of the adapter-effect
    # check would index past it; the benchmark feeds random ids and its adapters are non-zero by construction.
    settings = ServerSettings(max_loras_per_model=pool_slots(args), device=args.device, allow_noop_adapters=True)
    return asyncio.run(load_model(config, settings, backend="torch"))


def peft_model(args, assets):
    from peft import PeftModel
    from transformers import AutoModel

    base = AutoModel.from_pretrained(assets["model"], dtype=getattr(torch, args.dtype)).to(args.device).eval()
    (first, first_dir), *rest = assets["all7"][:8]
    model = PeftModel.from_pretrained(base, first_dir, adapter_name=first)
    for name, folder in rest:
        model.load_adapter(folder, adapter_name=name)
    merged_base = AutoModel.from_pretrained(assets["model"], dtype=getattr(torch, args.dtype)).to(args.device)
    merged = PeftModel.from_pretrained(merged_base, first_dir).merge_and_unload().eval()
    return model.eval(), merged


def make_variants(args, assets, served, peft_pair):
    from server.backends.base import TokenBatch

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.rows, args.tokens), generator=generator)
    rows = ids.tolist()
    many_rows = max(args.rows, args.many)
    many_tokens = max(1, args.rows * args.tokens // many_rows)
    many_ids = torch.randint(0, args.vocab, (many_rows, many_tokens), generator=generator).tolist()
    qkvo = [n for n, _ in assets["qkvo"]]
    all7 = [n for n, _ in assets["all7"]]

    def ours(batch_rows, adapters):
        batch = TokenBatch(batch_rows, [None if a is None else served.adapters.slot_of(a) for a in adapters])
        return lambda: served.backend.embed_sync(batch)

    variants = {
        "base": ours(rows, [None] * args.rows),
        "ours_1_qkvo": ours(rows, [qkvo[0]] * args.rows),
        "ours_qkvo_mixed8": ours(rows, [qkvo[i % 8] for i in range(args.rows)]),
        "ours_all7_mixed8": ours(rows, [all7[i % 8] for i in range(args.rows)]),
        "base_many_rows": ours(many_ids, [None] * many_rows),
        f"ours_all7_mixed{args.many}": ours(many_ids, [all7[i % args.many] for i in range(many_rows)]),
    }
    if peft_pair is not None:
        model, merged = peft_pair
        tensor = ids.to(args.device)
        names = [all7[i % 8] for i in range(args.rows)]

        def peft_mixed():
            with torch.inference_mode():
                return model(input_ids=tensor, adapter_names=names, use_cache=False).last_hidden_state

        def peft_merged():
            with torch.inference_mode():
                return merged(input_ids=tensor, use_cache=False).last_hidden_state

        variants["peft_all7_mixed8"] = peft_mixed
        variants["peft_merged1"] = peft_merged
    many_shape = (many_rows, many_tokens)
    return variants, {"base_many_rows": many_shape, f"ours_all7_mixed{args.many}": many_shape}


def timed(fn, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - started


def measure(variants: dict, rounds: int, device: str) -> dict[str, list[float]]:
    for fn in variants.values():
        fn()  # warm-up (allocator, kernels, lazy init)
    times = {name: [] for name in variants}
    order = list(variants)
    for index in range(rounds):
        shift = index % len(order)
        for name in order[shift:] + order[:shift]:
            times[name].append(timed(variants[name], device))
    return times


def paired(times: dict, variant: str, base: str) -> float:
    return statistics.median(v / b for v, b in zip(times[variant], times[base])) - 1


def linear_shapes(args) -> dict[str, tuple[int, int]]:
    q, kv = args.heads * args.head_dim, args.kv_heads * args.head_dim
    return {"q_proj": (args.hidden, q), "k_proj": (args.hidden, kv), "v_proj": (args.hidden, kv),
            "o_proj": (q, args.hidden), "gate_proj": (args.hidden, args.intermediate),
            "up_proj": (args.hidden, args.intermediate), "down_proj": (args.intermediate, args.hidden)}


GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))
FUSED_CONSUMERS = {"q_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # v: a plain expand


def lora_bytes(args, targets: list[str], design: str) -> int:
    """Modelled LoRA bytes per token and layer moved to and from memory over the base forward's (the adapters'
    own weights, read once per batch, left out): shrinks read their input (once per linear on the
    `per_linear` paths, the eager segments and the bmm control; once per group with the Triton kernels) and
    write u in float32, expands read u back and read-modify-write their base output, except where `fused`
    adds the update inside the op that reads that output anyway."""
    element = torch.finfo(getattr(torch, args.dtype)).bits // 8
    shapes, u_bytes = linear_shapes(args), args.rank * 4
    total = 0
    for group in GROUPS:
        members = [name for name in group if name in targets]
        if not members:
            continue
        reads = len(members) if design == "per_linear" else 1
        total += reads * shapes[members[0]][0] * element + len(members) * u_bytes
        for name in members:
            fused = design == "fused" and name in FUSED_CONSUMERS
            total += u_bytes + (0 if fused else 2 * shapes[name][1] * element)
    return total


def lora_design(served) -> str:
    static = served.backend._static
    if static is not None and static.fused is not None:
        return "fused"
    return "grouped" if served.backend._plan.ops is not None else "per_linear"


def byte_model(args, times: dict, design: str, overheads: dict) -> dict:
    """Beside each overhead: the modelled LoRA bytes per token and layer, and the bandwidth the measured extra
    time implies for them (a regression shows as more bytes or fewer GB/s)."""
    base_s = statistics.median(times["base"])
    tokens = args.rows * args.tokens * args.layers
    out = {"design": design}
    for key, targets in (("overhead_1_qkvo", QKVO), ("overhead_qkvo_mixed8", QKVO), ("overhead_all7_mixed8", ALL7)):
        modelled = lora_bytes(args, targets, design)
        extra_s = overheads[key] * base_s
        out[key] = {"kb_per_token_layer": round(modelled / 1e3, 2),
                    "implied_gb_s": round(modelled * tokens / extra_s / 1e9, 1) if extra_s > 0 else None}
    return out


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        return "unknown"


def report(args, times: dict, shapes: dict, design: str = "per_linear") -> dict:
    many = f"ours_all7_mixed{args.many}"
    tokens = {name: (shapes.get(name, (args.rows, args.tokens))) for name in times}
    result = {
        "overhead_1_qkvo": paired(times, "ours_1_qkvo", "base"),
        "overhead_qkvo_mixed8": paired(times, "ours_qkvo_mixed8", "base"),
        "overhead_all7_mixed8": paired(times, "ours_all7_mixed8", "base"),
        "overhead_all7_mixed64": paired(times, many, "base_many_rows"),
        "median_ms": {n: round(statistics.median(t) * 1e3, 2) for n, t in times.items()},
        "tokens_per_s": {n: round(r * c / statistics.median(t), 1) for n, t in times.items()
                         for r, c in [tokens[n]]},
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "threads": torch.get_num_threads(),
                    "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"},
        "torch": torch.__version__,
        "commit": commit(),
    }
    result["byte_model"] = byte_model(args, times, design, result)
    if "peft_all7_mixed8" in times:
        result["overhead_peft_all7_mixed8"] = paired(times, "peft_all7_mixed8", "base")
        result["overhead_peft_merged1"] = paired(times, "peft_merged1", "base")
        result["speedup_vs_peft_mixed8"] = statistics.median(
            p / o for p, o in zip(times["peft_all7_mixed8"], times["ours_all7_mixed8"]))
    return result


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in result if k.startswith("overhead_")]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([k.removeprefix("overhead_") for k in keys], [100 * result[k] for k in keys], color="#4472c4")
    ax.set_ylabel("paired overhead vs base (%)")
    ax.set_title(f"LoRA overhead, {result['config']['layers']} layers, {result['machine']['device']}")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lora-bench-") as tmp:
        assets = build_assets(args, Path(tmp))
        model = our_model(args, assets)
        peft_pair = None if args.no_peft else peft_model(args, assets)
        variants, shapes = make_variants(args, assets, model, peft_pair)
        times = measure(variants, args.rounds, args.device)
        design = lora_design(model)
        asyncio.run(model.backend.close())
    result = report(args, times, shapes, design)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
        chart(result, Path(args.json).with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()
