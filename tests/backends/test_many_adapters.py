"""Many distinct adapters in one batch (the gathered-bmm path): mixed ranks, partial targets, base rows."""

from __future__ import annotations

import asyncio
import dataclasses

import numpy as np
import pytest
import torch

from server.lora.plan import BMM_MIN_SEGMENTS
from tests.conftest import token_batch

COUNT = BMM_MIN_SEGMENTS + 4


def unit(v):
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def many(tmp_path_factory, demo_config, demo_dirs):
    from server.demo_assets import ALL_LINEARS, ATTENTION
    from server.demo_lora import build_adapter
    from tests.conftest import loaded_model

    root = tmp_path_factory.mktemp("many")
    paths = {}
    for i in range(COUNT):
        paths[f"a{i}"] = root / f"a{i}"
        paths[f"a{i}"].mkdir()
        build_adapter(demo_dirs["model"], paths[f"a{i}"], seed=1000 + i, targets=ALL_LINEARS if i % 3 else ATTENTION,
                      rank=4 if i % 2 else 8)
    config = dataclasses.replace(demo_config, profiles={}, adapters=dataclasses.replace(
        demo_config.adapters, lora_paths={n: str(p) for n, p in paths.items()}, max_loras_per_batch=COUNT + 1))
    model = loaded_model(config, max_loras_per_model=COUNT)
    yield model, paths
    asyncio.run(model.backend.close())


def test_gathered_path_equals_single_rows(many):
    model, paths = many
    names = list(paths)
    rows = [[100 + i, 200 + (i * 7) % 50, 300, 151643][: 2 + i % 3] + [151643] for i in range(COUNT + 3)]
    adapters = [names[i % COUNT] if i < COUNT else None for i in range(len(rows))]
    mixed = model.backend.embed_sync(token_batch(model, rows, adapters))
    for i, (ids, adapter) in enumerate(zip(rows, adapters)):
        alone = model.backend.embed_sync(token_batch(model, [ids], [adapter]))[0]
        assert np.abs(mixed[i] - alone).max() <= 1e-5 * max(1.0, np.abs(alone).max()), (i, adapter)


def test_gathered_path_matches_peft(many, demo_dirs):
    from peft import PeftModel
    from transformers import AutoModel

    model, paths = many
    rows = [[100 + i, 42, 7, 151643] for i in range(COUNT)]
    mixed = model.backend.embed_sync(token_batch(model, rows, list(paths)))
    for i in (0, 1, 2, 3):
        base = AutoModel.from_pretrained(demo_dirs["model"], dtype=torch.float32)
        model = PeftModel.from_pretrained(base, paths[f"a{i}"]).eval()
        with torch.no_grad():
            reference = model(input_ids=torch.tensor([rows[i]])).last_hidden_state[0, -1].numpy()
        assert np.abs(unit(mixed[i]) - unit(reference)).max() <= 1e-5
