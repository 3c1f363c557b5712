"""The benchmark scripts still run end to end (tiny shapes, seconds); their numbers live in RESULTS.md."""

from __future__ import annotations

import importlib.util
import json

from tests.conftest import REPO


def load(name: str, folder: str = "benchmarks"):
    spec = importlib.util.spec_from_file_location(name, REPO / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lora_overhead_smoke(tmp_path):
    out = tmp_path / "overhead.json"
    result = load("lora_overhead").main(["--layers", "1", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
                                         "--head-dim", "16", "--intermediate", "128", "--rows", "4", "--tokens", "8",
                                         "--rounds", "2", "--many", "20", "--json", str(out)])
    for key in ("overhead_qkvo_mixed8", "overhead_all7_mixed8", "overhead_all7_mixed64", "speedup_vs_peft_mixed8",
                "tokens_per_s", "machine", "torch", "commit"):
        assert key in result, key
    assert json.loads(out.read_text())["config"]["many"] == 20
    assert out.with_suffix(".png").stat().st_size > 1000


def test_serve_load_smoke(demo_server, tmp_path):
    out = tmp_path / "load.json"
    report = load("serve_load").main(["--url", demo_server.url, "--concurrency", "1,2", "--items", "1,4",
                                      "--requests", "6", "--seconds", "5", "--json", str(out)])
    assert set(report["http"]) == {"c1_i1", "c2_i1", "c1_i4", "c2_i4"}
    assert all(cell["ok"] == cell["requests"] and not cell["errors"] for cell in report["http"].values())
    assert out.with_suffix(".png").stat().st_size > 1000
    openai_report = load("serve_load").main(["--url", demo_server.url, "--api", "openai", "--concurrency", "1",
                                             "--items", "2", "--requests", "3", "--seconds", "5"])
    assert openai_report["http"]["c1_i2"]["ok"] == 3


TINY = ["--layers", "1", "--hidden", "64", "--heads", "4", "--kv-heads", "2", "--head-dim", "16",
        "--intermediate", "128", "--dtype", "float32"]


def test_gpu_torch_bench_smoke(tmp_path):
    """`make bench-gpu`'s in-process table, at tiny shapes on the CPU."""
    out = tmp_path / "torch_bench.json"
    bench = load("torch_bench", "benchmarks/gpu")
    result = bench.main([*TINY, "--device", "cpu", "--grid", "4x16,2x8", "--single-tokens", "8", "--rounds", "2",
                         "--many", "20", "--json", str(out)])
    assert set(result["cells"]) == {"4x16", "2x8"}
    summary = json.loads(out.read_text())["summary"]
    assert summary["single_query_ms"]["target"] == 5.0 and summary["single_query_ms"]["measured"] > 0
    assert "overhead_all7_mixed8_4x16" in summary and "speedup_vs_peft_mixed8_4x16" in summary


def test_gpu_serve_bench_smoke(tmp_path):
    """`make bench-gpu`'s HTTP vs in-process run, at tiny shapes on the CPU: every request answered."""
    bench = load("serve_bench", "benchmarks/gpu")
    report = bench.main([*TINY, "--concurrency", "1,2", "--items", "1,2", "--words", "5,10", "--requests", "4",
                         "--seconds", "5", "--json", str(tmp_path / "s.json")])
    assert set(report["http_efficiency"]) == {"c1_i1", "c2_i1", "c1_i2", "c2_i2"}
    assert all(cell["ok"] == cell["requests"] for cell in report["http"].values())


def test_gpu_check_smoke(tmp_path):
    """`make gpu-check` end to end at tiny shapes on the CPU (the kernels in Triton's interpreter): every
    stage runs and the table has a row per target."""
    out = tmp_path / "gpu_check.json"
    report = load("gpu_check", "benchmarks/gpu").main(["--smoke", "--json", str(out)])
    assert all(stage["status"] == "ok" for stage in report["stages"].values()), report["stages"]
    assert len(report["table"]) == 7 and all(row["pass"] == "n/a (smoke)" for row in report["table"])
    assert report["values"]["triton"]["big"]["overhead_all7_mixed8"] is not None
    assert report["values"]["torch"]["single"]["base_ms"] > 0 and report["values"]["serve"]["c1_i1"]["p50_ms"] > 0
    assert json.loads(out.read_text())["smoke"] is True


def test_multi_output_smoke(tmp_path):
    out = tmp_path / "multi.json"
    report = load("multi_output").main(["--rows", "2", "--tokens", "8", "--hidden", "32", "--layers", "1",
                                        "--heads", "4", "--vocab", "200", "--rounds", "1", "--json", str(out)])
    assert report["m3"]["outputs"] == ["dense", "multivector", "sparse"] and report["splade"]["outputs"] == ["sparse"]
    assert json.loads(out.read_text())["splade"]["all_outputs_ms"] > 0
