"""Compiled kernels carried to another node: `launch.py warm` writes them, a fresh cache folder with
`compile_cache_artifacts` set compiles from them (inductor's cache hits, no misses); a file made for another
torch, Triton or device is set aside with a warning; a file that is not one is an operator error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from server.backends import compile_cache
from tests.conftest import DEMO_YAML, REPO

LOAD_AND_COUNT = """
import asyncio, json, sys
from server.build import load_model
from server.config import load_model_config, load_server_settings
import torch._dynamo.utils as utils
model = asyncio.run(load_model(load_model_config(sys.argv[1]), load_server_settings(), backend="torch"))
print(json.dumps({"compiles": model.backend._static.compiles, **utils.counters["inductor"]}))
"""


def compiled_demo(tmp_path, compile_setting: str = "on"):
    text = DEMO_YAML.read_text().replace("dtype: float32", f"dtype: float32\ncompile: \"{compile_setting}\"")
    path = tmp_path / "demo-compiled.yaml"
    path.write_text(text)
    return path


def run(args, cache: str, **env):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MLE_CACHE_DIR": cache, **env})


def test_warm_refuses_when_nothing_compiles(tmp_path):
    done = run(["launch.py", "warm", "--config", str(compiled_demo(tmp_path, "off")), "--out",
                str(tmp_path / "x.bin")], str(tmp_path / "cache"))
    assert done.returncode == 2 and "nothing was compiled" in done.stderr
    assert not (tmp_path / "x.bin").exists()


@pytest.mark.long
def test_warm_writes_kernels_a_fresh_node_compiles_from(tmp_path):
    config, out = compiled_demo(tmp_path), tmp_path / "fleet.bin"
    done = run(["launch.py", "warm", "--config", str(config), "--out", str(out)], str(tmp_path / "first"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert out.read_bytes().startswith(compile_cache.MAGIC) and "--compile-cache-artifacts" in done.stdout
    fresh = run(["-c", LOAD_AND_COUNT, str(config)], str(tmp_path / "second"), SIE_COMPILE_CACHE_ARTIFACTS=str(out))
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    counts = json.loads(fresh.stdout.strip().splitlines()[-1])
    assert counts["compiles"] == 2 and counts["fxgraph_cache_hit"] >= 2 and not counts.get("fxgraph_cache_miss")


def test_a_file_made_elsewhere_is_set_aside(tmp_path, caplog):
    elsewhere = {**compile_cache.environment("cpu"), "torch": "0.0.0"}
    path = tmp_path / "other.bin"
    path.write_bytes(compile_cache.MAGIC + json.dumps(elsewhere).encode() + b"\n" + b"kernels")
    with caplog.at_level("WARNING"):
        assert compile_cache.load(path, "cpu") is False
    assert "compiling as usual" in caplog.text


def test_a_file_that_is_not_a_compile_cache_is_an_operator_error(tmp_path):
    path = tmp_path / "junk.bin"
    path.write_bytes(b"not a cache")
    with pytest.raises(compile_cache.CompileCacheError, match="not a file `launch.py warm` wrote"):
        compile_cache.load(path, "cpu")
    with pytest.raises(compile_cache.CompileCacheError, match="cannot read missing.bin"):
        compile_cache.load(tmp_path / "missing.bin", "cpu")
