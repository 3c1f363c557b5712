"""`train_adapter` on the tiny demo model: the loss falls, the run is deterministic for a seed, and the
written PEFT folder loads in the server, changes vectors and serves exactly the vectors it was trained on."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from types import MappingProxyType

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from server.config import ConfigError
from server.training.pairs import Pair
from server.training.train import Embedder, TrainSettings, batches, train_adapter
from tests.conftest import loaded_model, token_batch

TOPICS = ["permits", "drainage", "roofing", "asbestos", "radon", "insulation", "windows", "foundations",
          "contracts", "inspections", "scaffolding", "heating"]
PAIRS = [Pair(f"what are the rules for {topic}?", f"{topic}: the rules say number {i} applies to every house")
         for i, topic in enumerate(TOPICS)] * 2
SETTINGS = TrainSettings(rank=8, alpha=16, steps=24, batch_size=8, learning_rate=5e-3, seed=7)


@pytest.fixture(scope="module")
def trained(demo_config, demo_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "topics"
    losses = train_adapter(demo_config, PAIRS, SETTINGS, out)
    return out, losses


def test_loss_falls_and_the_folder_is_a_peft_adapter(trained, demo_config):
    out, losses = trained
    assert len(losses) == SETTINGS.steps
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4])
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["base_model_name_or_path"] == demo_config.name
    record = json.loads((out / "training.json").read_text())
    assert record["losses"] == losses and record["settings"]["seed"] == 7


def test_same_seed_same_adapter(trained, demo_config, tmp_path):
    out, losses = trained
    again = train_adapter(demo_config, PAIRS, SETTINGS, tmp_path / "again")
    assert again == losses
    first, second = load_file(out / "adapter_model.safetensors"), load_file(tmp_path / "again" /
                                                                            "adapter_model.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_served_vectors_are_the_trained_vectors(trained, demo_config, demo_dirs):
    """The server's path (template, EOS, mixed linear, pooling, normalisation) against the PEFT model the
    training loop optimised, fp32, <= 1e-5; and the adapter changes what the base serves."""
    from peft import PeftModel
    from transformers import AutoModel

    out, _ = trained
    config = dataclasses.replace(demo_config, profiles=MappingProxyType({}), adapters=dataclasses.replace(
        demo_config.adapters, lora_paths=MappingProxyType({"topics": str(out)})))
    model = loaded_model(config)
    try:
        texts = [p.query for p in PAIRS[:4]]
        rendered = [model.tokenizer.render(t, is_query=True, instruction=None) for t in texts]
        rows = model.tokenizer.tokenize(rendered).input_ids
        served = model.backend.embed_sync(token_batch(model, rows * 2, ["topics"] * 4 + [None] * 4))
        served /= np.linalg.norm(served, axis=1, keepdims=True)
        base = AutoModel.from_pretrained(demo_dirs["model"], dtype=torch.float32)
        peft = PeftModel.from_pretrained(base.eval(), str(out)).eval()
        embed = Embedder(peft, model.tokenizer, model.backend.layout, config, SETTINGS)
        with torch.no_grad():
            trained_vectors = embed(texts, is_query=True).numpy()
        assert np.abs(served[:4] - trained_vectors).max() <= 1e-5
        assert np.abs(served[:4] - served[4:]).max() > 1e-2
    finally:
        asyncio.run(model.backend.close())


def test_batches_are_seeded_and_drop_the_partial_batch():
    settings = TrainSettings(batch_size=5, epochs=2, seed=1)
    plan = batches(PAIRS[:12], settings)
    assert len(plan) == 4 and all(len(b) == 5 for b in plan)
    assert plan == batches(PAIRS[:12], settings) != batches(PAIRS[:12], dataclasses.replace(settings, seed=2))
    assert len(batches(PAIRS[:3], TrainSettings(batch_size=8, steps=5))) == 5  # fewer pairs than a batch


@pytest.mark.parametrize("field, value", [("rank", 0), ("temperature", 0.0), ("batch_size", 1), ("warmup", 1.0),
                                          ("steps", 0), ("learning_rate", -1.0)])
def test_bad_settings_are_config_errors(field, value):
    with pytest.raises(ConfigError, match="training settings"):
        TrainSettings(**{field: value})
