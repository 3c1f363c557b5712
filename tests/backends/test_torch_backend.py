"""Torch backend numerics: every adapter and base against PEFT, mixed batches against single rows."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from server.backends.base import TokenBatch

TEXTS = [
    "What is the statute of limitations for breach of contract?",
    "Aspirin reduces the risk of myocardial infarction.",
    "Quarterly revenue grew by twelve percent year over year.",
    "hello",
    "A much longer passage that goes on for a while so that the rows of one batch have clearly different "
    "lengths and the padding path is exercised by the parity checks below.",
]
ADAPTERS = [None, "legal", "medical", "finance"]


@pytest.fixture(scope="module")
def token_rows(demo_dirs):
    from transformers import AutoTokenizer

    from server.tokenization import TextTokenizer

    tokenizer = TextTokenizer(AutoTokenizer.from_pretrained(demo_dirs["model"]), max_seq_len=512,
                              query_template="{text}", default_instruction=None)
    return tokenizer.tokenize(TEXTS).input_ids


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_each_adapter_matches_peft(embed_rows, peft_reference, token_rows, adapter):
    ours = unit(embed_rows(token_rows, [adapter] * len(token_rows)))
    for row, ids in enumerate(token_rows):
        reference = unit(peft_reference(ids, adapter))
        assert np.abs(ours[row] - reference).max() <= 1e-5, (adapter, row)


def test_adapters_change_the_vector(embed_rows, token_rows):
    ids = token_rows[:1]
    vectors = {a: unit(embed_rows(ids, [a]))[0] for a in ADAPTERS}
    for a in ADAPTERS[1:]:
        assert np.abs(vectors[a] - vectors[None]).max() > 1e-2, a


def test_mixed_batch_equals_one_at_a_time(embed_rows, token_rows):
    rows, adapters = [], []
    for i, ids in enumerate(token_rows):
        for j in range(len(ADAPTERS)):
            rows.append(ids)
            adapters.append(ADAPTERS[(i + j) % len(ADAPTERS)])
    mixed = unit(embed_rows(rows, adapters))
    for k, (ids, adapter) in enumerate(zip(rows, adapters)):
        alone = unit(embed_rows([ids], [adapter]))[0]
        assert np.abs(mixed[k] - alone).max() <= 1e-5, (k, adapter)


def test_mixed_batch_matches_peft_mixed_batch(embed_rows, peft_reference, token_rows):
    """PEFT's own mixed batch (`adapter_names=`) is an independent reference for the mixed path."""
    length = min(len(ids) for ids in token_rows)
    rows = [ids[:length - 1] + [ids[-1]] for ids in token_rows[:4]]  # equal lengths: PEFT needs no padding
    names = ["legal", "__base__", "finance", "medical"]
    with torch.no_grad():
        hidden = peft_reference.model(input_ids=torch.tensor(rows), adapter_names=names).last_hidden_state
    reference = unit(hidden[:, -1].numpy())
    ours = unit(embed_rows(rows, [None if n == "__base__" else n for n in names]))
    assert np.abs(ours - reference).max() <= 1e-5


def test_resident_adapters_are_reported(demo_model):
    entries = demo_model.adapters.entries
    assert set(entries) == {"legal", "medical", "finance"}
    assert entries["finance"].info.target_modules == ("down_proj", "gate_proj", "k_proj", "o_proj", "q_proj",
                                                      "up_proj", "v_proj")
    assert all(entry.info.rank == 8 and entry.pinned for entry in entries.values())
    assert sorted(entry.slot for entry in entries.values()) == [0, 1, 2]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_other_poolings_match_hf(demo_config, demo_dirs, token_rows, pooling):
    import dataclasses

    from transformers import AutoModel

    from tests.conftest import loaded_model

    config = dataclasses.replace(demo_config, pooling=pooling, profiles={}, adapters=dataclasses.replace(
        demo_config.adapters, lora_paths={}))
    backend = loaded_model(config).backend
    try:
        ours = backend.embed_sync(TokenBatch(token_rows, [None] * len(token_rows)))
    finally:
        asyncio.run(backend.close())
    model = AutoModel.from_pretrained(demo_dirs["model"], dtype=torch.float32).eval()
    for row, ids in enumerate(token_rows):
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        reference = hidden.mean(0) if pooling == "mean" else hidden[0]
        assert np.abs(ours[row] - reference.numpy()).max() <= 1e-5
