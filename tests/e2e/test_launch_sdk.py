"""`launch.py` in a subprocess on a free loopback port, driven by the real SIE SDK client."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from sie_sdk import SIEClient
from sie_sdk.client.errors import RequestError
from sie_sdk.types import Item

from tests.conftest import DEMO_MODEL, DEMO_YAML, REPO, free_port, wait_ready


def launch(*args: str, timeout: float | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout or 120, env={**os.environ}, **kwargs)


@pytest.fixture(scope="module")
def launched(demo_dirs):
    port = free_port()
    process = subprocess.Popen([sys.executable, "launch.py", "--config", str(DEMO_YAML), "--port", str(port)],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, timeout=120, process=process)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        assert "loading adapter 'legal'" in output  # start-up says what it loads, and from where
        assert "adapter 'legal' is the folder /" in output
        assert "adapter root /" in output and "loaded on first use: retail, travel" in output


@pytest.fixture(scope="module")
def client(launched):
    with SIEClient(launched) as sie:
        yield sie


def test_single_item_returns_float32_dense(client):
    result = client.encode(DEMO_MODEL, Item(text="hello world"))
    assert isinstance(result, dict)
    dense = result["dense"]
    assert isinstance(dense, np.ndarray) and dense.dtype == np.float32 and dense.shape == (64,)
    assert abs(np.linalg.norm(dense) - 1) < 1e-5


def test_list_returns_list_in_order(client):
    texts = [f"document number {i}" for i in range(7)]
    results = client.encode(DEMO_MODEL, [Item(id=str(i), text=t) for i, t in enumerate(texts)])
    assert [r["id"] for r in results] == [str(i) for i in range(7)]
    for text, result in zip(texts, results):
        np.testing.assert_allclose(result["dense"], client.encode(DEMO_MODEL, Item(text=text))["dense"], atol=1e-5)


def test_lora_id_changes_the_vector(client):
    base = client.encode(DEMO_MODEL, Item(text="a contract dispute"))["dense"]
    vectors = {name: client.encode(DEMO_MODEL, Item(text="a contract dispute"), options={"lora_id": name})["dense"]
               for name in ("legal", "medical", "finance")}
    for name, vector in vectors.items():
        assert np.abs(vector - base).max() > 1e-2, name
    assert np.abs(vectors["legal"] - vectors["medical"]).max() > 1e-2
    alias = client.encode(DEMO_MODEL, Item(text="a contract dispute"), options={"lora": "legal"})["dense"]
    np.testing.assert_array_equal(alias, vectors["legal"])


def test_profile_equals_lora_plus_instruction_for_queries(client, demo_config):
    text = "is a verbal agreement binding"
    profile = client.encode(DEMO_MODEL, Item(text=text), options={"profile": "legal"}, is_query=True)["dense"]
    explicit = client.encode(DEMO_MODEL, Item(text=text), options={"lora_id": "legal"}, is_query=True,
                             instruction=demo_config.profiles["legal"].instruction)["dense"]
    np.testing.assert_array_equal(profile, explicit)
    default_instruction = client.encode(DEMO_MODEL, Item(text=text), options={"lora_id": "legal"},
                                        is_query=True)["dense"]
    assert np.abs(profile - default_instruction).max() > 1e-3
    document = client.encode(DEMO_MODEL, Item(text=text), options={"profile": "legal"})["dense"]
    raw = client.encode(DEMO_MODEL, Item(text=text), options={"lora_id": "legal"})["dense"]
    np.testing.assert_array_equal(document, raw)  # documents get the raw text


def test_unknown_lora_raises_400_with_names(client):
    with pytest.raises(RequestError) as info:
        client.encode(DEMO_MODEL, Item(text="x"), options={"lora_id": "astrology"})
    assert info.value.status_code == 400
    assert "astrology" in str(info.value) and "finance, legal, medical" in str(info.value)


def test_output_dtypes_through_sdk(client):
    int8 = client.encode(DEMO_MODEL, Item(text="x"), output_dtype="int8")["dense"]
    assert int8.dtype == np.int8 and int8.shape == (64,)
    ubinary = client.encode(DEMO_MODEL, Item(text="x"), output_dtype="ubinary")["dense"]
    assert ubinary.dtype == np.uint8 and ubinary.shape == (8,)


def test_check_command_accepts_demo(demo_dirs):
    result = launch("check", "--config", str(DEMO_YAML))
    assert result.returncode == 0, result.stderr
    assert "adapter finance: rank 8" in result.stdout and result.stdout.strip().endswith("ok")


def test_check_command_names_broken_adapter(tmp_path, demo_dirs):
    broken = tmp_path / "broken"
    shutil.copytree(demo_dirs["legal"], broken)
    config = (broken / "adapter_config.json").read_text().replace('"use_dora": false', '"use_dora": true')
    (broken / "adapter_config.json").write_text(config)
    yaml_path = tmp_path / "m.yaml"
    yaml_path.write_text(f"name: m\nmodel_path: {demo_dirs['model']}\nadapter_options_loadtime:\n"
                         f"  lora_paths:\n    shady: {broken}\n")
    for command in (["check"], []):  # serving refuses to start the same way
        result = launch(*command, "--config", str(yaml_path), "--port", str(free_port()))
        assert result.returncode == 2
        assert "adapter 'shady'" in result.stderr and "DoRA" in result.stderr


def test_check_command_names_unknown_key(tmp_path):
    yaml_path = tmp_path / "m.yaml"
    yaml_path.write_text("name: m\nmodle_path: x\n")
    result = launch("check", "--config", str(yaml_path))
    assert result.returncode == 2 and str(yaml_path) in result.stderr and "'modle_path'" in result.stderr


def test_demo_hot_loads_retail_from_its_adapter_root(client):
    retail = client.encode(DEMO_MODEL, Item(text="a return policy"), options={"lora_id": "retail"})["dense"]
    base = client.encode(DEMO_MODEL, Item(text="a return policy"))["dense"]
    legal = client.encode(DEMO_MODEL, Item(text="a return policy"), options={"lora_id": "legal"})["dense"]
    assert np.abs(retail - base).max() > 1e-2 and np.abs(retail - legal).max() > 1e-2


def test_check_command_names_broken_cross_references(tmp_path, demo_dirs):
    """A profile naming an adapter that exists nowhere (not preloaded, not under the adapter root) is
    an error with the file and the key, for check and for serving alike."""
    root = tmp_path / "root"
    root.mkdir()
    yaml_path = tmp_path / "m.yaml"
    yaml_path.write_text(f"name: m\nmodel_path: {demo_dirs['model']}\nlora_roots: [{root}]\n"
                         f"profiles:\n  tax:\n    lora_id: taxes\n")
    for command in (["check"], []):
        result = launch(*command, "--config", str(yaml_path), "--port", str(free_port()))
        assert result.returncode == 2, result.stdout
        assert str(yaml_path) in result.stderr and "profiles.tax.lora_id 'taxes'" in result.stderr
        assert "not found under any adapter root" in result.stderr
    bad_dims = tmp_path / "d.yaml"
    bad_dims.write_text(f"name: d\nmodel_path: {demo_dirs['model']}\ndims: 16\nmin_dims: 32\n")
    result = launch("check", "--config", str(bad_dims))
    assert result.returncode == 2 and str(bad_dims) in result.stderr and "'min_dims' (32)" in result.stderr


def test_check_lists_every_adapter_that_cannot_be_served(tmp_path, demo_dirs):
    """Broken adapters preloaded and under an adapter root are all named in one run (exit 2); good ones
    under the root are listed as on demand."""
    root = tmp_path / "root"
    for name in ("good", "dora", "noconfig", "pickle"):
        shutil.copytree(demo_dirs["legal"], root / name)
    config = (root / "dora" / "adapter_config.json").read_text().replace('"use_dora": false', '"use_dora": true')
    (root / "dora" / "adapter_config.json").write_text(config)
    (root / "noconfig" / "adapter_config.json").unlink()
    (root / "pickle" / "adapter_model.safetensors").rename(root / "pickle" / "adapter_model.bin")
    (root / "empty").mkdir()
    shutil.copytree(root / "dora", tmp_path / "shady")
    yaml_path = tmp_path / "m.yaml"
    yaml_path.write_text(f"name: m\nmodel_path: {demo_dirs['model']}\nlora_roots: [{root}]\n"
                         f"adapter_options_loadtime:\n  lora_paths:\n    shady: {tmp_path / 'shady'}\n")
    result = launch("check", "--config", str(yaml_path))
    assert result.returncode == 2, result.stdout
    assert "5 adapter(s) cannot be served" in result.stderr
    for name in ("shady", "dora", "noconfig", "pickle", "empty"):
        assert f"adapter '{name}'" in result.stderr, (name, result.stderr)
    for broken in (root / "dora", root / "noconfig", root / "pickle", root / "empty", tmp_path / "shady"):
        shutil.rmtree(broken)
    yaml_path.write_text(f"name: m\nmodel_path: {demo_dirs['model']}\nlora_roots: [{root}]\n")
    result = launch("check", "--config", str(yaml_path))
    assert result.returncode == 0, result.stderr
    assert "adapter good (on demand): rank 8" in result.stdout


def test_check_refuses_a_symlink_out_of_an_adapter_root_as_the_server_does(tmp_path, demo_dirs):
    """One rule for both: a folder under a root that links out of it is refused by `check` with the server's
    own words, not read from where it points."""
    root = tmp_path / "root"
    shutil.copytree(demo_dirs["legal"], root / "good")
    (root / "escape").symlink_to(tmp_path)
    yaml_path = tmp_path / "m.yaml"
    yaml_path.write_text(f"name: m\nmodel_path: {demo_dirs['model']}\nlora_roots: [{root}]\n")
    result = launch("check", "--config", str(yaml_path))
    assert result.returncode == 2 and "resolves outside the adapter root" in result.stderr, result.stderr
    assert "adapter_config.json missing" not in result.stderr

