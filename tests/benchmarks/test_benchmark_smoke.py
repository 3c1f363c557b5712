"""The benchmark scripts still run end to end (tiny shapes, seconds); their numbers live in RESULTS.md."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

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
    modelled = result["byte_model"]  # the eager CPU path reads each linear's input and writes its output
    assert modelled["design"] == "per_linear" and modelled["overhead_all7_mixed8"]["kb_per_token_layer"] > 0


def test_lora_byte_model_at_06b_shapes():
    """The issue's figures: about 68-70 KB per token and layer for all seven linears with the unfused kernels;
    the fused forward leaves the shrinks' input reads, u, and v's expand."""
    bench = load("lora_overhead")
    args = bench.parse_args(["--dtype", "bfloat16"])
    assert bench.lora_bytes(args, bench.ALL7, "per_linear") == 70528
    inputs, u_written_and_read, v_expand = 2 * (1024 + 2048 + 1024 + 3072), 2 * 7 * 16 * 4, 2 * 1024 * 2
    assert bench.lora_bytes(args, bench.ALL7, "fused") == inputs + u_written_and_read + v_expand == 19328
    assert bench.lora_bytes(args, bench.QKVO, "fused") < bench.lora_bytes(args, bench.QKVO, "grouped") / 2


def test_launches_smoke():
    result = load("launches").main()
    assert all(counts["fused"]["per_layer"] < counts["kernels_alone"]["per_layer"] for counts in result.values())


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
    assert summary["single_query_ms"]["target"] == 2.5 and summary["single_query_ms"]["measured"] > 0
    assert "overhead_all7_mixed8_4x16" in summary and "speedup_vs_peft_mixed8_4x16" in summary
    engine = result["engine"]  # start-up phases and compile counts (the CPU default compiles nothing)
    assert engine["compiles_at_ready"] == engine["compiles_after"] == 0 and "weights" in engine["phases_s"]


@pytest.mark.long
def test_gpu_serve_bench_smoke(tmp_path):
    """`make bench-gpu`'s HTTP vs in-process run, at tiny shapes on the CPU: every request answered, seconds to
    ready and the start-up phases of the served model, and a second start."""
    bench = load("serve_bench", "benchmarks/gpu")
    report = bench.main([*TINY, "--concurrency", "1,2", "--items", "1,2", "--words", "5,10", "--requests", "4",
                         "--seconds", "5", "--restart", "--json", str(tmp_path / "s.json")])
    assert set(report["http_efficiency"]) == {"c1_i1", "c2_i1", "c1_i2", "c2_i2"}
    assert all(cell["ok"] == cell["requests"] for cell in report["http"].values())
    server = report["server"]
    assert server["ready_s"] > 0 and list(server["startup_at_ready"]["phases_s"]) == ["tokenizer", "weights",
                                                                                      "warm_up", "adapters"]
    assert server["startup_after_load"]["compiles"] == 0 and report["restart"]["ready_s"] > 0


def test_gpu_op_bench_smoke():
    """One layer's linears with the Triton kernels (interpreter) and the bmm control, and the byte model."""
    report = load("op_bench", "benchmarks/gpu").main(["--hidden", "64", "--heads", "4", "--kv-heads", "2",
                                                      "--head-dim", "16", "--intermediate", "128", "--dtype",
                                                      "float32", "--device", "cpu", "--grid", "2x16", "--rounds",
                                                      "1", "--repeats", "1"])
    cell = report["cells"]["2x16"]
    assert cell["median_us"]["base"] > 0 and "overhead_triton" in cell and "overhead_bmm" in cell
    # shrink: each group's input once (q/k/v 64, o 64, gate/up 64, down 128) + u (float32) per member; expand:
    # u + the output read and written; q 64->64, k/v 64->32, o 64->64, gate/up 64->128, down 128->64, rank 16
    group_inputs = (64 + 64 + 64 + 128) * 4
    outputs = [64, 32, 32, 64, 128, 128, 64]
    assert cell["lora_bytes_per_token_layer"] == group_inputs + sum(64 + 64 + 2 * o * 4 for o in outputs)


@pytest.mark.long
def test_gpu_check_smoke(tmp_path):
    """`make gpu-check` end to end at tiny shapes on the CPU (the kernels in Triton's interpreter): every
    stage runs in order and the table has a row per target."""
    out = tmp_path / "gpu_check.json"
    report = load("gpu_check", "benchmarks/gpu").main(["--smoke", "--json", str(out)])
    assert list(report["stages"]) == ["tests", "serve", "bench", "ops"]
    assert all(stage["status"] == "ok" for stage in report["stages"].values()), report["stages"]
    assert len(report["table"]) == 18 and all(row["pass"] == "n/a (smoke)" for row in report["table"])
    values = report["values"]
    assert values["bench"]["big"]["overhead_all7_mixed8"] is not None and values["bench"]["single"]["base_ms"] > 0
    assert values["serve"]["c1_i1"]["p50_ms"] > 0 and values["serve"]["ready_s"] > 0
    assert values["serve"]["recompiles"] == 0 and values["bench"]["recompiles"] == 0
    assert values["ops"]["big"]["overhead_bmm"] is not None
    assert json.loads(out.read_text())["smoke"] is True


@pytest.mark.long
def test_gpu_check_keeps_what_a_stage_measured_before_its_share_ran_out(tmp_path):
    """A stage stopped at its share still reports what it wrote; later stages keep their reserved shares."""
    gpu_check = load("gpu_check", "benchmarks/gpu")
    out = tmp_path / "partial.json"
    script = tmp_path / "slow.py"
    script.write_text(f"import json, time\nopen({str(out)!r}, 'w').write(json.dumps({{'single': 1}}))\n"
                      "time.sleep(60)\n")
    result = gpu_check.stage([sys.executable, str(script)], 21, out)
    assert result["status"].startswith("stopped at its share") and result["data"] == {"single": 1}
    assert gpu_check.stage(["true"], 5)["status"] == "not run: budget spent"


def test_multi_output_smoke(tmp_path):
    out = tmp_path / "multi.json"
    report = load("multi_output").main(["--rows", "2", "--tokens", "8", "--hidden", "32", "--layers", "1",
                                        "--heads", "4", "--vocab", "200", "--rounds", "1", "--json", str(out)])
    assert report["m3"]["outputs"] == ["dense", "multivector", "sparse"] and report["splade"]["outputs"] == ["sparse"]
    assert json.loads(out.read_text())["splade"]["all_outputs_ms"] > 0


def test_host_tier_smoke():
    result = load("host_tier").main(["--rounds", "2", "--layers", "1"])
    assert set(result["served_demo_s"]) == {"disk", "host"} and result["shaped_adapter_s"]["bytes"] > 0


def test_request_path_smoke(tmp_path):
    out = tmp_path / "path.json"
    result = load("request_path").main(["--config", str(REPO / "model_configs" / "demo.yaml"), "--model",
                                        "demo/qwen3-tiny", "--rounds", "2", "--json", str(out)])
    assert {"stream_served_minus_own_forward_ms", "settled_served_minus_our_forward_ms"} <= set(result["summary"])
    assert "served over HTTP (client included)" in json.loads(out.read_text())["stream_medians_ms"]


def test_side_by_side_smoke(demo_server):
    """The demo server on both sides (SIE's server is not installed here): the table and its ratios."""
    result = load("side_by_side").main(["--url", demo_server.url, "--other", demo_server.url, "--model",
                                        "demo/qwen3-tiny", "--rounds", "2", "--sequential", "3", "--cells", "2x2",
                                        "--requests", "4", "--seconds", "5"])
    assert set(result["cells"]) == {"c1x1_p50_ms", "c2x2_items_per_s"}
    assert all(len(cell["ratios"]) == 2 and cell["speed_ratio"] > 0 for cell in result["cells"].values())


def test_cpu_linears_smoke():
    result = load("cpu_linears").main(["--config", str(REPO / "model_configs" / "demo.yaml"), "--tokens", "4",
                                       "--rounds", "1"])
    assert result["linears"] and set(result["forward_ms"]) == {"packed", "torch"}
