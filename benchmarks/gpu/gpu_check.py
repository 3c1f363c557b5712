"""`make gpu-check`: every GPU target of the torch engine in one run of at most 9 minutes, compiles included,
on a bare H100/H200 node (torch, transformers, peft and triton preinstalled, the rest from `make wheelhouse`):

1. the gpu test tier (`pytest -m gpu tests/gpu`);
2. the in-process table (torch_bench) at 64x512 and 16x256 and a single 256-token query, with the Triton
   LoRA kernels and then with the gathered-bmm control, compile and CUDA graphs on (their `auto`);
3. serve_bench's c1x1 and c64x1 cells (HTTP vs in process, kernels).

Each stage runs in its own process under what is left of the budget (a stage that does not fit is reported
as such, never guessed); one table says measured / target / pass, and `--json` keeps everything.

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
        "--intermediate", "128", "--dtype", "float32", "--many", "20"]
# (name, what it reads from the stages' results, target, "max" or "min")
TARGETS = [
    ("base tokens/s, 64x512", ("triton", "big", "base_tokens_per_s"), 340_000, "min"),
    ("8 mixed on all seven, 64x512", ("triton", "big", "overhead_all7_mixed8"), 0.08, "max"),
    ("8 mixed on q/k/v/o, 64x512", ("triton", "big", "overhead_qkvo_mixed8"), 0.05, "max"),
    ("8 mixed on all seven, 16x256", ("triton", "small", "overhead_all7_mixed8"), 0.20, "max"),
    ("single 256-token query, ms", ("triton", "single", "base_ms"), 5.0, "max"),
    ("HTTP c1x1 p50, ms", ("serve", "c1_i1", "p50_ms"), 10.0, "max"),
    ("HTTP c64x1 / in process", ("serve", "c64_i1", "efficiency"), 0.8, "min"),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for every stage together")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (the default suite's check)")
    parser.add_argument("--rounds", default="6", help="timed rounds per variant in torch_bench")
    parser.add_argument("--json", help="write every stage's results here")
    return parser.parse_args(argv)


def stage(command: list[str], deadline: float, out: Path | None = None, env: dict | None = None) -> dict:
    """Run one stage in its own process until `deadline`; its JSON output (if any) and how it ended."""
    left = deadline - time.monotonic()
    if left < 20:
        return {"status": "not run: budget spent", "seconds": 0.0}
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=left, env=env)
    except subprocess.TimeoutExpired:
        return {"status": f"stopped at the budget ({left:.0f} s)", "seconds": round(time.monotonic() - started, 1)}
    result = {"status": "ok" if done.returncode == 0 else f"exit {done.returncode}",
              "seconds": round(time.monotonic() - started, 1), "tail": (done.stdout + done.stderr)[-1500:]}
    if out is not None and out.exists():
        result["data"] = json.loads(out.read_text())
    return result


def bench_command(args, engine: str, out: Path) -> list[str]:
    command = [sys.executable, str(GPU / "torch_bench.py"), "--lora-kernels", engine, "--no-peft",
               "--rounds", args.rounds, "--json", str(out)]
    if args.smoke:
        return command + [*TINY, "--device", "cpu", "--grid", "4x16,2x8", "--single-tokens", "8", "--rounds", "2"]
    return command + ["--grid", "64x512,16x256", "--single-tokens", "256"]


def serve_command(args, out: Path) -> list[str]:
    command = [sys.executable, str(GPU / "serve_bench.py"), "--items", "1", "--json", str(out)]
    if args.smoke:
        return command + [*TINY, "--concurrency", "1,2", "--words", "5,10", "--requests", "4", "--seconds", "5"]
    return command + ["--concurrency", "1,64", "--requests", "300", "--seconds", "20"]


def bench_values(data: dict) -> dict:
    """torch_bench's cells by role: the first grid shape is `big`, the second `small`."""
    big, small = list(data["cells"].values())[:2]

    def values(cell):
        return {"base_tokens_per_s": cell["tokens_per_s"]["base"], **{k: v for k, v in cell.items()
                                                                        if k.startswith("overhead_")}}
    return {"big": values(big), "small": values(small),
            "single": {"base_ms": data["single"]["median_ms"]["base"],
                       "adapter_ms": data["single"]["median_ms"]["ours_1_qkvo"]}}


def serve_values(data: dict) -> dict:
    cells = {}
    for key, cell in data["http"].items():
        cells[key] = {"p50_ms": cell["p50_ms"], "efficiency": data.get("http_efficiency", {}).get(key)}
    return cells


def table(values: dict, smoke: bool) -> list[dict]:
    rows = []
    for name, (source, group, key), target, direction in TARGETS:
        measured = values.get(source, {}).get(group, {}).get(key)
        control = values.get("torch", {}).get(group, {}).get(key) if source == "triton" else None
        passed = None if measured is None else (measured <= target if direction == "max" else measured >= target)
        rows.append({"target": name, "measured": _round(measured), "control (bmm)": _round(control),
                     "goal": f"{'<=' if direction == 'max' else '>='} {target}",
                     "pass": "n/a (smoke)" if smoke else {True: "pass", False: "FAIL", None: "not measured"}[passed]})
    return rows


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join("" if row[k] is None else str(row[k]) for k in keys) + " |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    deadline = time.monotonic() + args.budget
    # The stages import `server` from this checkout (installed or not); on the CPU the Triton kernels can
    # only run in Triton's interpreter.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if args.smoke:
        env["TRITON_INTERPRET"] = "1"
    stages, values = {}, {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        stages["tests"] = stage([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/gpu"], deadline, env=env)
        for engine in ("triton", "torch"):
            out = Path(tmp) / f"bench-{engine}.json"
            stages[f"bench_{engine}"] = stage(bench_command(args, engine, out), deadline, out, env)
            if "data" in stages[f"bench_{engine}"]:
                values[engine] = bench_values(stages[f"bench_{engine}"]["data"])
        out = Path(tmp) / "serve.json"
        stages["serve"] = stage(serve_command(args, out), deadline, out, env)
        if "data" in stages["serve"]:
            values["serve"] = serve_values(stages["serve"]["data"])
    rows = table(values, args.smoke)
    report = {"table": rows, "values": values, "stages": stages, "smoke": args.smoke,
              "device": os.environ.get("CUDA_VISIBLE_DEVICES", "default")}
    print(markdown(rows))
    print("\n".join(f"{name}: {s['status']} in {s['seconds']} s" for name, s in stages.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
