"""The host-memory tier: evicted adapters come back as a copy (no read, no effect check) with the same
vectors, least recently used out past the budget, never a copy whose folder changed or that another source
names, a reload always reads; /metrics says where each adapter sits and loads by tier."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil

import httpx
import numpy as np
import torch

from server.adapters.host_tier import HostTier, folder_stamp
from server.lora.peft_format import LoraAdapter, LoraModule


def adapter(name: str, rows: int = 4) -> LoraAdapter:
    module = LoraModule(torch.ones(rows, 8), torch.ones(8, rows), 1.0)
    return LoraAdapter.of(name, f"/nowhere/{name}", {"layers.0.q_proj": module})


def test_the_least_recently_used_leave_past_the_budget_and_a_take_removes():
    one = adapter("a").nbytes
    tier = HostTier(budget_bytes=2 * one)
    for name in "abc":
        tier.keep(name, f"src-{name}", adapter(name), None)
    assert list(tier.held) == ["b", "c"] and tier.bytes == 2 * one
    assert tier.take("b", "elsewhere") is None and "b" in tier  # another source: not this copy
    held = tier.take("b", "src-b")
    assert held.adapter.digest == adapter("b").digest and "b" not in tier and tier.bytes == one
    tier.keep("huge", "src", adapter("huge", rows=64), None)
    assert "huge" not in tier  # larger than the whole budget
    assert "c" in tier and not HostTier(0).held


def test_a_copy_whose_folder_changed_is_not_used(tmp_path):
    folder = tmp_path / "a"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    kept = dataclasses.replace(adapter("a"), source=str(folder))
    tier = HostTier(1 << 20)
    tier.keep("a", "src", kept, folder_stamp(str(folder)))
    assert tier.take("a", "src") is not None
    tier.keep("a", "src", kept, folder_stamp(str(folder)))
    (folder / "adapter_config.json").write_text('{"r": 8}')
    assert tier.take("a", "src") is None and "a" not in tier


def test_an_evicted_adapter_comes_back_from_host_memory_with_the_same_vectors(demo_config, demo_dirs, tmp_path):
    from server.api.metrics import Metrics
    from server.backends.torch_backend import TorchBackend
    from server.config import ServerSettings
    from server.demo_assets import ensure_builtin
    from server.local_model import LocalModel
    from server.options import EncodeOptions

    root = tmp_path / "root"
    for name in ("retail", "travel"):
        shutil.copytree(ensure_builtin("builtin:qwen3-tiny/dynamic") / name, root / name)
    config = dataclasses.replace(demo_config, lora_roots=(str(root),))
    settings = ServerSettings(max_loras_per_model=4)  # three preloaded, one slot for retail or travel
    model = LocalModel(config, settings, TorchBackend(config, settings, "cpu"))
    reads = []

    async def scenario():
        await model.load()
        model.batcher.start()
        read = model.adapters.loader.read

        async def counted(name, source):
            reads.append(name)
            return await read(name, source)

        model.adapters.loader.read = counted
        vectors = []
        for name in ("retail", "travel", "retail"):
            await model.adapters.ensure(name)
            vectors.append((await model.encode(["a return policy"], EncodeOptions(lora_id=name))).vectors[0])
        placed = model.adapters.tiers()
        scraped = Metrics({config.name: model}).render().decode()
        (root / "travel" / "adapter_config.json").touch()  # changed on disk: the held copy is not used
        await model.adapters.ensure("travel")
        await model.adapters.unload("legal", force=True)  # an unload keeps the weights too (and frees a slot)
        assert model.adapters.tiers()["legal"] == "host"
        await model.adapters.reload("travel")  # a reload always reads
        await model.stop()
        return vectors, placed, scraped

    vectors, placed, scraped = asyncio.run(scenario())
    assert reads == ["retail", "travel", "travel", "travel"]  # retail's second load read nothing
    assert np.abs(vectors[0] - vectors[2]).max() <= 1e-7
    assert placed["retail"] == "device" and placed["travel"] == "host" and placed["legal"] == "device"
    assert placed["finance"] == "device"
    by_tier = model.adapters.load_stats.by_tier
    assert by_tier["host"][0] == 1 and by_tier["disk"][0] == 3 + 4
    assert f'sie_adapter_tier{{adapter="travel",model="{config.name}",tier="host"}} 1.0' in scraped
    assert f'sie_adapter_loads_by_tier_total{{model="{config.name}",tier="host"}} 1.0' in scraped
    assert f'sie_adapter_host_bytes{{model="{config.name}"}}' in scraped


def test_over_http_with_the_sie_sdk_and_openai_a_reload_from_host_memory_is_counted(demo_config, tmp_path):
    """The same path as above behind the real server and clients: the SDK waits out each first load, the
    openai client reads the adapter back from host memory, /metrics counts one load from host."""
    import openai
    from sie_sdk import SIEClient
    from sie_sdk.types import Item

    from server.demo_assets import ensure_builtin
    from tests.conftest import DEMO_MODEL, LiveServer, build_app

    root = tmp_path / "root"
    for name in ("retail", "travel"):
        shutil.copytree(ensure_builtin("builtin:qwen3-tiny/dynamic") / name, root / name)
    app, _ = build_app(dataclasses.replace(demo_config, lora_roots=(str(root),)), max_loras_per_model=4)
    with LiveServer(app) as live:
        with SIEClient(live.url) as client:
            first = client.encode(DEMO_MODEL, [Item(text="a refund")], options={"lora_id": "retail"})[0]["dense"]
            client.encode(DEMO_MODEL, [Item(text="a refund")], options={"lora_id": "travel"})  # evicts retail
            again = client.encode(DEMO_MODEL, [Item(text="a refund")], options={"lora_id": "retail"})[0]["dense"]
        vector = openai.OpenAI(base_url=f"{live.url}/v1", api_key="none").embeddings.create(
            model=f"{DEMO_MODEL}:retail", input="a refund").data[0].embedding
        scraped = httpx.get(f"{live.url}/metrics").text
    assert np.abs(first - again).max() <= 1e-7 and np.abs(np.asarray(vector) - first).max() <= 1e-6
    assert f'sie_adapter_loads_by_tier_total{{model="{DEMO_MODEL}",tier="host"}} 1.0' in scraped
