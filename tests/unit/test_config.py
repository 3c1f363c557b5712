"""Strict config loading: unknown keys name file and key; engine settings precedence."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, load_model_config, load_server_settings

BASE = """
name: org/model
model_path: ./weights
adapter_options_loadtime:
  lora_paths:
    legal: ./adapters/legal
profiles:
  legal: {instruction: "Find case law", lora_id: legal}
"""


def write(tmp_path, text, name="model.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_defaults_and_resolves_relative_paths(tmp_path):
    config = load_model_config(write(tmp_path, BASE))
    assert config.name == "org/model"
    assert config.model_path == str(tmp_path / "weights")
    assert config.adapters.lora_paths["legal"] == str(tmp_path / "adapters" / "legal")
    assert config.adapters.max_loras_per_batch == 8 and config.pooling == "auto" and config.normalize
    assert config.profiles["legal"].lora_id == "legal"


def test_model_path_defaults_to_name(tmp_path):
    assert load_model_config(write(tmp_path, "name: Qwen/Qwen3-Embedding-0.6B\n")).model_path == \
        "Qwen/Qwen3-Embedding-0.6B"


@pytest.mark.parametrize("text, key", [
    (BASE + "polling: last\n", "polling"),
    (BASE.replace("  max", "  max") + "adapter_options_loadtime: {lora_paths: {}, max_lora: 3}\n", "max_lora"),
    ("name: m\nprofiles:\n  p: {lora_id: x, instructions: y}\n", "instructions"),
])
def test_unknown_keys_name_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_model_config(path)
    assert str(path) in str(info.value) and repr(key) in str(info.value)


@pytest.mark.parametrize("line, words", [
    ("pooling: max", "pooling"),
    ("dtype: int4", "dtype"),
    ("adapter: vllm", "adapter"),
    ("query_template: 'no placeholder'", "{text}"),
])
def test_bad_values_are_refused(tmp_path, line, words):
    with pytest.raises(ConfigError, match=words):
        load_model_config(write(tmp_path, f"name: m\n{line}\n"))


def test_profile_must_name_a_configured_adapter(tmp_path):
    with pytest.raises(ConfigError, match="profiles.p.lora_id 'ghost'"):
        load_model_config(write(tmp_path, "name: m\nprofiles:\n  p: {lora_id: ghost}\n"))


def test_adapter_names_are_restricted(tmp_path):
    with pytest.raises(ConfigError, match="adapter name"):
        load_model_config(write(tmp_path, "name: m\nadapter_options_loadtime:\n  lora_paths: {'a:b': /x}\n"))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_model_config(tmp_path / "nope.yaml")


def test_engine_precedence_defaults_yaml_env_cli(tmp_path):
    path = write(tmp_path, "max_batch_tokens: 111\nmax_loras_per_model: 3\nmax_batch_wait_ms: 7\n", "engine.yaml")
    env = {"SIE_MAX_LORAS_PER_MODEL": "4", "SIE_MAX_BATCH_WAIT_MS": "9", "SIE_API_KEYS": "k1, k2"}
    config = load_server_settings(path, env=env, overrides={"max_batch_wait_ms": "1.5", "max_queue_items": None})
    assert config.max_batch_tokens == 111  # yaml over default
    assert config.max_loras_per_model == 4  # env over yaml
    assert config.max_batch_wait_ms == 1.5  # CLI over env
    assert config.max_queue_items == 8192  # default
    assert config.api_keys == ("k1", "k2")
    assert load_server_settings(env={}).max_loras_per_model == 10


def test_engine_unknown_key_and_bad_value(tmp_path):
    with pytest.raises(ConfigError, match="'max_batch_tokenz'"):
        load_server_settings(write(tmp_path, "max_batch_tokenz: 1\n", "engine.yaml"), env={})
    with pytest.raises(ConfigError, match="SIE_MAX_BATCH_TOKENS"):
        load_server_settings(env={"SIE_MAX_BATCH_TOKENS": "lots"})


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "model_configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_model_config_is_valid(path):
    config = load_model_config(path)
    assert config.name and config.model_path
