"""One decoder layer's seven linears at Qwen3-Embedding-0.6B shapes, timed with CUDA events: the base
linears alone, with the Triton LoRA kernels, and with the gathered-bmm control, over one batch of mixed
adapters (the control as an op-level timing instead of a second compiled model). Beside each overhead: the
modelled HBM bytes per token the LoRA path moves and the bandwidth the measured time implies.

    python benchmarks/gpu/op_bench.py --json benchmarks/out/gpu/op_bench.json        # a CUDA device
    python benchmarks/gpu/op_bench.py --device cpu --dtype float32 --hidden 64 ...   # smoke (interpreter)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the shared shapes and byte model
from lora_overhead import ALL7, lora_bytes  # noqa: E402
from lora_overhead import linear_shapes as shapes

# The input each linear reads, as in the model: q/k/v share one, gate/up another (one shrink per group).
INPUT_OF = {"q_proj": "attention", "k_proj": "attention", "v_proj": "attention", "o_proj": "heads",
            "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "activation"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--intermediate", type=int, default=3072)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=8, help="distinct adapters, round-robin over the rows")
    parser.add_argument("--grid", default="64x512,16x256", help="rows x tokens")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5, help="layer passes per timed round")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--json")
    return parser.parse_args(argv)


def build_layer(args):
    from server.lora import lora_ops
    from server.lora.groups import group_linears
    from server.lora.mixed_linear import MixedLoraLinear
    from server.lora.plan import BatchPlan

    dtype, device = getattr(torch, args.dtype), args.device
    slots = args.adapters + 1
    plan = BatchPlan(zero_slot=slots)
    plan.width = args.rank
    torch.manual_seed(0)
    layers = {}
    for name, (fan_in, fan_out) in shapes(args).items():
        linear = torch.nn.Linear(fan_in, fan_out, bias=False, device=device, dtype=dtype)
        layer = MixedLoraLinear(linear, plan, slots, args.rank)
        for slot in range(args.adapters):
            a = torch.randn(args.rank, fan_in, device=device) / fan_in ** 0.5
            layer.set_slot(slot, a.to(dtype), (torch.randn(fan_out, args.rank, device=device) * 0.01).to(dtype), 2.0)
        layers[f"layer.{name}"] = layer
    group_linears(layers)
    return layers, plan, lora_ops


def layer_pass(layers: dict, inputs: dict, plan, ops) -> None:
    plan.ops = ops
    for name, layer in layers.items():
        layer(inputs[INPUT_OF[name.rsplit(".", 1)[-1]]])


def base_pass(layers: dict, inputs: dict) -> None:
    for name, layer in layers.items():
        layer.base(inputs[INPUT_OF[name.rsplit(".", 1)[-1]]])


def timer(device: str):
    """Seconds of `fn` on the device: CUDA events on a GPU, the wall clock elsewhere."""
    def cuda(fn, repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / repeats

    def wall(fn, repeats):
        started = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - started) / repeats

    return cuda if device.startswith("cuda") else wall


@torch.inference_mode()
def measure_shape(args, layers, plan, ops, rows: int, tokens: int) -> dict:
    dtype, device = getattr(torch, args.dtype), args.device
    inputs = {INPUT_OF[name]: torch.randn(rows, tokens, fan_in, device=device, dtype=dtype)
              for name, (fan_in, _) in shapes(args).items()}
    plan.publish_rows(torch.tensor([i % args.adapters for i in range(rows)], device=device))
    variants = {"base": lambda: base_pass(layers, inputs), "triton": lambda: layer_pass(layers, inputs, plan, ops),
                "bmm": lambda: layer_pass(layers, inputs, plan, None)}
    time_of = timer(device)
    for fn in variants.values():
        fn()
    times = {name: [] for name in variants}
    for index in range(args.rounds):
        order = list(variants)[index % 3:] + list(variants)[:index % 3]
        for name in order:
            times[name].append(time_of(variants[name], args.repeats))
    plan.clear()
    moved = lora_bytes(args, ALL7, "grouped") * rows * tokens  # the kernels alone: one input read per group
    result = {"median_us": {n: round(statistics.median(t) * 1e6, 1) for n, t in times.items()},
              "lora_bytes_per_token_layer": moved // (rows * tokens)}
    for name in ("triton", "bmm"):
        result[f"overhead_{name}"] = round(statistics.median(v / b for v, b in zip(times[name], times["base"])) - 1, 4)
        lora_s = statistics.median(v - b for v, b in zip(times[name], times["base"]))
        result[f"implied_tb_per_s_{name}"] = round(moved / lora_s / 1e12, 3) if lora_s > 0 else None
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    layers, plan, ops = build_layer(args)
    grid = [tuple(int(n) for n in cell.split("x")) for cell in args.grid.split(",")]
    result = {"cells": {f"{r}x{t}": measure_shape(args, layers, plan, ops, r, t) for r, t in grid},
              "config": vars(args), "torch": torch.__version__,
              "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    print(json.dumps(result["cells"], indent=2), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
