"""Seconds from `launch.py` to ready with `compile: on`: cold (an empty inductor cache), warm (the same cache
again), and on a fresh cache given the file `launch.py warm` wrote (a new node of a fleet), each with the
served model's start-up phases and compile count from `GET /v1/models/{id}`. Rounds are interleaved
(cold, warm, fleet, then again); the table gives medians.

    python benchmarks/startup.py --rounds 3 --json benchmarks/out/startup.json      # the demo, compile: on
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a model YAML (default: the demo with compile: on)")
    parser.add_argument("--model", default="demo/qwen3-tiny")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json")
    return parser.parse_args(argv)


def compiled_demo(folder: Path) -> Path:
    text = (REPO / "model_configs" / "demo.yaml").read_text().replace("dtype: float32", 'dtype: float32\ncompile: "on"')
    path = folder / "demo-compiled.yaml"
    path.write_text(text)
    return path


def start(config: Path, model: str, env: dict, log: Path) -> dict:
    """One start to ready: its seconds, phases and compile count (then stopped)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import serve_load

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        process, url, ready_s = serve_load.start_server(str(config), log_path=log)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        info = serve_load.startup_info(url, model)
    finally:
        serve_load.stop_server(process)
    return {"ready_s": round(ready_s, 2), "phases_s": info["phases_s"], "compiles": info["compiles"]}


def one_round(config: Path, model: str, folder: Path) -> dict:
    cold_cache, fleet_cache, artifacts = folder / "inductor-cold", folder / "inductor-fleet", folder / "fleet.bin"
    result = {"cold": start(config, model, {"TORCHINDUCTOR_CACHE_DIR": str(cold_cache)}, folder / "cold.log"),
              "warm": start(config, model, {"TORCHINDUCTOR_CACHE_DIR": str(cold_cache)}, folder / "warm.log")}
    subprocess.run([sys.executable, "launch.py", "warm", "--config", str(config), "--out", str(artifacts)], cwd=REPO,
                   check=True, capture_output=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cold_cache)})
    result["fleet"] = start(config, model, {"TORCHINDUCTOR_CACHE_DIR": str(fleet_cache),
                                            "SIE_COMPILE_CACHE_ARTIFACTS": str(artifacts)}, folder / "fleet.log")
    result["artifacts_mib"] = round(artifacts.stat().st_size / 2**20, 2)
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="startup-") as tmp:
        config = Path(args.config) if args.config else compiled_demo(Path(tmp))
        for index in range(args.rounds):
            folder = Path(tmp) / f"round{index}"
            folder.mkdir()
            rounds.append(one_round(config, args.model, folder))
    table = {case: {"ready_s": statistics.median(r[case]["ready_s"] for r in rounds),
                    "compile_s": statistics.median(r[case]["phases_s"].get("compile", 0.0) for r in rounds),
                    "compiles": rounds[-1][case]["compiles"]} for case in ("cold", "warm", "fleet")}
    report = {"rounds": rounds, "median": table}
    print("| start | ready, s | compile, s | graphs compiled |\n|---|---|---|---|")
    for case, row in table.items():
        print(f"| {case} | {row['ready_s']:.1f} | {row['compile_s']:.1f} | {row['compiles']} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
