"""Encoder embedders (BERT with sentence-transformers mean pooling, bge-m3-style XLM-R with CLS pooling):
padded mixed-adapter batches against PEFT's own mixed batch (fp32, <= 1e-5), and the SGLang refusal."""

from __future__ import annotations

import asyncio
from types import MappingProxyType

import numpy as np
import pytest
import torch

from server.config import AdapterOptions, ConfigError, ModelConfig
from tests.conftest import loaded_model, token_batch
from tests.encoder_assets import build_encoder, build_encoder_adapter

TEXTS = ["the building permit is granted by the municipality",
         "hello",
         "a contract for construction work names the parties, the price and the time of completion of the works",
         "aspirin reduces the risk of heart attack",
         "radon"]
KINDS = {  # kind -> (expected pooling, {adapter: targets})
    "bert": ("mean", {"attn": ["query", "key", "value"], "all": ["query", "key", "value", "dense"]}),
    "xlm-roberta": ("cls", {"bge": ["query", "key", "value"], "attn-out": ["query", "value", "dense"]}),
}


@pytest.fixture(scope="module", params=sorted(KINDS))
def encoder(request, tmp_path_factory):
    kind = request.param
    root = tmp_path_factory.mktemp(kind)
    folder = build_encoder(root / "model", kind)
    adapters = {name: str(build_encoder_adapter(folder, root / name, targets, seed=11 + i))
                for i, (name, targets) in enumerate(KINDS[kind][1].items())}
    config = ModelConfig(name=f"test/{kind}-tiny", model_path=str(folder), backend="torch", dtype="float32",
                         max_seq_len=48, adapters=AdapterOptions(lora_paths=MappingProxyType(adapters)))
    model = loaded_model(config)
    yield kind, folder, adapters, model
    asyncio.run(model.backend.close())


def peft_mixed(folder, adapters, texts, names, pooling):
    """PEFT's own mixed batch (`adapter_names`) over the HF tokenizer's padded batch, pooled as `pooling`."""
    from peft import PeftModel
    from transformers import AutoModel, AutoTokenizer

    base = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    first, *rest = adapters
    model = PeftModel.from_pretrained(base, adapters[first], adapter_name=first)
    for name in rest:
        model.load_adapter(adapters[name], adapter_name=name)
    model.eval()
    encoded = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoded, adapter_names=[n or "__base__" for n in names]).last_hidden_state
    if pooling == "cls":
        return hidden[:, 0].numpy()
    mask = encoded["attention_mask"][..., None].float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy()


def test_layout_read_from_the_folder(encoder):
    kind, _, _, model = encoder
    assert model.backend.layout.encoder and model.backend.layout.pooling == KINDS[kind][0]
    assert model.tokenizer.eos_id is None  # rows keep [CLS] ... [SEP]; no pooling EOS is appended


def test_padded_mixed_batch_matches_peft(encoder):
    kind, folder, adapters, model = encoder
    names = [None, *adapters] * 2
    texts = [TEXTS[i % len(TEXTS)] for i in range(len(names))]
    rows = model.tokenizer.tokenize(texts).input_ids
    assert len({len(r) for r in rows}) > 1  # padding is exercised
    ours = model.backend.embed_sync(token_batch(model, rows, names))
    reference = peft_mixed(folder, adapters, texts, names, KINDS[kind][0])
    assert np.abs(ours - reference).max() <= 1e-5
    same_text = model.tokenizer.tokenize([TEXTS[0]] * (len(adapters) + 1)).input_ids
    vectors = model.backend.embed_sync(token_batch(model, same_text, [None, *adapters]))
    assert all(np.abs(vectors[i] - vectors[0]).max() > 1e-3 for i in range(1, len(vectors)))


def test_row_alone_equals_row_in_padded_batch(encoder):
    _, _, adapters, model = encoder
    names = [*adapters, None, *adapters]
    rows = model.tokenizer.tokenize([TEXTS[i % len(TEXTS)] for i in range(len(names))]).input_ids
    batch = model.backend.embed_sync(token_batch(model, rows, names))
    for index, (row, name) in enumerate(zip(rows, names)):
        alone = model.backend.embed_sync(token_batch(model, [row], [name]))[0]
        assert np.abs(alone - batch[index]).max() <= 1e-5


def test_truncation_keeps_the_closing_special_token(encoder):
    _, _, _, model = encoder
    row = model.tokenizer.tokenize([" ".join(TEXTS) * 3]).input_ids[0]
    sep = model.tokenizer.hf.sep_token_id
    assert len(row) == 48 and row[0] == model.tokenizer.hf.cls_token_id and row[-1] == sep


def test_sglang_refuses_an_encoder_at_check_time(encoder):
    from server.build import check_model
    from server.config import ServerSettings

    _, folder, _, model = encoder
    with pytest.raises(ConfigError, match="sglang backend serves decoder embedders"):
        asyncio.run(check_model(model.config, ServerSettings(), backend="sglang"))
    lines = asyncio.run(check_model(model.config, ServerSettings()))
    assert "(torch)" in lines[0] and "encoder" in lines[0]


def test_max_seq_len_past_the_positions_is_a_config_error(encoder):
    import dataclasses

    from server.model_layout import read_layout

    _, folder, _, model = encoder
    with pytest.raises(ConfigError, match=r"max_seq_len 512 exceeds the 6[45] positions"):
        read_layout(folder, dataclasses.replace(model.config, max_seq_len=512))


def test_bge_style_adapter_served_over_http_equals_peft(encoder):
    """The seeds' example end to end: an XLM-R encoder with a query/key/value PEFT adapter, served by a
    live server, base and adapter items through the real SIE SDK, against PEFT (normalised)."""
    from sie_sdk import SIEClient
    from sie_sdk.types import Item

    from tests.conftest import LiveServer, build_app

    kind, folder, adapters, model = encoder
    if kind != "xlm-roberta":
        pytest.skip("the bge-m3-style case is the XLM-R one")
    app, _ = build_app(model.config)
    with LiveServer(app) as server, SIEClient(server.url) as client:
        adapted = np.stack([r["dense"] for r in client.encode(model.config.name, [Item(text=t) for t in TEXTS],
                                                              options={"lora_id": "bge"})])
        base = np.stack([r["dense"] for r in client.encode(model.config.name, [Item(text=t) for t in TEXTS])])
    reference = peft_mixed(folder, adapters, TEXTS * 2, ["bge"] * len(TEXTS) + [None] * len(TEXTS), "cls")
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    assert np.abs(np.concatenate([adapted, base]) - reference).max() <= 1e-5
