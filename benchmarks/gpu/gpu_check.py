"""`make gpu-check`: every GPU target of the torch engine in one run of at most 9 minutes, compiles included,
on a bare H100/H200 node (torch, transformers, peft and triton preinstalled, the rest from `make wheelhouse`).
Stages, in order, each in its own process with a reserved share of the budget (a stage may use what earlier
ones left, never what later ones are owed):

1. `tests` (16%): the gpu test tier (`pytest -m gpu tests/gpu`);
2. `serve` (38%): what a user meets: serve_bench's seconds to ready on this fresh node (cold compile), HTTP
   c1x1 and c64x1 against the same requests in process, compile counts at ready and after the load, and
   seconds to ready once more with inductor's cache warm;
3. `bench` (32%): torch_bench's in-process table with the Triton kernels fused into the decoder forward (the
   single 256-token query, then 64x512 and 16x256, each with its LoRA byte model), its model configured as
   the served one so its compile reads the cache;
4. `ops` (14%): op_bench, one layer's linears with the unfused kernels and with the gathered-bmm control timed
   by CUDA events (the control without a second model compile), with the modelled LoRA bytes per token.

The table (measured / control / goal / pass) is printed after each stage, so a run cut short still shows
what it measured; `--json` keeps everything, with per-stage seconds and the start-up phases.

    python benchmarks/gpu/gpu_check.py --json benchmarks/out/gpu/gpu_check.json   # the GPU node
    python benchmarks/gpu/gpu_check.py --smoke                                      # CPU, tiny shapes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GPU = REPO / "benchmarks" / "gpu"
TINY = ["--layers", "1", "--hidden", "64", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
        "--intermediate", "128", "--dtype", "float32"]
OP_TINY = ["--hidden", "64", "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--intermediate", "128",
           "--dtype", "float32", "--device", "cpu", "--grid", "4x16", "--rounds", "2", "--repeats", "1"]
SHARES = {"tests": 0.16, "serve": 0.38, "bench": 0.32, "ops": 0.14}
# (row, (stage, key...), goal, "max" | "min" | "eq", control's (stage, key...) or None): the open goals of the
# GPU start-up issue (ready, HTTP, base, single query) and of the fused-LoRA issue (overheads).
TARGETS = [
    ("GPU tier (pytest -m gpu)", ("tests", "summary"), "all passed", "tier", None),
    ("served model ready, cold, s", ("serve", "ready_s"), 60.0, "max", None),
    ("ready with a warm cache, s", ("serve", "restart_ready_s"), 20.0, "max", None),
    ("compiles after ready (served)", ("serve", "recompiles"), 0, "eq", None),
    ("HTTP c1x1 p50, ms", ("serve", "c1_i1", "p50_ms"), 5.0, "max", None),
    ("HTTP c64x1 / in process", ("serve", "c64_i1", "efficiency"), 0.8, "min", None),
    ("base tokens/s, 64x512", ("bench", "big", "base_tokens_per_s"), 400_000, "min", None),
    ("8 mixed on all seven, 64x512", ("bench", "big", "overhead_all7_mixed8"), 0.06, "max", None),
    ("8 mixed on q/k/v/o, 64x512", ("bench", "big", "overhead_qkvo_mixed8"), 0.04, "max", None),
    ("8 mixed on all seven, 16x256", ("bench", "small", "overhead_all7_mixed8"), 0.08, "max", None),
    ("single 256-token query, ms", ("bench", "single", "base_ms"), 2.5, "max", None),
    ("one adapter on it, ms over base", ("bench", "single", "adapter_extra_ms"), 0.25, "max", None),
    ("compiles after ready (in process)", ("bench", "recompiles"), 0, "eq", None),
    ("LoRA KB/token/layer, all seven (bench's model)", ("bench", "big", "lora_kb_all7"), None, "info", None),
    ("implied LoRA bandwidth, all seven, GB/s", ("bench", "big", "implied_gb_s_all7"), None, "info", None),
    ("layer LoRA overhead, 64x512 (ops)", ("ops", "big", "overhead_triton"), None, "info",
     ("ops", "big", "overhead_bmm")),
    ("LoRA bytes/token/layer (model)", ("ops", "big", "lora_bytes_per_token_layer"), None, "info", None),
    ("implied LoRA bandwidth, TB/s", ("ops", "big", "implied_tb_per_s_triton"), None, "info",
     ("ops", "big", "implied_tb_per_s_bmm")),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for every stage together")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (the default suite's check)")
    parser.add_argument("--rounds", default="6", help="timed rounds per variant in torch_bench")
    parser.add_argument("--json", help="write every stage's results here")
    return parser.parse_args(argv)


def stage(command: list[str], limit: float, out: Path | None = None, env: dict | None = None) -> dict:
    """Run one stage in its own process for at most `limit` seconds; its JSON output (what it wrote, even
    when stopped at the limit) and how it ended."""
    if limit < 20:
        return {"status": "not run: budget spent", "seconds": 0.0}
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=limit, env=env)
        result = {"status": "ok" if done.returncode == 0 else f"exit {done.returncode}",
                  "tail": (done.stdout + done.stderr)[-1500:]}
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"") + (expired.stderr or b"")
        result = {"status": f"stopped at its share ({limit:.0f} s)",
                  "tail": output.decode(errors="replace")[-1500:] if isinstance(output, bytes) else output[-1500:]}
    result["seconds"] = round(time.monotonic() - started, 1)
    if out is not None and out.exists() and out.stat().st_size:
        result["data"] = json.loads(out.read_text())
    return result


def commands(args, tmp: Path) -> dict[str, tuple[list[str], Path | None]]:
    py = sys.executable
    tests = [py, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu"]
    serve = [py, str(GPU / "serve_bench.py"), "--items", "1", "--restart", "--json", str(tmp / "serve.json")]
    bench = [py, str(GPU / "torch_bench.py"), "--lora-kernels", "auto", "--no-peft", "--rounds", args.rounds,
             "--many", "8", "--json", str(tmp / "bench.json")]
    ops = [py, str(GPU / "op_bench.py"), "--json", str(tmp / "ops.json")]
    if args.smoke:
        serve += [*TINY, "--concurrency", "1,2", "--words", "5,10", "--requests", "4", "--seconds", "5"]
        bench += [*TINY, "--lora-kernels", "fused", "--device", "cpu", "--grid", "4x16,2x8", "--single-tokens", "8",
                  "--rounds", "2"]
        ops += OP_TINY
    else:
        serve += ["--concurrency", "1,64", "--requests", "300", "--seconds", "15"]
        bench += ["--grid", "64x512,16x256", "--single-tokens", "256", "--vocab", "151669"]  # as serve_bench's
        ops += ["--grid", "64x512,16x256"]
    return {"tests": (tests, None), "serve": (serve, tmp / "serve.json"), "bench": (bench, tmp / "bench.json"),
            "ops": (ops, tmp / "ops.json")}


def serve_values(data: dict) -> dict:
    server, restart = data.get("server", {}), data.get("restart", {})
    at_ready, after = server.get("startup_at_ready") or {}, server.get("startup_after_load") or {}
    values = {"ready_s": server.get("ready_s"), "restart_ready_s": restart.get("ready_s"),
              "phases_s": at_ready.get("phases_s"), "restart_phases_s": (restart.get("startup") or {}).get("phases_s"),
              "recompiles": after.get("compiles", 0) - at_ready.get("compiles", 0) if after and at_ready else None}
    for key, cell in data.get("http", {}).items():
        values[key] = {"p50_ms": cell["p50_ms"], "efficiency": data.get("http_efficiency", {}).get(key)}
    return values


def bench_values(data: dict) -> dict:
    """torch_bench's cells by role (the first grid shape is `big`, the second `small`), whatever it finished."""
    values = {"engine": data.get("engine")}
    engine = data.get("engine") or {}
    if "compiles_after" in engine:
        values["recompiles"] = engine["compiles_after"] - engine["compiles_at_ready"]
    for role, cell in zip(("big", "small"), data.get("cells", {}).values()):
        modelled = (cell.get("byte_model") or {}).get("overhead_all7_mixed8") or {}
        values[role] = {"base_tokens_per_s": cell["tokens_per_s"]["base"],
                        "lora_kb_all7": modelled.get("kb_per_token_layer"),
                        "implied_gb_s_all7": modelled.get("implied_gb_s"),
                        **{k: v for k, v in cell.items() if k.startswith("overhead_")}}
    if "single" in data:
        ms = data["single"]["median_ms"]
        values["single"] = {"base_ms": ms["base"], "adapter_extra_ms": round(ms["ours_1_qkvo"] - ms["base"], 3)}
    return values


def ops_values(data: dict) -> dict:
    return dict(zip(("big", "small"), data.get("cells", {}).values()))


def lookup(values: dict, path: tuple):
    for key in path:
        values = values.get(key) if isinstance(values, dict) else None
    return values


def meets(measured, goal, direction: str) -> bool:
    if direction == "tier":  # pytest's summary line
        return "passed" in measured and not any(word in measured for word in ("failed", "error"))
    return measured <= goal if direction == "max" else measured >= goal if direction == "min" else measured == goal


def table(values: dict, smoke: bool) -> list[dict]:
    rows = []
    for name, path, goal, direction, control in TARGETS:
        measured = lookup(values, path)
        passed = None if measured is None or goal is None else meets(measured, goal, direction)
        verdict = "n/a (smoke)" if smoke else "info" if goal is None and measured is not None else \
            {True: "pass", False: "FAIL", None: "not measured"}[passed]
        sign = {"max": "<= ", "min": ">= ", "eq": "= "}.get(direction, "")  # tier and info rows: no sign
        rows.append({"target": name, "measured": _round(measured), "control (bmm)": _round(lookup(values, control))
                     if control else None, "goal": f"{sign}{goal}" if goal is not None else "", "pass": verdict})
    return rows


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join("" if row[k] is None else str(row[k]) for k in keys) + " |")
    return "\n".join(lines)


def tier_summary(result: dict) -> str | None:
    """pytest's last line (`8 passed, 2 failed in ...`)."""
    lines = [line for line in result.get("tail", "").splitlines() if " in " in line and ("passed" in line
                                                                                         or "failed" in line
                                                                                         or "skipped" in line)]
    return lines[-1].strip("= ") if lines else None


def main(argv=None) -> dict:
    args = parse_args(argv)
    deadline = time.monotonic() + args.budget
    # The stages import `server` from this checkout (installed or not); on the CPU the Triton kernels can
    # only run in Triton's interpreter.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if args.smoke:
        env["TRITON_INTERPRET"] = "1"
    stages, values, read = {}, {}, {"serve": serve_values, "bench": bench_values, "ops": ops_values}
    report = {"smoke": args.smoke, "budget_s": args.budget, "stages": stages, "values": values,
              "device": os.environ.get("CUDA_VISIBLE_DEVICES", "default")}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        names = list(SHARES)
        for index, name in enumerate(names):
            owed = sum(SHARES[later] for later in names[index + 1:]) * args.budget
            command, out = commands(args, Path(tmp))[name]
            stages[name] = result = stage(command, deadline - time.monotonic() - owed, out, env)
            if "data" in result:
                values[name] = read[name](result["data"])
            if name == "tests":
                values["tests"] = {"summary": tier_summary(result)}
            report["table"] = table(values, args.smoke)
            print(f"== after {name}: {result['status']} in {result['seconds']} s"
                  + (f" ({values['tests']['summary']})" if name == "tests" else ""), flush=True)
            print(markdown(report["table"]), flush=True)
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(report, indent=2))
    print("\n".join(f"{name}: {s['status']} in {s['seconds']} s" for name, s in stages.items()), flush=True)
    return report


if __name__ == "__main__":
    main()
