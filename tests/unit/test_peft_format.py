"""PEFT adapter validation: each rejection names the adapter and the reason; scaling follows PEFT."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from server.backends.hf_model import meta_linear_shapes
from server.lora.peft_format import AdapterError, load_peft_adapter


@pytest.fixture(scope="module")
def shapes(demo_dirs):
    return meta_linear_shapes(demo_dirs["model"], None)[0]


@pytest.fixture
def adapter_copy(tmp_path, demo_dirs):
    folder = tmp_path / "adapter"
    shutil.copytree(demo_dirs["legal"], folder)
    return folder


def edit_config(folder, **changes):
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def edit_weights(folder, change):
    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


def load(folder, shapes, max_rank=64):
    return load_peft_adapter("mine", folder, base_shapes=shapes, max_rank=max_rank)


def test_loads_demo_adapter(adapter_copy, shapes):
    adapter = load(adapter_copy, shapes)
    assert adapter.rank == 8 and adapter.target_modules == ("k_proj", "o_proj", "q_proj", "v_proj")
    assert set(adapter.modules) == {f"layers.{i}.self_attn.{m}" for i in range(2) for m in adapter.target_modules}
    assert all(m.scaling == 2.0 for m in adapter.modules.values())  # alpha 16 / r 8


def test_rslora_scaling(adapter_copy, shapes):
    edit_config(adapter_copy, use_rslora=True)
    assert all(math.isclose(m.scaling, 16 / math.sqrt(8)) for m in load(adapter_copy, shapes).modules.values())


def test_alpha_pattern(adapter_copy, shapes):
    edit_config(adapter_copy, alpha_pattern={"q_proj": 4})
    modules = load(adapter_copy, shapes).modules
    assert modules["layers.0.self_attn.q_proj"].scaling == 0.5 and modules["layers.0.self_attn.k_proj"].scaling == 2.0


def test_causal_lm_prefix_is_accepted(adapter_copy, shapes):
    edit_weights(adapter_copy, lambda t: t.update(
        {k.replace("base_model.model.", "base_model.model.model."): t.pop(k) for k in list(t)}))
    assert len(load(adapter_copy, shapes).modules) == 8


@pytest.mark.parametrize("changes, reason", [
    ({"use_dora": True}, "DoRA"),
    ({"bias": "all"}, "bias='all'"),
    ({"modules_to_save": ["classifier"]}, "modules_to_save"),
    ({"peft_type": "IA3"}, "peft_type IA3"),
    ({"r": 128}, "rank 128 exceeds max_lora_rank 64"),
])
def test_config_rejections(adapter_copy, shapes, changes, reason):
    edit_config(adapter_copy, **changes)
    with pytest.raises(AdapterError, match=f"adapter 'mine': .*{reason}"):
        load(adapter_copy, shapes)


def test_rank_over_pool_limit(adapter_copy, shapes):
    with pytest.raises(AdapterError, match="rank 8 exceeds max_lora_rank 4"):
        load(adapter_copy, shapes, max_rank=4)


def test_pickle_weights_refused(adapter_copy, shapes):
    (adapter_copy / "adapter_model.safetensors").rename(adapter_copy / "adapter_model.bin")
    with pytest.raises(AdapterError, match="pickles are refused"):
        load(adapter_copy, shapes)


def test_missing_folder_and_config(tmp_path, shapes):
    with pytest.raises(AdapterError, match="does not exist"):
        load(tmp_path / "nowhere", shapes)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match="adapter_config.json missing"):
        load(tmp_path / "empty", shapes)


def test_unknown_target_module(adapter_copy, shapes):
    edit_weights(adapter_copy, lambda t: t.update(
        {k.replace("q_proj", "qkv_proj"): t.pop(k) for k in list(t) if "q_proj" in k}))
    with pytest.raises(AdapterError, match="target module 'layers.0.self_attn.qkv_proj' does not exist"):
        load(adapter_copy, shapes)


def test_shape_mismatch_names_wrong_base(adapter_copy, shapes):
    key = "base_model.model.layers.0.self_attn.q_proj.lora_A.weight"
    edit_weights(adapter_copy, lambda t: t.update({key: torch.zeros(8, 32)}))
    with pytest.raises(AdapterError, match="do not fit the base layer .*wrong base model"):
        load(adapter_copy, shapes)


def test_half_pair_refused(adapter_copy, shapes):
    key = "base_model.model.layers.1.self_attn.v_proj.lora_B.weight"
    edit_weights(adapter_copy, lambda t: t.pop(key))
    with pytest.raises(AdapterError, match="not both lora_A and lora_B"):
        load(adapter_copy, shapes)


def test_foreign_tensor_refused(adapter_copy, shapes):
    edit_weights(adapter_copy, lambda t: t.update({"base_model.model.layers.0.mlp.magnitude": torch.ones(3)}))
    with pytest.raises(AdapterError, match="unexpected tensor"):
        load(adapter_copy, shapes)


def test_nan_weights_refused(adapter_copy, shapes):
    key = "base_model.model.layers.0.self_attn.q_proj.lora_B.weight"
    edit_weights(adapter_copy, lambda t: t[key].fill_(float("nan")))
    with pytest.raises(AdapterError, match="NaN"):
        load(adapter_copy, shapes)


def test_corrupt_safetensors(adapter_copy, shapes):
    (adapter_copy / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="cannot read adapter_model.safetensors"):
        load(adapter_copy, shapes)
